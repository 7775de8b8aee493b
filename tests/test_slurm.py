# SPDX-License-Identifier: Apache-2.0
"""Run nipype graphs through a real SLURM (``scripts/slurm-local.sh start``), marked ``slurm``.

Run with ``scripts/slurm-local.sh start && pytest -m slurm tests/test_slurm.py``. Without a
cluster whose node is up, every test here is skipped with the reason.
"""

import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine.bidsapp.plugin import mark_gpu_nodes, resolve_plugin

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]


def _cluster_state():
    """The state of the first SLURM node, or a reason why there is none."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None, "SLURM client commands not installed (scripts/slurm-local.sh install)"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T %G"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "sinfo timed out: is slurmctld running? (scripts/slurm-local.sh start)"
    words = proc.stdout.split()
    if proc.returncode != 0 or not words:
        return None, "no SLURM controller answers (scripts/slurm-local.sh start)"
    if words[0] not in ("idle", "mixed", "allocated"):
        return None, f"the SLURM node is {words[0]} (scripts/slurm-local.sh status)"
    return proc.stdout, None


@pytest.fixture(scope="module")
def slurm_cluster():
    """Skip unless a SLURM node takes jobs; returns ``sinfo``'s ``state gres`` line."""
    state, reason = _cluster_state()
    if state is None:
        pytest.skip(reason)
    return state


def _job_environment(value):
    """Run inside the SLURM job: report the job's environment and compute a value."""
    import os
    import socket

    keys = (
        "SLURM_JOB_ID",
        "SLURM_JOB_GPUS",
        "CUDA_VISIBLE_DEVICES",
        "SLURM_CPUS_PER_TASK",
        "SLURM_JOB_PARTITION",
    )
    env = {key: os.environ.get(key) for key in keys}
    env["hostname"] = socket.gethostname()
    return value * 2, env


def _toy_workflow(base_dir, gpu_flag=True):
    wf = pe.Workflow(name="slurm_toy_wf", base_dir=str(base_dir))
    fields = ["value"]
    cpu = pe.Node(
        niu.Function(input_names=fields, output_names=["value", "env"], function=_job_environment),
        name="cpu_node",
    )
    cpu.inputs.value = 3
    gpu = pe.Node(
        niu.Function(input_names=fields, output_names=["value", "env"], function=_job_environment),
        name="gpu_node",
    )
    # what niaffine's GPU interfaces expose; read by mark_gpu_nodes through node_uses_gpu
    gpu.interface.use_gpu = gpu_flag
    wf.connect(cpu, "value", gpu, "value")
    wf.config["execution"].update({"poll_sleep_duration": 1, "remove_unnecessary_outputs": False})
    return wf


def _results(graph):
    return {node.name: node.result.outputs for node in graph.nodes()}


def test_slurm_plugin_two_node_workflow(slurm_cluster, tmp_path, monkeypatch):
    """Nodes become SLURM jobs; only the GPU node asks for (and gets) a GPU; LOGNAME unset."""
    if "gpu:" not in slurm_cluster:
        pytest.skip("the SLURM node has no gpu gres (scripts/slurm-local.sh sets a fake one)")
    monkeypatch.delenv("LOGNAME", raising=False)  # nipype 1.11 raised KeyError without it
    monkeypatch.delenv("USER", raising=False)
    plugin, args = resolve_plugin("SLURM", "sbatch_args=--cpus-per-task=1 --time=10", None, 1, 1, None)
    assert os.environ["LOGNAME"]

    wf = _toy_workflow(tmp_path / "work")
    assert mark_gpu_nodes(wf, plugin=plugin) == ["slurm_toy_wf.gpu_node"]
    results = _results(wf.run(plugin=plugin, plugin_args=args))

    cpu_env, gpu_env = results["cpu_node"].env, results["gpu_node"].env
    assert cpu_env["SLURM_JOB_ID"] and gpu_env["SLURM_JOB_ID"]
    assert cpu_env["SLURM_JOB_ID"] != gpu_env["SLURM_JOB_ID"]
    # --plugin-args sbatch_args reached both jobs
    assert cpu_env["SLURM_CPUS_PER_TASK"] == gpu_env["SLURM_CPUS_PER_TASK"] == "1"
    # --gres=gpu:1 only on the GPU node
    assert cpu_env["SLURM_JOB_GPUS"] is None
    assert gpu_env["SLURM_JOB_GPUS"] is not None
    assert gpu_env["CUDA_VISIBLE_DEVICES"] is not None

    # the values match a local MultiProc run of the same graph
    plugin_mp, args_mp = resolve_plugin(None, None, None, 2, 1, None)
    local = _results(_toy_workflow(tmp_path / "work_mp").run(plugin=plugin_mp, plugin_args=args_mp))
    assert {k: v.value for k, v in results.items()} == {k: v.value for k, v in local.items()}
    assert local["gpu_node"].value == 12


def test_slurm_plugin_gpu_request_is_overridable(slurm_cluster, tmp_path):
    """``gpu_sbatch_args`` replaces ``--gres=gpu:1``: here a request SLURM must accept."""
    plugin, args = resolve_plugin("SLURM", None, None, 1, 1, None)
    wf = _toy_workflow(tmp_path / "work")
    mark_gpu_nodes(wf, plugin=plugin, gpu_sbatch_args="--partition=debug --cpus-per-task=2")
    results = _results(wf.run(plugin=plugin, plugin_args=args))
    assert results["gpu_node"].env["SLURM_CPUS_PER_TASK"] == "2"
    assert results["gpu_node"].env["SLURM_JOB_PARTITION"] == "debug"
    assert results["cpu_node"].env["SLURM_CPUS_PER_TASK"] is None


# ----------------------------------------------------------- the BIDS-App, end to end
# The demo dataset (niaffine.data.bids_demo) runs once with MultiProc as the reference, then
# through nipype's SLURM plugin and as a per-subject array (scripts/niaffine-array.sbatch).
# NIAFFINE_SLURM_DEMO=tiny uses the one-subject low-resolution dataset.

COMMON_ARGS = ("--device", "cpu", "--skip-bids-validation", "--omp-nthreads", "1")


def _find_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _bidsapp_available():
    """``None`` when the BIDS-App and the demo generator exist, else why not."""
    for module in ("niaffine.bidsapp.run", "niaffine.data.bids_demo", "niaffine.io"):
        if not _find_module(module):
            return f"{module} does not exist yet"
    return None


def _app_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("LOGNAME", None)  # the app must cope: nipype's SLURM plugin needs it
    return env


def _niaffine(*args, cwd, timeout=3600):
    code = "import sys; from niaffine.bidsapp.run import cli; sys.exit(cli())"
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        env=_app_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"niaffine {' '.join(map(str, args))}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def demo_reference(slurm_cluster, tmp_path_factory):
    """The demo dataset and its derivatives from a MultiProc run: ``(bids, derivatives)``."""
    reason = _bidsapp_available()
    if reason:
        pytest.skip(f"BIDS-App not ready: {reason}")
    root = tmp_path_factory.mktemp("demo")
    bids = root / "bids"
    tiny = ["--tiny"] if os.environ.get("NIAFFINE_SLURM_DEMO") == "tiny" else []
    subprocess.run(
        [sys.executable, "-m", "niaffine.data.bids_demo", str(bids), *tiny],
        env=_app_env(),
        check=True,
        timeout=900,
        capture_output=True,
    )
    out = root / "out_multiproc"
    _niaffine(bids, out, "participant", "-w", root / "work_mp", "--nprocs", "2", *COMMON_ARGS, cwd=root)
    _niaffine(bids, out, "group", cwd=root)
    return bids, out


def _outputs(root: Path) -> dict[str, Path]:
    """Derivative files by relative path, without logs and HTML (run-specific)."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and "logs" not in rel.parts and path.suffix != ".html":
            if not path.name.startswith("."):
                out[str(rel)] = path
    return out


def _same_content(a: Path, b: Path) -> bool:
    if filecmp.cmp(a, b, shallow=False):
        return True
    name = a.name
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nb
        import numpy as np

        ia, ib = nb.load(a), nb.load(b)
        return (
            ia.shape == ib.shape
            and np.allclose(ia.affine, ib.affine, atol=1e-5)
            and np.allclose(ia.get_fdata(), ib.get_fdata(), atol=1e-3)
        )
    if name.endswith("_xfm.txt"):
        import numpy as np

        from niaffine.io import load_transform

        return np.allclose(load_transform(a), load_transform(b), atol=1e-4)
    if name.endswith(".json"):
        return _strip_volatile(json.loads(a.read_text())) == _strip_volatile(json.loads(b.read_text()))
    if name.endswith(".tsv"):
        return _tsv_rows(a) == _tsv_rows(b)
    return False


def _tsv_rows(path: Path) -> list[tuple]:
    """Rows of a TSV without run-specific columns (``elapsed_s``...), numbers rounded."""
    import csv

    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    keep = [k for k in (rows[0] if rows else {}) if not any(w in k.lower() for w in _VOLATILE)]

    def value(text):
        try:
            return round(float(text), 4)
        except ValueError:
            return text

    return sorted(tuple(value(row[k]) for k in keep) for row in rows)


_VOLATILE = ("elapsed", "seconds", "time", "date", "uuid", "host", "generatedby", "duration")


def _strip_volatile(data):
    """Drop run-specific entries (timings, dates, ids) from nested JSON data."""
    if isinstance(data, dict):
        return {
            k: _strip_volatile(v) for k, v in data.items() if not any(word in k.lower() for word in _VOLATILE)
        }
    if isinstance(data, list):
        return [_strip_volatile(v) for v in data]
    return data


def _assert_same_derivatives(reference: Path, other: Path):
    ref, new = _outputs(reference), _outputs(other)
    assert ref, "the MultiProc run wrote no derivatives"
    assert sorted(new) == sorted(ref)
    different = [rel for rel in ref if not _same_content(ref[rel], new[rel])]
    assert not different, f"outputs differ from the MultiProc run: {different}"


def test_bidsapp_slurm_plugin_matches_multiproc(demo_reference, tmp_path):
    """``niaffine bids out participant --plugin SLURM``: every node a job, same derivatives."""
    bids, reference = demo_reference
    out, work = tmp_path / "out_slurm", tmp_path / "work_slurm"
    proc = _niaffine(
        bids,
        out,
        "participant",
        "-w",
        work,
        *COMMON_ARGS,
        "--plugin",
        "SLURM",
        "--plugin-args",
        "sbatch_args=--time=60 --cpus-per-task=1",
        cwd=tmp_path,
    )
    _niaffine(bids, out, "group", cwd=tmp_path)
    assert list(work.rglob("batchscript_*.sh")), "no batch scripts: SLURM was not used"
    jobs = list(work.rglob("slurm-*.out"))
    assert jobs, f"no SLURM job logs under {work}\n{proc.stderr[-2000:]}"
    _assert_same_derivatives(reference, out)


def test_bidsapp_slurm_array_matches_multiproc(demo_reference, tmp_path):
    """scripts/niaffine-array.sbatch: one subject per task, local scratch, shared index."""
    bids, reference = demo_reference
    labels = sorted(p.name[4:] for p in bids.glob("sub-*") if p.is_dir())
    subjects = tmp_path / "subjects.txt"
    subjects.write_text("".join(f"{label}\n" for label in labels))
    bids_db, out, scratch = tmp_path / "bids_db", tmp_path / "out_array", tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "logs").mkdir()
    # the pybids index, made once before the array and only read by its tasks
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from niaffine.bidsapp.queries import load_layout; "
            "load_layout(sys.argv[1], sys.argv[2])",
            str(bids),
            str(bids_db),
        ],
        env=_app_env(),
        check=True,
        timeout=300,
    )
    index = sorted(bids_db.iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in index}
    env = _app_env()
    env.update(
        BIDS_DIR=str(bids),
        OUT_DIR=str(out),
        SUBJECTS=str(subjects),
        BIDS_DB=str(bids_db),
        SCRATCH_DIR=str(scratch),
        NIAFFINE_ARGS=" ".join(COMMON_ARGS),
    )
    env.pop("NIAFFINE_SIF", None)
    array = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            f"--array=1-{len(labels)}%2",
            "--cpus-per-task=1",
            "--mem=4G",
            str(REPO / "scripts" / "niaffine-array.sbatch"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((tmp_path / "logs").glob("*.out")))
    assert array.returncode == 0, f"{array.stderr}\n{logs}"
    job_id = array.stdout.strip().split(";")[0]
    group = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            f"--dependency=afterany:{job_id}",
            "--cpus-per-task=1",
            "-o",
            str(tmp_path / "logs" / "group_%j.out"),
            "--wrap",
            f"niaffine {bids} {out} group",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert group.returncode == 0, group.stderr
    assert len(list((tmp_path / "logs").glob("niaffine_*.out"))) == len(labels)
    assert not list(scratch.iterdir()), "array tasks left their work folders on scratch"
    assert {p: p.stat().st_mtime_ns for p in index} == stamps, "the shared index was rewritten"
    _assert_same_derivatives(reference, out)

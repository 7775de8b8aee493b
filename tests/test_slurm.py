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
    plugin, args = resolve_plugin(
        "SLURM", "sbatch_args=--cpus-per-task=1 --time=10", None, 1, 1, None
    )
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


def _bidsapp_available():
    for module in ("niaffine.bidsapp.run", "niaffine.demo"):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} does not exist yet"
        except ImportError as err:
            return f"{module} cannot be imported: {err}"
    return None


def _bids_root(folder: Path) -> Path:
    roots = sorted(folder.rglob("dataset_description.json"), key=lambda p: len(p.parts))
    if not roots:
        pytest.fail(f"the demo generator wrote no dataset_description.json under {folder}")
    return roots[0].parent


def _niaffine(*args, cwd, env=None, timeout=1800):
    cmd = [
        sys.executable,
        "-c",
        "import sys; from niaffine.bidsapp.run import cli; sys.exit(cli())",
    ]
    proc = subprocess.run(
        [*cmd, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"niaffine {' '.join(map(str, args))}\n{proc.stderr[-4000:]}"
    return proc


def _outputs(root: Path) -> dict[str, Path]:
    """Derivative files by relative path, without logs and run-specific files."""
    skip_parts = {"logs", "log", "figures"}
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not skip_parts.intersection(rel.parts) and path.suffix != ".html":
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
        return np.allclose(ia.affine, ib.affine, atol=1e-5) and np.allclose(
            ia.get_fdata(), ib.get_fdata(), atol=1e-4
        )
    if name.endswith((".txt", ".tfm", ".lta", ".mat")):
        import numpy as np
        from niaffine.io import load_transform

        try:
            return np.allclose(load_transform(a), load_transform(b), atol=1e-5)
        except Exception:  # noqa: BLE001 - not a transform: fall through to the text check
            return a.read_text() == b.read_text()
    if name.endswith(".json"):
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        for volatile in ("GeneratedBy", "ElapsedSeconds", "elapsed_s", "Date", "Timestamp"):
            ja.pop(volatile, None)
            jb.pop(volatile, None)
        return ja == jb
    return False


def test_bidsapp_slurm_matches_multiproc(slurm_cluster, tmp_path):
    """``niaffine bids out participant --plugin SLURM`` gives what a MultiProc run gives."""
    reason = _bidsapp_available()
    if reason:
        pytest.skip(f"BIDS-App not ready: {reason}")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("LOGNAME", None)  # the app must cope (nipype's SLURM plugin needs it)
    demo = tmp_path / "demo"
    subprocess.run(
        [sys.executable, "-m", "niaffine.demo", str(demo)], env=env, check=True, timeout=600
    )
    bids = _bids_root(demo)
    common = ["--device", "cpu", "--skip-bids-validation", "--nprocs", "2"]
    _niaffine(
        bids,
        tmp_path / "out_mp",
        "participant",
        "-w",
        tmp_path / "work_mp",
        *common,
        cwd=tmp_path,
        env=env,
    )
    _niaffine(
        bids,
        tmp_path / "out_slurm",
        "participant",
        "-w",
        tmp_path / "work_slurm",
        *common,
        "--plugin",
        "SLURM",
        "--plugin-args",
        "sbatch_args=--time=30",
        cwd=tmp_path,
        env=env,
    )

    batch_scripts = list((tmp_path / "work_slurm").rglob("batchscript_*.sh"))
    assert batch_scripts, "no nipype batch scripts: the SLURM plugin was not used"

    mp, sl = _outputs(tmp_path / "out_mp"), _outputs(tmp_path / "out_slurm")
    assert mp, "the MultiProc run wrote no derivatives"
    assert sorted(sl) == sorted(mp)
    different = [rel for rel in mp if not _same_content(mp[rel], sl[rel])]
    assert not different, f"SLURM and MultiProc outputs differ: {different}"

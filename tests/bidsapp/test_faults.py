# SPDX-License-Identifier: Apache-2.0
"""Faults a cluster job meets and bad input a user brings (issue 11).

Each case ends with its documented exit code and one line naming the cause, writes nothing
into ``bids_dir`` and leaves no temporary file. The nine cases of the issue come first, in
its order; the rest of the sweep (preemption, read-only, full and shared work dirs) follows.
Cases that need a process to die run the app in a real process, bounded by timeouts and
killed (with its workers) at the end. File-system cases mount a small tmpfs and are skipped
where mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from niaffine.bidsapp import errors

from .conftest import ROOT, install_fake_workflows, run_app, snapshot, start_app, write_skeleton

FAST = ("--skip-bids-validation", "--output-spaces", "T1w", "--device", "cpu")


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "out", tmp_path / "work"


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The process's output once it ends by itself (within ``timeout``)."""
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Kill the process and its workers (its whole session) if anything is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_app gives it a session of its own
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
        proc.communicate(timeout=10)


def _pids(folder: Path, subject: str = "") -> list[int]:
    return [int(p.name.split("-")[1]) for p in folder.glob(f"{subject}*-*")]


def _wait(condition, timeout: float = 60.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}): {proc.communicate()[0]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie waiting for its parent is gone already
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    return True


def _no_temporaries(*roots: Path) -> bool:
    from niaffine.io import TEMP_NAME

    return not [p for root in roots if root.exists() for p in root.rglob(".tmp-*")
                if TEMP_NAME.match(p.name)]


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "512k", *options: str):
    """A small tmpfs at ``path`` for the block (skips the test where mounting is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]),
                           "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path, leave_bytes: int) -> None:
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))


def _one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("niaffine: error:")]
    assert len(lines) == 1, text
    assert "Traceback" not in text, text
    return lines[0]


# -- 1. a worker process dies -----------------------------------------------------------------

@pytest.mark.parametrize("kills, code", [(1, errors.EXIT_OK), (2, errors.EXIT_OSERR)])
def test_dead_worker_is_rerun_once_then_fails_cleanly(tmp_path, dirs, kills, code):
    """``kill -9`` on the worker running sub-01: it runs again, alone; killed twice, it fails
    (71, naming the node) while sub-02 finishes; the run never hangs."""
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = start_app(bids, *dirs[:1], "participant", "-w", dirs[1], "--nprocs", "2", *FAST,
                     fake={"pid_dir": str(pids), "sleep_s": 2.0})
    try:
        killed = set()
        for _ in range(kills):  # each attempt announces itself with a new pid
            _wait(lambda: set(_pids(pids, "01")) - killed, proc=proc)
            pid = (set(_pids(pids, "01")) - killed).pop()
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        text = _finish(proc, timeout=90)
    finally:
        _stop(proc)
    assert proc.returncode == code, text
    assert (dirs[0] / "sub-02" / "anat" / "sub-02_from-T2w_to-T1w_mode-image_xfm.txt").is_file()
    assert "Traceback" not in text and "BrokenProcessPool" not in text
    if code:
        assert "sub_01_wf.fake failed: WorkerLostError" in text and "died twice" in text
        assert "crash file: " in text and "FAILED sub-01" in text
        assert "WorkerLostError" in (dirs[0] / "sub-01.html").read_text()
    else:
        assert "running it once more, alone" in text
        assert (dirs[0] / "sub-01.html").is_file() and "2 subject(s) processed" in text
    assert not [pid for pid in _pids(pids) if _alive(pid)]


# -- 2. symbolic links into bids_dir ------------------------------------------------------------

@pytest.mark.parametrize("link, target", [
    ("sub-01", "sub-01"),                                   # a subject folder
    ("sub-01/anat", "sub-01/anat"),                         # a datatype folder
    ("sub-01/figures", "sub-01/anat"),                      # the case
    ("logs", "sub-01/anat"),                                # crash files, settings
    ("group", "sub-01"),                                    # group outputs
    ("dataset_description.json", "dataset_description.json"),
    (".bidsignore", "README"),
    ("sub-01.html", "README"),
    ("sub-01/anat/sub-01_desc-preproc_T1w.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz"),
    ("sub-01/figures/sub-01_desc-brain_mask.svg", "sub-01/anat/sub-01_T2w.nii.gz"),
])
def test_link_into_bids_dir_is_refused_before_any_write(skeleton, dirs, capsys, monkeypatch,
                                                         link, target):
    install_fake_workflows(monkeypatch)
    out = dirs[0]
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(skeleton / target, target_is_directory=(skeleton / target).is_dir())
    before, out_before = snapshot(skeleton), snapshot(out)
    code, text = run_app(capsys, skeleton, out, "participant", "-w", dirs[1], "--plugin",
                         "Linear", *FAST)
    assert code == errors.EXIT_USAGE
    assert f"{out / link} is a symbolic link to {skeleton / target}" in _one_error_line(text)
    assert snapshot(skeleton) == before and snapshot(out) == out_before
    assert not dirs[1].exists()


def test_link_in_the_work_dir_is_refused(skeleton, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch)
    from niaffine.bidsapp.workflow import workflow_name

    top = dirs[1] / workflow_name()
    top.mkdir(parents=True)
    (top / "sub_01_wf").symlink_to(skeleton / "sub-01", target_is_directory=True)
    before = snapshot(skeleton)
    code, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], "--plugin",
                         "Linear", *FAST)
    assert code == errors.EXIT_USAGE and "sub_01_wf is a symbolic link" in _one_error_line(text)
    assert snapshot(skeleton) == before and not dirs[0].exists()


def test_group_level_refuses_a_link(skeleton, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch)
    assert run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], "--plugin",
                   "Linear", *FAST)[0] == 0
    (dirs[0] / "group").symlink_to(skeleton / "sub-02", target_is_directory=True)
    before = snapshot(skeleton)
    code, text = run_app(capsys, skeleton, dirs[0], "group")
    assert code == errors.EXIT_USAGE and "group is a symbolic link" in _one_error_line(text)
    assert snapshot(skeleton) == before


def test_every_write_checks_its_destination(tmp_path):
    """A link made after the start (between the check and a write) is refused at the write;
    the folders the write would create are not created either."""
    from niaffine.bidsapp.derivatives import OutputTree, UnsafeOutputError

    bids, out = tmp_path / "bids", tmp_path / "out"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text("{}")
    out.mkdir()
    tree = OutputTree(out, bids)
    (out / "sub-01").symlink_to(bids / "sub-01", target_is_directory=True)
    (out / "linked.json").symlink_to(bids / "dataset_description.json")
    for path in (out / "sub-01" / "figures" / "x.svg", out / "sub-01" / "anat" / "x.nii.gz",
                 out / "linked.json"):
        with pytest.raises(UnsafeOutputError, match="inside bids_dir"):
            tree.write_text(path, "x")
    assert sorted(p.name for p in (bids / "sub-01").iterdir()) == ["anat"]
    assert (bids / "dataset_description.json").read_text() == "{}"
    derivatives = OutputTree(bids / "derivatives" / "niaffine", bids)  # allowed, as BIDS says
    assert derivatives.write_text(derivatives.root / "sub-01.html", "ok").read_text() == "ok"


# -- 3. implausible geometry ------------------------------------------------------------------

def test_absurd_voxel_sizes_are_an_input_error(tmp_path, dirs, capsys, monkeypatch):
    """A T2w whose voxel sizes were multiplied by 1e6: 65 naming the file, nothing of it run."""
    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    bad = bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    img = nb.load(bad)
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([1e6, 1e6, 1e6, 1])),
            bad)
    code, text = run_app(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin",
                         "Linear", *FAST)
    assert code == errors.EXIT_NO_DATA
    assert f"{bad}: T2w image has implausible voxel sizes 2e+06 x 2e+06 x 2e+06 mm" in text
    assert not (dirs[0] / "sub-01" / "anat").exists()
    assert (dirs[0] / "sub-02" / "anat" / "sub-02_from-T2w_to-T1w_mode-image_xfm.txt").is_file()


def test_implausible_result_fails_its_subject(skeleton, dirs, capsys, monkeypatch):
    """A transform translating by 1e8 mm is not written; the subject fails, the report says why."""
    install_fake_workflows(monkeypatch, xfm_offset=1e8)
    code, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], "--plugin",
                         "Linear", *FAST)
    assert code == errors.EXIT_FAILED and "Traceback" not in text
    assert "implausible registration of sub-01_T2w.nii.gz to sub-01_T1w.nii.gz" in text
    assert "outside the moving image's field of view (translation -1e+08 -1e+08 1e+08 mm)" in text
    anat = dirs[0] / "sub-01" / "anat"
    assert (anat / "sub-01_desc-preproc_T1w.nii.gz").is_file()
    assert not list(anat.glob("*T2w*"))
    assert "implausible registration" in (dirs[0] / "sub-01.html").read_text()


@pytest.mark.parametrize("zoom, translation, ok", [
    (1.0, 0.0, True), (1.6, 0.0, True), (0.55, 30.0, True), (0.45, 0.0, False),
    (2.2, 0.0, False), (1.0, 120.0, True), (1.0, 500.0, False)])
def test_plausibility_bounds(zoom, translation, ok):
    from niaffine.bidsapp.plausibility import transform_problem

    img = nb.Nifti1Image(np.zeros((96, 112, 96), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    matrix = np.diag([zoom, zoom, zoom, 1.0])
    matrix[0, 3] = translation
    assert (transform_problem(matrix, img, img) is None) == ok


@pytest.mark.parametrize("sizes, ok", [((1.0, 1.0, 1.0), True), ((0.05, 0.05, 0.5), True),
                                       ((3.0, 3.0, 12.0), True), ((1e-3, 1e-3, 1e-3), False),
                                       ((1e3, 1e3, 1e3), False), ((1.0, 1.0, 50.0), False)])
def test_voxel_size_range(sizes, ok):
    from niaffine.errors import InputError
    from niaffine.io import check_geometry

    with contextlib.nullcontext() if ok else pytest.raises(InputError, match="voxel sizes"):
        check_geometry(np.diag([*sizes, 1.0]), (16, 16, 16), path="x.nii.gz", role="T1w image")


# -- 4. a full disk ------------------------------------------------------------------------------

@pytest.mark.parametrize("full_dir, leave_kb", [("out", 24), ("work", 12)])
def test_full_disk_exits_73_tmpfs(skeleton, tmp_path, capsys, monkeypatch, full_dir, leave_kb):
    """A real, nearly full file system (tmpfs) under output_dir, or under the work dir (a node
    fails to write there): 73, one line naming the file, no temporary file left."""
    install_fake_workflows(monkeypatch)
    with _tmpfs(tmp_path / "full", "256k") as full:
        _fill(full, leave_bytes=leave_kb * 1024)
        where = {"out": tmp_path / "out", "work": tmp_path / "work", full_dir: full / full_dir}
        code, text = run_app(capsys, skeleton, where["out"], "participant", "-w", where["work"],
                             "--plugin", "Linear", *FAST)
        line = _one_error_line(text)
        assert code == errors.EXIT_CANT_CREATE, text
        assert f"cannot write {full / full_dir}" in line and "No space left on device" in line
        assert _no_temporaries(full, tmp_path)


def test_full_disk_in_a_node_exits_73(skeleton, dirs, capsys, monkeypatch):
    """ENOSPC raised while a derivative is copied (no mount needed): 73 naming that file."""
    install_fake_workflows(monkeypatch)

    def full(src, dst, **kwargs):
        Path(dst).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    from niaffine.bidsapp import derivatives

    monkeypatch.setattr(derivatives, "shutil", types.SimpleNamespace(copyfile=full))
    code, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], "--plugin",
                         "Linear", *FAST)
    line = _one_error_line(text)
    assert code == errors.EXIT_CANT_CREATE
    assert "No space left on device" in line and str(dirs[0] / "sub-0") in line
    assert ".tmp-" not in line and _no_temporaries(dirs[0])


# -- 5. temporaries of a killed run -----------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, time
    from niaffine.bidsapp.guards import run_lock
    from niaffine.io import atomic_path
    lock = run_lock(sys.argv[1]) if sys.argv[3] == "locked" else None
    if lock is not None:
        lock.__enter__()
    with atomic_path(sys.argv[2]) as tmp:
        tmp.write_bytes(b"\\x1f\\x8b\\x08 half a gzip")
        print(tmp, flush=True)
        time.sleep(60)
""")


def _writer(out: Path, target: Path, locked: bool) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), str(target),
                             "locked" if locked else "free"], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, Path(proc.stdout.readline().strip())


def test_temporaries_of_a_sigkilled_run_are_removed(skeleton, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch)
    out = dirs[0]
    (out / "sub-01" / "anat").mkdir(parents=True)
    keep = [out / "sub-01" / "anat" / ".tmp-notes", out / "notes.tmp-1"]  # not niaffine's
    for path in keep:
        path.write_text("mine")
    proc, tmp = _writer(out, out / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz",
                        locked=True)
    try:
        assert tmp.is_file()
        proc.kill()  # SIGKILL: no finally, no atexit
        proc.wait(timeout=10)
    finally:
        _stop(proc)
    assert tmp.is_file()
    code, _ = run_app(capsys, skeleton, out, "participant", "-w", dirs[1], "--plugin", "Linear",
                      *FAST)
    assert code == 0 and not tmp.exists() and _no_temporaries(out)
    assert all(path.read_text() == "mine" for path in keep)


def test_temporaries_of_a_live_run_are_kept(skeleton, dirs, capsys, monkeypatch):
    """Another job still writing into output_dir: its temporary file stays, until it is gone."""
    install_fake_workflows(monkeypatch)
    out = dirs[0]
    out.mkdir()
    proc, tmp = _writer(out, out / "sub-09" / "anat" / "sub-09_T1w.nii.gz", locked=True)
    try:
        code, _ = run_app(capsys, skeleton, out, "participant", "-w", dirs[1], "--plugin",
                          "Linear", *FAST)
        assert code == 0 and tmp.is_file()
    finally:
        _stop(proc)
    code, _ = run_app(capsys, skeleton, out, "participant", "-w", dirs[1], "--plugin", "Linear",
                      *FAST)
    assert code == 0 and not tmp.exists()


# -- 6. devices -------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["mps", "gpu", "cuda1", "cuda:x", "tpu", ""])
def test_unusable_device_string_is_a_syntax_error(skeleton, dirs, capsys, device):
    code, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], "--device",
                         device)
    assert code == errors.EXIT_USAGE_ARGPARSE
    assert f"unknown device {device!r}: use auto, cpu, cuda or cuda:N" in text
    assert "Traceback" not in text and not dirs[0].exists() and not dirs[1].exists()


def test_cuda_without_a_gpu_creates_nothing(skeleton, dirs, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], "--device",
                         "cuda:0")
    assert code == errors.EXIT_UNAVAILABLE and "CUDA is not available" in _one_error_line(text)
    assert not dirs[0].exists() and not dirs[1].exists()


def test_every_layer_uses_the_one_resolver():
    from niaffine import devices, engine
    from niaffine.interfaces.common import resolve_device as interface_device
    from niaffine.workflows.common import compute_settings, resolve_build_device

    assert engine.resolve_device is devices.resolve_device
    for call in (interface_device, resolve_build_device, engine.resolve_device,
                 lambda d: compute_settings(d, 2)):
        with pytest.raises(devices.DeviceError, match="unknown device 'mps'"):
            call("mps")
    assert resolve_build_device("CUDA:1") == "cuda:1"  # built for GPU nodes, not looked up
    assert interface_device("auto") in ("cpu", "cuda")


@pytest.mark.parametrize("text, canonical", [("auto", "auto"), (None, "auto"), (" CPU ", "cpu"),
                                             ("cuda", "cuda"), ("cuda:0", "cuda:0"),
                                             ("cuda:02", "cuda:2")])
def test_device_spellings(text, canonical):
    from niaffine.devices import parse_device

    assert parse_device(text) == canonical


# -- 7. filter files ----------------------------------------------------------------------------

@pytest.mark.parametrize("filters, message", [
    ({"t1w": {"bogusentity": "x"}}, "unknown entity 'bogusentity' in 't1w'"),
    ({"t1": {"acquisition": "x"}}, "unknown data type 't1'"),
    ({"t1w": {"subject": "02"}}, "use --participant-label"),
    ({"bold": {"task": {"name": "rest"}}}, "bold.task: unsupported value"),
    ({"t2w": {"run": []}}, "a list must hold strings or numbers"),
])
def test_bad_filter_file_is_a_usage_error(skeleton, dirs, capsys, tmp_path, filters, message):
    path = tmp_path / "filters.json"
    path.write_text(json.dumps(filters))
    code, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1],
                         "--skip-bids-validation", "--bids-filter-file", path)
    assert code == errors.EXIT_USAGE and message in _one_error_line(text)
    assert not dirs[0].exists() and not dirs[1].exists()


@pytest.mark.parametrize("value, code", [(None, 0), ("*", errors.EXIT_NO_MATCH)])
def test_filter_null_and_any(skeleton, dirs, capsys, tmp_path, monkeypatch, value, code):
    """fMRIPrep's conventions: ``null`` means the entity is absent, ``"*"`` that it is set
    (no T2w here has an acquisition: a filter that matches nothing exits 18)."""
    install_fake_workflows(monkeypatch)
    path = tmp_path / "filters.json"
    path.write_text(json.dumps({"t2w": {"acquisition": value}}))
    got, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], "--plugin",
                        "Linear", *FAST, "--bids-filter-file", path)
    assert got == code, text
    assert bool(list(dirs[0].rglob("*from-T2w*"))) == (code == 0)
    if code:
        assert 'the t2w filter {"acquisition": "*"} matches no T2w image' in text


# -- 8. images of the wrong dimension ---------------------------------------------------------

@pytest.mark.parametrize("suffix, shape", [("T1w", (12, 12, 12, 2)), ("T1w", (12, 12)),
                                           ("T2w", (12, 12, 12, 3))])
def test_wrong_dimensions_exit_65_naming_the_file(tmp_path, dirs, capsys, monkeypatch, suffix,
                                                  shape):
    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids", subjects=("01",))
    bad = bids / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz"
    nb.save(nb.Nifti1Image(np.ones(shape, np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), bad)
    code, text = run_app(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin",
                         "Linear", *FAST)
    assert code == errors.EXIT_NO_DATA and "Traceback" not in text
    assert f"{bad}: {suffix} image must be 3D, got shape {shape}" in text
    assert not dirs[1].exists()  # nothing to run: no work folder


# -- 9. what a failing run prints ---------------------------------------------------------------

@pytest.mark.parametrize("fake, cause", [
    ({"fail_subject": "02"}, "RuntimeError: simulated failure of sub-02"),
    ({"fail_input": "02"}, "InputError: moving image"),
])
def test_failing_node_prints_its_cause_and_crash_file_only(tmp_path, dirs, capsys, monkeypatch,
                                                           fake, cause):
    install_fake_workflows(monkeypatch, **fake)
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    argv = (bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear", *FAST)
    code, text = run_app(capsys, *argv)
    assert code in (errors.EXIT_FAILED, errors.EXIT_NO_DATA)
    assert "Traceback" not in text and "nipype" not in text, text
    lines = [line for line in text.splitlines() if "sub_02_wf.fake failed:" in line]
    assert len(lines) == 1 and cause in lines[0] and "(crash file: " in lines[0]
    crash = Path(lines[0].rsplit("(crash file: ", 1)[1].rstrip(")"))
    assert crash.is_file() and "Traceback" in crash.read_text()


def test_verbose_run_prints_the_tracebacks(tmp_path, dirs):
    bids = write_skeleton(tmp_path / "bids", subjects=("01",))
    proc = start_app(bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear", *FAST,
                     "-v", fake={"fail_subject": "01"})
    text = _finish(proc)
    assert proc.returncode == errors.EXIT_FAILED
    assert "Traceback" in text and "RuntimeError: simulated failure of sub-01" in text


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, errors.EXIT_INTERRUPTED),
                                       (signal.SIGTERM, errors.EXIT_TERMINATED)])
def test_interrupt_and_preemption_end_quietly(tmp_path, dirs, sig, code):
    """Ctrl-C (SIGINT to the process group) or a scheduler's SIGTERM during a MultiProc run:
    the documented code within seconds, one line, no worker traceback, no worker left."""
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = start_app(bids, dirs[0], "participant", "-w", dirs[1], "--nprocs", "2", *FAST,
                     fake={"pid_dir": str(pids), "sleep_s": 30.0})
    try:
        _wait(lambda: len(_pids(pids)) == 2, proc=proc)
        os.killpg(proc.pid, sig)
        start = time.monotonic()
        text = _finish(proc, timeout=30)
        assert time.monotonic() - start < 15
    finally:
        _stop(proc)
    assert proc.returncode == code, text
    _one_error_line(text)
    assert "KeyboardInterrupt" not in text and "Terminated" not in text
    _wait(lambda: not [pid for pid in _pids(pids) if _alive(pid)], timeout=10)
    assert _no_temporaries(dirs[0])


# -- the rest of the sweep: shared, read-only and full work dirs; labels ------------------------

def test_label_matching_nothing_creates_nothing(skeleton, dirs, capsys):
    code, _ = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1],
                      "--skip-bids-validation", "--participant-label", "07")
    assert code == errors.EXIT_NO_MATCH and not dirs[0].exists() and not dirs[1].exists()


def test_two_runs_of_one_subject_in_one_work_dir(tmp_path, dirs, capsys, monkeypatch):
    """The second waits for nothing and corrupts nothing: 75, naming the other run."""
    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    pids = tmp_path / "pids"
    pids.mkdir()
    first = start_app(bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear", *FAST,
                      "--participant-label", "01", fake={"pid_dir": str(pids), "sleep_s": 60.0})
    try:
        _wait(lambda: _pids(pids), proc=first)
        code, text = run_app(capsys, bids, tmp_path / "out2", "participant", "-w", dirs[1],
                             "--plugin", "Linear", *FAST)
        assert code == errors.EXIT_TEMPFAIL
        assert f"sub-01 is being processed by another niaffine run with work dir {dirs[1]}" \
            in _one_error_line(text) and f"pid {first.pid}" in text
        assert not (tmp_path / "out2" / "sub-02").exists()  # checked before anything ran
        code, _ = run_app(capsys, bids, tmp_path / "out2", "participant", "-w", dirs[1],
                          "--plugin", "Linear", *FAST, "--participant-label", "02")
        assert code == 0  # another subject may share the work dir meanwhile
        (pids / "go").touch()
        assert _finish(first, timeout=60) is not None and first.returncode == 0
    finally:
        _stop(first)


def test_read_only_work_dir_exits_73(skeleton, tmp_path, capsys):
    with _tmpfs(tmp_path / "ro", "64k", "ro") as ro:
        code, text = run_app(capsys, skeleton, tmp_path / "out", "participant", "-w",
                             ro / "work", *FAST)
    assert code == errors.EXIT_CANT_CREATE
    assert f"cannot write to work dir {ro / 'work'}: Read-only file system" in \
        _one_error_line(text)
    assert not (tmp_path / "out").exists()


def test_read_only_bids_dir_is_fine(skeleton, tmp_path, capsys, monkeypatch):
    """Raw data mounted read-only (as on many clusters) is all niaffine needs."""
    install_fake_workflows(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(skeleton), str(ro)], capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        code, _ = run_app(capsys, ro, tmp_path / "out", "participant", "-w", tmp_path / "w",
                          "--plugin", "Linear", *FAST)
        assert code == 0 and (tmp_path / "out" / "sub-02.html").is_file()
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_corrupt_gzip_member_is_named(skeleton, dirs, capsys):
    bad = skeleton / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    bad.write_bytes(gzip.compress(b"\0" * 400)[:-8] + b"garbage!")
    code, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], *FAST,
                         "--participant-label", "02")
    assert code == errors.EXIT_NO_DATA and str(bad) in text


def test_damaged_bids_database_is_a_usage_error(skeleton, dirs, capsys, tmp_path):
    database = tmp_path / "db"
    database.mkdir()
    (database / "layout_index.sqlite").write_bytes(b"not a database" * 100)
    code, text = run_app(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], *FAST,
                         "--bids-database-dir", database)
    assert code == errors.EXIT_USAGE
    assert f"--bids-database-dir {database} holds no usable pybids index" in _one_error_line(text)

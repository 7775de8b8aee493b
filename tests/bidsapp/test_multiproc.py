# SPDX-License-Identifier: Apache-2.0
"""The MultiProc plugin that survives dead workers, and the reading of crash files."""

from __future__ import annotations

import signal

import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine.bidsapp import crashes, errors
from niaffine.bidsapp.multiproc import ResilientMultiProcPlugin


def _die_or_double(value, deaths_dir):
    """Double ``value``; the first ``value`` runs of it (counted in ``deaths_dir``) die first."""
    import os
    import signal
    from pathlib import Path

    seen = len(list(Path(deaths_dir).glob(f"{value}-*")))
    if seen < value:
        Path(deaths_dir, f"{value}-{os.getpid()}").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return 2 * value


@pytest.fixture
def alarm():
    """Fail (instead of hanging the suite) if the block takes more than two minutes."""
    def timeout(signum, frame):
        raise TimeoutError("the workflow hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_node_whose_worker_dies_runs_again_then_fails(tmp_path, alarm):
    """value 0 never dies, 1 dies once (and succeeds on its second run), 2 dies twice."""
    deaths = tmp_path / "deaths"
    deaths.mkdir()
    wf = pe.Workflow(name="toy", base_dir=str(tmp_path / "work"))
    wf.config["execution"].update({"crashdump_dir": str(tmp_path / "crash"),
                                   "crashfile_format": "txt", "poll_sleep_duration": 0.1})
    nodes = []
    for value in (0, 1, 2):
        node = pe.Node(niu.Function(input_names=["value", "deaths_dir"], output_names=["out"],
                                    function=_die_or_double), name=f"n{value}")
        node.inputs.value, node.inputs.deaths_dir = value, str(deaths)
        nodes.append(node)
    wf.add_nodes(nodes)
    plugin = ResilientMultiProcPlugin(plugin_args={"n_procs": 2, "raise_insufficient": False})
    with pytest.raises(RuntimeError):
        wf.run(plugin=plugin)
    found = [crashes.read_crash(p) for p in (tmp_path / "crash").glob("crash-*.txt")]
    assert [(c.node, c.code) for c in found] == [("toy.n2", errors.EXIT_OSERR)]
    assert "WorkerLostError: the worker process running toy.n2 died twice" in found[0].cause
    assert len(list(deaths.glob("1-*"))) == 1 and len(list(deaths.glob("2-*"))) == 2
    for value in (0, 1):
        assert (tmp_path / "work" / "toy" / f"n{value}" / f"result_n{value}.pklz").is_file()


def _crash(tmp_path, text: str):
    path = tmp_path / "crash-20260101-000000-root-registration-x.txt"
    path.write_text(f"Node: wf.sub_01_wf.registration\nWorking directory: /w\n\n{text}\n")
    return crashes.read_crash(path)


@pytest.mark.parametrize("text, code, cause", [
    ("OSError: [Errno 28] No space left on device\nOSError: [Errno 28] No space left on "
     "device: '/o/sub-01/anat/.tmp-0123456789ab-sub-01_T1w.json'", errors.EXIT_CANT_CREATE,
     "cannot write /o/sub-01/anat/sub-01_T1w.json: No space left on device"),
    ("niaffine.bidsapp.multiproc.WorkerLostError: the worker died", errors.EXIT_OSERR,
     "WorkerLostError: the worker died"),
    ("niaffine.errors.DeviceUnavailableError: no CUDA\nNodeInputError: x", errors.EXIT_UNAVAILABLE,
     "DeviceUnavailableError: no CUDA"),
    ("niaffine.interfaces.common.NodeInputError: Reg failed on a: NaN", errors.EXIT_NO_DATA,
     "InputError: Reg failed on a: NaN"),
    ("RuntimeError: boom\nNodeExecutionError: wrapped", errors.EXIT_FAILED,
     "NodeExecutionError: wrapped"),
])
def test_crash_causes(tmp_path, text, code, cause):
    crash = _crash(tmp_path, text)
    assert crash.node == "wf.sub_01_wf.registration"
    assert crash.code == code and crash.cause == cause
    assert crashes.exit_code([crash]) == code


def test_empty_crash_file(tmp_path):
    """A crash file written on a full disk may be empty: it is still reported."""
    path = tmp_path / "crash-20260101-000000-root-fake-x.txt"
    path.touch()
    crash = crashes.read_crash(path)
    assert crash.code == errors.EXIT_FAILED and "empty crash file" in crash.cause


def test_the_most_specific_cause_sets_the_exit_code(tmp_path):
    found = [crashes.Crash(tmp_path, "n", "c", code) for code in (1, 65, 71)]
    assert crashes.exit_code(found) == errors.EXIT_OSERR
    assert crashes.exit_code([]) == errors.EXIT_OK


def _sleep(seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_stop_workers_ends_the_pools_and_their_management_threads(tmp_path):
    """After ``stop_workers`` (Ctrl-C, SIGTERM) no worker and no pool management thread is
    left: the interpreter's exit then has no pipe of a closing pool to write to."""
    plugin = ResilientMultiProcPlugin(plugin_args={"n_procs": 2})
    futures = [plugin.pool.submit(_sleep, 30.0) for _ in range(2)]
    processes = list(plugin.pool._processes.values())
    manager = plugin.pool._executor_manager_thread
    assert processes and manager.is_alive()
    plugin.stop_workers()
    assert not manager.is_alive()
    for process in processes:
        process.join(timeout=5)
        assert not process.is_alive()
    assert all(f.done() for f in futures)

# SPDX-License-Identifier: Apache-2.0
"""Progress of the participant level: live line on a terminal, log lines in a pipe."""

from __future__ import annotations

import io
import re
import threading
import time
import types

import pytest

from niaffine.bidsapp.progress import INTERVAL_ENV, RunProgress, StatusLine

from .conftest import start_app, write_skeleton


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _node(fullname):
    return types.SimpleNamespace(fullname=fullname, name=fullname.split(".")[-1])


def test_terminal_line_is_rewritten_in_place_and_log_lines_go_above():
    stream = _Terminal()
    line = StatusLine(lambda: stream)
    progress = RunProgress(["01"], interval_s=0.1, status_line=line)
    nodes = [_node("niaffine_wf.sub_01_wf.fake"), _node("niaffine_wf.sub_01_report")]
    progress.begin(len(nodes))
    with progress.running():
        for node in nodes:
            progress(node, "start")
            time.sleep(0.3)
            progress(node, "end")
        with line.paused():
            stream.write("a log line\n")
    text = stream.getvalue()
    assert "\r\x1b[K1/2 nodes done, 1 running, 0/1 subjects" in text
    assert "~" in text and "left" in text
    assert "\r\x1b[Ka log line\n" in text  # the live line is cleared before a log line
    assert progress.done == {"01"} and progress.final_line().startswith("all 2 nodes done")


def test_a_forked_worker_neither_redraws_the_line_nor_waits_for_its_lock():
    import os
    import signal

    stream = _Terminal()
    line = StatusLine(lambda: stream)
    line.show("3/9 nodes done")
    line._lock.acquire()  # as if the progress thread held it when MultiProc forked
    try:
        pid = os.fork()
        if pid == 0:  # the worker (killed by the alarm if it hangs on the lock)
            signal.alarm(20)
            with line.paused():
                pass
            os._exit(0 if line._text == "" else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        line._lock.release()
    assert os.waitstatus_to_exitcode(status) == 0


def test_failures_and_nodes_not_run_are_counted():
    progress = RunProgress(["01", "02"], interval_s=30, status_line=StatusLine(io.StringIO))
    progress.begin(3, end_without_start_skips=True)
    failing, after, other = (_node(f"wf.sub_0{i}_wf.x") for i in (1, 1, 2))
    progress(failing, "start")
    progress(failing, "exception")
    progress(after, "end")  # Linear's "end" for a node it skips after a failure
    progress(other, "start")
    progress(other, "end")
    assert progress.final_line().startswith("1/3 nodes done, 1 failed, 1 not run")
    assert progress.failed == {"01": ["wf.sub_01_wf.x"]}


def test_multiproc_local_and_failed_nodes():
    """MultiProc: only "end" for cached or main-process nodes; "exception" then "end" on failure."""
    progress = RunProgress(["01"], interval_s=30, status_line=StatusLine(io.StringIO))
    progress.begin(3)
    cached, failing = _node("wf.sub_01_wf.a"), _node("wf.sub_01_wf.b")
    progress(cached, "end")
    progress(failing, "exception")
    progress(failing, "end")
    assert (progress.nodes_done, progress.nodes_failed) == (1, 1)
    assert progress.final_line().startswith("1/3 nodes done, 1 failed, 1 not run")


@pytest.mark.parametrize("plugin", ["Linear", "MultiProc"])
def test_piped_run_logs_at_least_every_interval(tmp_path, plugin):
    """With stderr piped, lines keep coming while a slow node runs; the last says all done."""
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    (tmp_path / "pids").mkdir()
    proc = start_app(bids, tmp_path / "out", "participant", "-w", tmp_path / "work",
                     "--skip-bids-validation", "--output-spaces", "T1w", "--plugin", plugin,
                     "--nprocs", "2", fake={"pid_dir": str(tmp_path / "pids"), "sleep_s": 3.0})
    lines = []

    def read():
        for text in proc.stdout:
            lines.append((time.monotonic(), text.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert proc.wait(timeout=300) == 0, "\n".join(t for _, t in lines)
    reader.join(timeout=10)
    texts = [t for _, t in lines]
    progress = [k for k, t in enumerate(texts) if "progress:" in t]
    assert progress, texts
    first = next(k for k, t in enumerate(texts) if "running niaffine_" in t)
    times = [when for when, _ in lines[first:progress[-1] + 1]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 2.5, (max(gaps), texts)  # 0.5 s interval; a loaded machine is slow
    assert any(re.search(r"\d+/\d+ nodes done, \d+ running, \d/2 subjects", t) for t in texts)
    assert sum("done: " in t and "subjects finished" in t for t in texts) == 2
    assert re.search(r"progress: all \d+ nodes done, 2/2 subjects", texts[progress[-1]])
    assert "\r" not in "".join(texts)


@pytest.fixture(autouse=True)
def _fast_interval(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0.5")

# SPDX-License-Identifier: Apache-2.0
"""The load generator: one busy process per available core, ended on exit."""

import os
import subprocess
import sys
import time

import pytest

from benchmarks import load


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_available_cores_respects_affinity():
    assert 1 <= load.available_cores() <= len(os.sched_getaffinity(0))


def test_cgroup_quota_is_read(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr(load.Path, "read_text",
                        lambda self: "0::/\n" if str(self) == "/proc/self/cgroup"
                        else open(self).read())
    assert load._cgroup_cpus(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert load._cgroup_cpus(tmp_path) is None


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_busy_processes_spin_and_end():
    with load.busy_load(2) as busy:
        pids = busy.pids
        assert len(pids) == 2
        deadline = time.monotonic() + 30.0  # a loaded machine starts them slowly
        while time.monotonic() < deadline and min(map(_cpu_seconds, pids)) < 0.3:
            time.sleep(0.2)
        assert min(map(_cpu_seconds, pids)) >= 0.3  # busy, not sleeping
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read()


def test_command_line_runs_for_the_given_time():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "benchmarks.load", "--seconds", "0.5",
                          "--processes", "1"], capture_output=True, text=True, check=True)
    assert "1 busy processes" in out.stdout
    assert 0.4 < time.perf_counter() - start < 20


def test_busy_processes_end_with_their_parent():
    """A load whose owner is killed (SIGKILL, no clean-up) does not outlive it."""
    code = ("import time, sys; from benchmarks import load; b = load.busy_load(1).start(); "
            "print(b.pids[0], flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    spinner = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and os.path.exists(f"/proc/{spinner}"):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{spinner}")

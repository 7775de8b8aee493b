# SPDX-License-Identifier: Apache-2.0
"""A documented CPU load: one busy process per core available to this process.

Each busy process is a fresh Python interpreter spinning in a pure-Python arithmetic loop (no
memory traffic to speak of, no I/O, no threads): it competes for one core exactly as one
CPU-bound job of another user would. It ends by itself when the process that started it
is gone (killed or not). The number of cores is what this process may use: its
CPU affinity (``os.sched_getaffinity``), capped by a cgroup CPU quota (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us / cpu.cfs_period_us`` in v1), rounded up.

Use it as a context manager::

    with busy_load() as load:       # one spinner per available core
        ...                         # whatever runs here shares the cores
    load.pids                       # the spinners' process ids (ended on exit)

or from the shell, for a fixed time (Ctrl-C stops it early)::

    python -m benchmarks.load --seconds 60 [--processes N]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

LOGGER = logging.getLogger(__name__)

SPIN_CODE = """\
import os, sys
parent, x = int(sys.argv[1]), 1
while os.getppid() == parent:
    for _ in range(200000):
        x = (x * 1103515245 + 12345) % 2147483648
"""
"""What each busy process runs: a linear congruential generator, until its parent is gone
(checked about every 20 ms, so a load whose owner was killed does not outlive it)."""


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup CPU quota, or None when there is no quota."""
    candidates = []
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        own = []
    for line in own:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append(("v2", root / path.lstrip("/")))
            candidates.append(("v2", root))
        elif "cpu" in controllers.split(","):
            for name in (controllers, "cpu", "cpu,cpuacct"):
                candidates.append(("v1", root / name / path.lstrip("/")))
                candidates.append(("v1", root / name))
    for kind, folder in candidates:
        try:
            if kind == "v2":
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    return int(quota) / int(period)
            else:
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                period = int((folder / "cpu.cfs_period_us").read_text())
                if quota > 0:
                    return quota / period
        except (OSError, ValueError):
            continue
    return None


def available_cores() -> int:
    """Cores this process may use: affinity, capped by a cgroup CPU quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


class BusyLoad:
    """``processes`` busy processes (default: `available_cores`) while in a ``with`` block."""

    def __init__(self, processes: int | None = None):
        self.processes = available_cores() if processes is None else int(processes)
        self._procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def start(self) -> BusyLoad:
        if self._procs:
            return self
        for _ in range(self.processes):
            self._procs.append(subprocess.Popen(
                [sys.executable, "-c", SPIN_CODE, str(os.getpid())], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        LOGGER.info("load: %d busy processes (pids %s)", self.processes, self.pids)
        return self

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGTERM is not caught
                proc.kill()
                proc.wait()
        self._procs = []

    def __enter__(self) -> BusyLoad:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def busy_load(processes: int | None = None) -> BusyLoad:
    """Context manager: one busy process per available core (or ``processes``)."""
    return BusyLoad(processes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="One CPU-bound busy process per available core.")
    p.add_argument("--seconds", type=float, required=True, help="how long to keep the load")
    p.add_argument("--processes", type=int, default=None,
                   help=f"busy processes (default: available cores, here {available_cores()})")
    args = p.parse_args(argv)
    load = busy_load(args.processes)

    def _stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    with load:
        print(f"{load.processes} busy processes ({', '.join(map(str, load.pids))}) "
              f"for {args.seconds:g} s", flush=True)
        try:
            time.sleep(args.seconds)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

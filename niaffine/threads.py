# SPDX-License-Identifier: Apache-2.0
"""The process-wide CPU threading policy, applied before torch loads.

torch's OpenMP threads spin while they wait for work. On a machine where other processes are
busy (a shared cluster node, a BIDS-App run with several nodes at once, a laptop with a
browser open) the spinning threads compete with those processes and with each other: one 1 mm
registration took 28-33 s with 2 threads on a loaded 2-core machine, against 6.4 s with
``OMP_WAIT_POLICY=PASSIVE``. OpenMP reads that variable once, when the library loads, so the
policy must be set before ``import torch``:

- every niaffine command calls :func:`configure` first thing in ``main``;
- ``import niaffine.engine`` calls :func:`configure_environment` before it imports torch (the
  Python API; a program that imported torch before niaffine keeps torch's own policy).

Thread counts default to the CPUs this process may use (its CPU affinity and its cgroup CPU
quota, as set by SLURM, Docker ``--cpus`` or ``taskset``), not to the machine's core count.
Variables the user has set are never overridden, except the thread count when a command is
given ``--threads`` / ``--omp-nthreads`` explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

LOGGER = logging.getLogger(__name__)

#: Environment variables that carry the thread count to OpenMP, MKL and OpenBLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Wait policy set unless the user chose one: idle threads sleep instead of spinning.
WAIT_POLICY = "PASSIVE"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max`` or v1 CFS), or None if unlimited."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus(*, cgroup_root: Path | str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> available_cpus() >= 1
    True
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return max(1, cpus)


def configure_environment(threads: int | None = None, *,
                          environ: MutableMapping[str, str] | None = None) -> int:
    """Set the OpenMP wait policy and thread counts in the environment (before torch loads).

    Parameters
    ----------
    threads : int, optional
        Thread count to impose (a command's ``--threads``); by default the thread variables
        are set only where unset, to :func:`available_cpus`.
    environ : mapping, optional
        The environment to change (default ``os.environ``, which child processes inherit).

    Returns
    -------
    int
        The thread count now in the environment.

    Examples
    --------
    >>> env = {"OMP_WAIT_POLICY": "ACTIVE"}
    >>> configure_environment(3, environ=env)
    3
    >>> env["OMP_WAIT_POLICY"], env["OMP_NUM_THREADS"]
    ('ACTIVE', '3')
    >>> env = {"OMP_NUM_THREADS": "1"}
    >>> configure_environment(environ=env), env["MKL_NUM_THREADS"], env["OMP_WAIT_POLICY"]
    (1, '1', 'PASSIVE')
    """
    env = os.environ if environ is None else environ
    env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    if threads is not None:
        count = max(1, int(threads))
        for var in THREAD_VARIABLES:
            env[var] = str(count)
        return count
    count = available_cpus()
    try:  # a user's OMP_NUM_THREADS sets the others too (torch also reads MKL_NUM_THREADS)
        count = max(1, int(env.get("OMP_NUM_THREADS", count)))
    except ValueError:
        env["OMP_NUM_THREADS"] = str(count)
    for var in THREAD_VARIABLES:
        env.setdefault(var, str(count))
    return count


def configure(threads: int | None = None) -> int:
    """Apply the policy to this process: environment first, then torch if it is loaded.

    Parameters
    ----------
    threads : int, optional
        Thread count (``--threads``); default: what :func:`configure_environment` decides.

    Returns
    -------
    int
        torch's intra-op thread count (or the environment's, when torch is not loaded yet).
    """
    torch = sys.modules.get("torch")
    if torch is not None and "OMP_WAIT_POLICY" not in os.environ:
        LOGGER.debug("torch was loaded before the OpenMP wait policy was set; it keeps spinning")
    count = configure_environment(threads)
    if torch is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def thread_map(function, items, workers: int | None = None) -> list:
    """``[function(item) for item in items]`` on up to ``workers`` threads, in order.

    For per-volume numpy/scipy work that releases the GIL (``scipy.ndimage`` filters and
    interpolation, numpy partitions): a series' volumes are prepared on as many threads as
    torch computes with (``torch.get_num_threads()`` when torch is loaded, else one), so the
    preparation between engine calls scales with ``--threads`` as the engine does.

    >>> thread_map(abs, [-1, 2, -3], workers=2)
    [1, 2, 3]
    """
    items = list(items)
    if workers is None:
        torch = sys.modules.get("torch")
        workers = torch.get_num_threads() if torch is not None else 1
    workers = max(1, min(int(workers), len(items)))
    if workers == 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


@contextlib.contextmanager
def one_thread(device=None):
    """Run the block's torch CPU operations on one intra-op thread; the count comes back after.

    For work that torch would split across its threads although waking the passive ones
    costs more than the split saves (small arrays, memory-bound scatters and gathers).
    Nothing changes on another ``device`` (CUDA) or when torch already uses one thread.
    """
    import torch

    before = torch.get_num_threads()
    if (device is not None and torch.device(device).type != "cpu") or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

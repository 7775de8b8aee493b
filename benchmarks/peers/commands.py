# SPDX-License-Identifier: Apache-2.0
"""Command-line tools: NiftyReg ``reg_aladin`` and MRtrix3 ``mrregister``.

Each runs with its defaults on uncompressed NIfTI copies of the images, with its own thread
option, and its text matrix is read back (`benchmarks.peers.common` says why it already is the
fixed-to-moving RAS matrix). ``seconds`` is the wall time of the command (reading the two
images is part of it); ``extra["peak_rss_mb"]`` is the command's own peak resident memory
(``VmHWM``, polled while it runs).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import read_matrix_text, save_inputs

PEERS_CACHE = Path(os.environ.get("NIAFFINE_PEERS_CACHE", Path.home() / ".cache" / "niaffine-peers"))
"""Where ``scripts/install-peers.sh`` builds NiftyReg (``niftyreg-<version>/niftyreg/bin``)."""


def find_reg_aladin() -> str | None:
    """``reg_aladin``: ``$NIAFFINE_REG_ALADIN``, then PATH, this Python's ``bin``, the cache."""
    candidates = [os.environ.get("NIAFFINE_REG_ALADIN"), shutil.which("reg_aladin"),
                  str(Path(sys.executable).parent / "reg_aladin"),
                  *sorted(glob.glob(str(PEERS_CACHE / "niftyreg-*" / "niftyreg" / "bin"
                                        / "reg_aladin")), reverse=True)]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def find_mrregister() -> str | None:
    """``mrregister`` (Debian ``mrtrix3``): ``$NIAFFINE_MRREGISTER`` or PATH."""
    candidates = [os.environ.get("NIAFFINE_MRREGISTER"), shutil.which("mrregister")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_command(cmd: list[str], *, cwd, poll_s: float = 0.2) -> tuple[float, float | None]:
    """Run ``cmd``; its wall time (s) and peak resident memory (MB, polled), or raise.

    Raises
    ------
    RuntimeError
        When the command exits non-zero (with the end of its output).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak = [None]

    def poll():
        while proc.poll() is None:
            value = _peak_rss_mb(proc.pid)
            if value is not None:
                peak[0] = value
            time.sleep(poll_s)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - start
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited {proc.returncode}: {output[-800:]}")
    return seconds, peak[0]


def _require(path: str | None, name: str, hint: str) -> str:
    if path is None:
        raise FileNotFoundError(f"{name} not found: {hint}")
    return path


def _register(command, mask_flags: dict[str, str], fixed, moving, fixed_mask, moving_mask,
              workdir) -> tuple:
    """Save the inputs, run ``command(paths) + mask options`` and read ``affine.txt``."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = save_inputs(tmp, fixed, moving, fixed_mask, moving_mask)
        cmd = command(paths)
        for key, flag in mask_flags.items():
            if key in paths:
                cmd += [flag, paths[key]]
        seconds, rss = run_command(cmd, cwd=tmp)
        matrix = read_matrix_text(Path(tmp) / "affine.txt")
    return matrix, seconds, {"peak_rss_mb": rss}


def run_niftyreg(fixed, moving, *, dof=12, fixed_mask=None, moving_mask=None, workdir=None,
                 threads=2, options=(), **_):
    """``reg_aladin -ref fixed -flo moving -aff out.txt -omp THREADS`` (its defaults).

    Defaults of NiftyReg 1.5.70: symmetric block matching, rigid then affine, 3 levels, 5
    iterations per level, 50 % of the blocks, image centres aligned first. Masks, when given,
    are ``-rmask`` / ``-fmask``; ``options`` are more arguments (e.g. ``["-ln", "1"]``).
    """
    exe = _require(find_reg_aladin(), "reg_aladin", "run scripts/install-peers.sh (NiftyReg)")
    if dof != 12:
        raise ValueError("the NiftyReg runner implements dof=12 (reg_aladin's default) only")
    return _register(
        lambda p: [exe, "-ref", p["fixed"], "-flo", p["moving"], "-aff", "affine.txt",
                   "-res", "result.nii", "-omp", str(threads), "-voff", *options],
        {"fixed_mask": "-rmask", "moving_mask": "-fmask"},
        fixed, moving, fixed_mask, moving_mask, workdir)


def run_mrtrix(fixed, moving, *, dof=12, fixed_mask=None, moving_mask=None, workdir=None,
               threads=2, options=(), **_):
    """``mrregister moving fixed -type affine -affine out.txt -nthreads THREADS`` (its defaults).

    Defaults of MRtrix3 3.0: centre-of-mass translation start, sum of squared differences,
    scales 0.25, 0.5 and 1 of the image size. Masks, when given, are ``-mask1`` (moving) and
    ``-mask2`` (fixed); ``options`` are more arguments.
    """
    exe = _require(find_mrregister(), "mrregister", "apt-get install mrtrix3 "
                   "(or scripts/install-peers.sh)")
    if dof != 12:
        raise ValueError("the MRtrix runner implements dof=12 (-type affine) only")
    return _register(
        lambda p: [exe, p["moving"], p["fixed"], "-type", "affine", "-affine", "affine.txt",
                   "-nthreads", str(threads), "-force", "-quiet", *options],
        {"moving_mask": "-mask1", "fixed_mask": "-mask2"},
        fixed, moving, fixed_mask, moving_mask, workdir)

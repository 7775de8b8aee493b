# SPDX-License-Identifier: Apache-2.0
"""What a participant run checks and holds around its writes.

* :func:`check_links` refuses, before anything is written, an output tree (or the top of a
  work folder) with a symbolic link that resolves into ``bids_dir``: through such a link
  niaffine would write into the raw dataset.
* :func:`run_lock` holds a shared lock on ``output_dir/.niaffine-run.lock`` for the whole
  run. A run that can take it exclusively, at its start or at its end, is alone: every
  niaffine temporary file left in the output tree (``.tmp-<12 hex>-<name>``, by a run
  killed with SIGKILL or out of memory) is then stale and removed. Other files are never
  touched.
* :func:`work_locks` holds one exclusive lock per subject (and batch) in the work folder, so
  that two runs sharing a work folder never compute the same nodes at once.

All locks are ``flock`` locks: the kernel releases them when a process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from niaffine.bidsapp import errors
from niaffine.io import TEMP_NAME, is_inside

LOGGER = logging.getLogger("niaffine.bidsapp")
RUN_LOCK = ".niaffine-run.lock"
WORK_LOCKS = ".niaffine-locks"


def _walk(root: Path) -> Iterator[os.DirEntry]:
    """Every entry under ``root``, links not followed (unreadable folders skipped)."""
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    yield entry
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:
            continue


def links_into(paths: Iterable[Path], bids_dir: Path, allowed: Path) -> list[tuple[Path, Path]]:
    """``(link, target)`` for each symbolic link among ``paths`` that resolves into ``bids_dir``.

    A target inside ``allowed`` (the output folder itself, which may lie under
    ``bids_dir/derivatives``) is fine.
    """
    found = []
    for path in paths:
        if not path.is_symlink():
            continue
        target = path.resolve()
        if is_inside(target, bids_dir) and not is_inside(target, allowed):
            found.append((path, target))
    return found


def check_links(output_dir: Path, bids_dir: Path, work_tops: Iterable[Path] = ()) -> None:
    """Refuse a run whose writes could land in ``bids_dir`` through a symbolic link.

    Parameters
    ----------
    output_dir, bids_dir : Path
        Resolved folders.
    work_tops : iterable of Path
        Work-folder paths niaffine creates or reuses (the workflow folder and its subject
        folders); Nipype owns what lies deeper.

    Raises
    ------
    BidsAppError
        ``EXIT_USAGE`` (64), naming the link and where it points.
    """
    candidates = [Path(entry.path) for entry in _walk(output_dir) if entry.is_symlink()]
    found = links_into([*candidates, *work_tops], bids_dir, output_dir)
    if found:
        link, target = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise errors.BidsAppError(
            f"{link} is a symbolic link to {target}, inside bids_dir {bids_dir}{more}: "
            "niaffine never writes into bids_dir; remove the link", errors.EXIT_USAGE)


def stale_temporaries(root: Path) -> list[Path]:
    """niaffine's own temporary files under ``root`` (links not followed)."""
    return [Path(entry.path) for entry in _walk(root)
            if TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False)]


def _try_lock(handle, kind: int) -> bool:
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # a file system without locks (NFS mounted nolock)
        LOGGER.debug("no lock on %s: %s", handle.name, exc)
        return False


def _sweep(root: Path) -> int:
    removed = 0
    for path in stale_temporaries(root):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    if removed:
        LOGGER.info("removed %d temporary file(s) left in %s by an earlier run", removed, root)
    return removed


@contextlib.contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold ``output_dir``'s run lock (shared); sweep stale temporaries when alone.

    The sweep runs at entry and at exit (also after an error or Ctrl-C) whenever no other
    run holds the lock, so a temporary file is removed only when its writer is gone.
    """
    output_dir = Path(output_dir)
    with open(output_dir / RUN_LOCK, "a") as handle:
        if _try_lock(handle, fcntl.LOCK_EX):
            _sweep(output_dir)
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            yield
        finally:
            if _try_lock(handle, fcntl.LOCK_EX):  # converting: our shared lock is let go
                _sweep(output_dir)
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def work_locks(folder: Path, names: Iterable[str]) -> Iterator[None]:
    """Hold an exclusive lock per name (``sub-01``, ``batch-0``) under ``folder/.niaffine-locks``.

    Raises
    ------
    BidsAppError
        ``EXIT_TEMPFAIL`` (75) when another live run holds one of them.
    """
    lock_dir = Path(folder) / WORK_LOCKS
    with contextlib.ExitStack() as stack:
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.BidsAppError(f"cannot write to work dir {folder}: {exc.strerror}",
                                      errors.EXIT_CANT_CREATE) from None
        for name in sorted(set(names)):
            path = lock_dir / f"{name}.lock"
            handle = stack.enter_context(open(path, "a+"))
            if not _try_lock(handle, fcntl.LOCK_EX):
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                raise errors.BidsAppError(
                    f"{name} is being processed by another niaffine run with work dir "
                    f"{Path(folder).parent} ({owner}): wait for it to finish, "
                    "or give this run its own -w/--work-dir", errors.EXIT_TEMPFAIL)
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
        yield

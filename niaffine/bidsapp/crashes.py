# SPDX-License-Identifier: Apache-2.0
"""Nipype crash files: the node that failed, its cause in one line, and the exit code.

A crash file holds the whole traceback; the run prints only :attr:`Crash.cause` and the
file's path (everything with ``-v``). When several nodes fail, the run's exit code is the
most specific cause found (:data:`CAUSES`, first match wins), else 1.
"""

from __future__ import annotations

import dataclasses
import errno
import re
from pathlib import Path

from niaffine.bidsapp import errors

_DISK_FULL = re.compile(r"\[Errno (?:28|122)\] (No space left on device|Disk quota exceeded)"
                        r"(?:: '[^']+' -> )?(?:: )?(?:'([^']+)')?")
_TEMP_PREFIX = re.compile(r"\.tmp-[0-9a-f]{12}-")
_ERROR_LINE = re.compile(r"^\s*([\w.]+(?:Error|Exception)\b.*)$", flags=re.MULTILINE)
#: ``(pattern in the crash file, exit code)``, most specific first.
CAUSES = (
    (_DISK_FULL, errors.EXIT_CANT_CREATE),
    (re.compile(r"WorkerLostError: (.+)"), errors.EXIT_OSERR),
    (re.compile(r"DeviceUnavailableError: (.+)"), errors.EXIT_UNAVAILABLE),
    (re.compile(r"UnsafeOutputError: (.+)"), errors.EXIT_USAGE),
    (re.compile(r"(?:niaffine\.errors\.)?InputError: (.+)"), errors.EXIT_NO_DATA),
)


@dataclasses.dataclass(frozen=True)
class Crash:
    """One crash file: ``path``, failing ``node`` (full name), one-line ``cause``, ``code``."""

    path: Path
    node: str
    cause: str
    code: int

    def line(self) -> str:
        """``<node> failed: <cause> (crash file: <path>)``."""
        return f"{self.node} failed: {self.cause} (crash file: {self.path})"


def read_crash(path) -> Crash:
    """Read a Nipype text crash file (``crashfile_format = txt``)."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        text = f"unreadable crash file ({exc.strerror})"
    if not text.strip():
        text = "empty crash file (it could not be written: is the disk full?)"
    node = re.search(r"^Node: (\S+)", text, flags=re.MULTILINE)
    found = _ERROR_LINE.findall(text)
    cause, code = (found[-1].strip() if found else text.strip().splitlines()[-1]), \
        errors.EXIT_FAILED
    for pattern, exit_code in CAUSES:
        match = pattern.search(text)
        if match:
            code = exit_code
            cause = match.group(0).strip()
            if pattern is _DISK_FULL:
                cause = "cannot write {}: {}".format(*disk_full_in(text))
            break
    return Crash(path, node.group(1) if node else path.name, cause, code)


def disk_full_in(text: str) -> tuple[str, str] | None:
    """``(file, reason)`` of a full-disk error in a traceback's text, the named file first.

    >>> disk_full_in("OSError: [Errno 28] No space left on device\\n"
    ...              "OSError: [Errno 28] No space left on device: '/o/.tmp-0123456789ab-x.txt'")
    ('/o/x.txt', 'No space left on device')
    """
    matches = list(_DISK_FULL.finditer(text))
    if not matches:
        return None
    best = next((m for m in matches if m.group(2)), matches[0])
    return _final_name(best.group(2)), best.group(1)


def _final_name(path: str | None) -> str:
    """The file a temporary name stands for (``.tmp-<hex>-x.nii.gz`` is ``x.nii.gz``)."""
    return _TEMP_PREFIX.sub("", path) if path else "a file"


def exit_code(crashes) -> int:
    """The run's code for these crashes: the most specific cause (:data:`CAUSES` order)."""
    return most_specific(*(crash.code for crash in crashes))


def most_specific(*codes: int) -> int:
    """The code that says most: :data:`CAUSES` order, then any other failure, then 0.

    >>> most_specific(0, 1, 65), most_specific(1, 0), most_specific()
    (65, 1, 0)
    """
    failed = {code for code in codes if code}
    for _, code in CAUSES:
        if code in failed:
            return code
    return min(failed) if failed else errors.EXIT_OK


def write_error(exc: BaseException) -> errors.BidsAppError | None:
    """A one-line exit-73 error for a failed write (full disk or quota, read-only, too big).

    The exception's chain is searched (a crash file that cannot be written on a full disk
    hides the node error it was about); the first failure that names its file wins.
    """
    found = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                                      errno.EFBIG):
            target = exc.filename2 if exc.filename2 is not None else exc.filename
            found.append((target and _final_name(str(target)), exc.strerror or str(exc)))
        full = disk_full_in(str(exc))
        if full:
            found.append((None if full[0] == "a file" else full[0], full[1]))
        exc = exc.__cause__ or exc.__context__
    if not found:
        return None
    where, reason = next((item for item in found if item[0]), found[0])
    return errors.BidsAppError(f"cannot write {where or 'a file'}: {reason}",
                               errors.EXIT_CANT_CREATE)

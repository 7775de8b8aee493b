# SPDX-License-Identifier: Apache-2.0
"""Exit codes of the BIDS-App and the exception that carries them.

The codes follow the BIDS-Apps execution draft for the BIDS-specific failures
(16, 17, 18) and ``sysexits.h`` for the others, so a scheduler or a shell script
can tell a bad dataset from a full disk without parsing the message.

>>> err = BidsAppError("no T1w", EXIT_NO_DATA)
>>> err.code, str(err)
(65, 'no T1w')
"""

EXIT_OK = 0
"""Every selected subject was processed."""
EXIT_FAILED = 1
"""The run finished but at least one subject failed or was skipped."""
EXIT_USAGE_ARGPARSE = 2
"""Command-line syntax error (raised by :mod:`argparse`)."""
EXIT_BIDS_INVALID = 16
"""``bids_dir`` is not a valid BIDS dataset."""
EXIT_ANALYSIS_LEVEL = 17
"""Unknown analysis level."""
EXIT_NO_MATCH = 18
"""Participant/session labels or filters that match nothing."""
EXIT_USAGE = 64
"""Bad combination of paths or options (e.g. output inside the input dataset)."""
EXIT_NO_DATA = 65
"""Corrupt, truncated or unreadable input data (the message names the file)."""
EXIT_UNAVAILABLE = 69
"""A requested resource is unavailable (e.g. ``--device cuda`` without CUDA)."""
EXIT_SOFTWARE = 70
"""Internal error: a bug, please report it with the crash file."""
EXIT_OSERR = 71
"""A worker process died twice running the same node (out-of-memory killer, ``kill -9``)."""
EXIT_CANT_CREATE = 73
"""The output or work directory cannot be created or written (permissions, full disk)."""
EXIT_IOERR = 74
"""Reading or writing a file failed for another reason (an I/O error, permissions)."""
EXIT_TEMPFAIL = 75
"""Another live run holds a subject of this run in the same work directory: retry later."""
EXIT_INTERRUPTED = 130
"""Interrupted by the user (Ctrl-C, SIGINT)."""
EXIT_TERMINATED = 143
"""Terminated by SIGTERM (a scheduler's preemption or time limit)."""

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "some subjects failed",
    EXIT_USAGE_ARGPARSE: "command-line syntax error",
    EXIT_BIDS_INVALID: "BIDS validation failed",
    EXIT_ANALYSIS_LEVEL: "unknown analysis level",
    EXIT_NO_MATCH: "labels or filters match nothing",
    EXIT_USAGE: "invalid paths or options",
    EXIT_NO_DATA: "corrupt or unreadable input data",
    EXIT_UNAVAILABLE: "requested resource unavailable",
    EXIT_SOFTWARE: "internal error",
    EXIT_OSERR: "a worker process died",
    EXIT_CANT_CREATE: "cannot write output",
    EXIT_IOERR: "input/output error",
    EXIT_TEMPFAIL: "work dir in use by another run",
    EXIT_INTERRUPTED: "interrupted",
    EXIT_TERMINATED: "terminated",
}


class BidsAppError(Exception):
    """An error that ends the run with a documented exit code.

    Parameters
    ----------
    message : str
        One line that names the problem (and the file, where there is one).
    code : int
        The process exit code, one of the ``EXIT_*`` constants.
    """

    def __init__(self, message: str, code: int = EXIT_SOFTWARE):
        super().__init__(message)
        self.code = int(code)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM.

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` on the
    way (Nipype catches node errors that way) mistakes it for a node failure.
    """

# SPDX-License-Identifier: Apache-2.0
"""Progress of a participant-level run: nodes and subjects done, elapsed time, time left.

:class:`RunProgress` is the Nipype ``status_callback`` the BIDS-App gives its plugin. The
plugins that know their graph (:class:`~niaffine.bidsapp.multiproc.ResilientMultiProcPlugin`
and :class:`ProgressLinearPlugin`, through :class:`ReportsGraphSize`) tell it how many nodes
there are. While the graph runs, a background thread keeps the user informed:

* on a terminal, one line on stderr, updated in place (carriage return) about every second;
  log lines are printed above it (:class:`StatusLine`);
* otherwise (a batch job's log file, a pipe) a plain log line at least every
  ``interval_s`` seconds (25 by default, so that a loaded machine's late wake-ups still keep
  lines less than 30 s apart; ``NIAFFINE_PROGRESS_INTERVAL`` seconds when set).

Each subject that finishes gets its own log line, and the run a last line saying how many
nodes were done (``all 41 nodes done`` when nothing failed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable

from nipype.pipeline.plugins.linear import LinearPlugin

LOGGER = logging.getLogger("niaffine.bidsapp")
#: Seconds between progress log lines when stderr is not a terminal.
PROGRESS_INTERVAL_S = 25.0
#: Environment variable that overrides :data:`PROGRESS_INTERVAL_S` (seconds).
INTERVAL_ENV = "NIAFFINE_PROGRESS_INTERVAL"
#: Subject (and session) of a node's full name.
SUBJECT = re.compile(r"(?:^|\.)sub_([A-Za-z0-9]+?)(?:_ses_([A-Za-z0-9]+))?_"
                     r"(?:wf|ds|report|batch|anat_wf)\b")


def progress_interval(value: float | None = None, environ=None) -> float:
    """Seconds between progress lines: ``value``, else ``$NIAFFINE_PROGRESS_INTERVAL``, else 25.

    Examples
    --------
    >>> progress_interval(), progress_interval(5), progress_interval(environ={INTERVAL_ENV: "0.5"})
    (25.0, 5.0, 0.5)
    """
    if value is None:
        text = (os.environ if environ is None else environ).get(INTERVAL_ENV, "").strip()
        try:
            value = float(text) if text else PROGRESS_INTERVAL_S
        except ValueError:
            LOGGER.warning("%s=%r is not a number of seconds: using %g", INTERVAL_ENV, text,
                           PROGRESS_INTERVAL_S)
            value = PROGRESS_INTERVAL_S
    return max(float(value), 0.05)


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``.

    >>> clock(5.2), clock(125), clock(3725)
    ('0:05', '2:05', '1:02:05')
    """
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StatusLine:
    """One line at the bottom of a terminal, rewritten in place; nothing when not a terminal.

    Log handlers print through :meth:`paused` so that their lines go above it.

    Parameters
    ----------
    stream : callable, optional
        Returns the stream to write to (default: whatever ``sys.stderr`` is then).
    """

    def __init__(self, stream: Callable | None = None):
        self._stream = stream or (lambda: sys.stderr)
        self._text = ""
        self._lock = threading.RLock()
        if hasattr(os, "register_at_fork"):  # MultiProc forks workers while the line is live
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: ref() and ref()._forget())

    def _forget(self) -> None:
        """In a forked worker: a fresh lock (the parent's may be held) and no line to redraw."""
        self._lock = threading.RLock()
        self._text = ""

    @property
    def is_terminal(self) -> bool:
        """Whether the stream is a terminal."""
        isatty = getattr(self._stream(), "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def _write(self, text: str) -> None:
        stream = self._stream()
        stream.write(text)
        stream.flush()

    def show(self, text: str) -> None:
        """Replace the line with ``text`` (on a terminal)."""
        with self._lock:
            if not self.is_terminal:
                return
            self._text = text
            self._write("\r\x1b[K" + text)

    def clear(self) -> None:
        """Remove the line (on a terminal)."""
        with self._lock:
            if self._text and self.is_terminal:
                self._write("\r\x1b[K")
            self._text = ""

    @contextlib.contextmanager
    def paused(self):
        """Take the line away while the block prints, then put it back."""
        with self._lock:
            text = self._text
            if text:
                self.clear()
            try:
                yield
            finally:
                if text:
                    self.show(text)


class RunProgress:
    """Nipype ``status_callback``: nodes and subjects done, failed; progress lines.

    Parameters
    ----------
    subjects : list of str
        Subject labels of the run.
    interval_s : float, optional
        Seconds between log lines when stderr is not a terminal (see :func:`progress_interval`).
    status_line : StatusLine, optional
        The terminal line (a new one on ``sys.stderr`` by default).

    Attributes
    ----------
    subjects : list of str
    done : set of str
        Subjects whose report was written.
    failed : dict
        Subject -> full names of its failed nodes.
    start : float
        ``time.monotonic()`` when the progress began.
    """

    def __init__(self, subjects, *, interval_s: float | None = None,
                 status_line: StatusLine | None = None):
        self.subjects = sorted(set(subjects))
        self.done: set[str] = set()
        self.failed: dict[str, list[str]] = {}
        self.start = time.monotonic()
        self.interval_s = progress_interval(interval_s)
        self.status_line = status_line or StatusLine()
        self._total: Callable[[], int | None] = lambda: None
        self._end_without_start_skips = False
        self._started: set[int] = set()
        self._running: set[int] = set()
        self._ended: set[int] = set()
        self._failed: set[int] = set()
        self.nodes_skipped = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the plugin tells ------------------------------------------------------------
    def begin(self, total: int | Callable[[], int] | None, *, end_without_start_skips=False):
        """The number of nodes of the graph (or a callable giving it, when it grows).

        ``end_without_start_skips``: the plugin says ``end`` without ``start`` for a node it
        does not run after a failure (nipype's Linear); MultiProc says only ``end`` for the
        nodes it finds cached or runs in the main process.
        """
        self._total = total if callable(total) else (lambda: total)
        self._end_without_start_skips = end_without_start_skips

    @property
    def nodes_done(self) -> int:
        """Nodes that ran (or were found cached) without failing."""
        return len(self._ended)

    @property
    def nodes_failed(self) -> int:
        """Nodes that failed."""
        return len(self._failed)

    @property
    def total(self) -> int | None:
        """Nodes in the graph, when the plugin told; at least those seen so far."""
        total = self._total()
        seen = self.nodes_done + self.nodes_failed + self.nodes_skipped + len(self._running)
        return None if total is None else max(int(total), seen)

    def __call__(self, node, status: str) -> None:
        with self._lock:
            key = id(node)
            if status == "start":
                self._started.add(key)
                self._running.add(key)
                return
            self._running.discard(key)
            if status == "exception":
                self._failed.add(key)
                self._ended.discard(key)
            elif key in self._failed:  # MultiProc also says "end" for a node that failed
                return
            elif self._end_without_start_skips and key not in self._started:
                self.nodes_skipped += 1
                return
            else:
                self._ended.add(key)
        self._subject_event(node, status)

    def _subject_event(self, node, status: str) -> None:
        match = SUBJECT.search(node.fullname)
        if match is None:
            return
        subject = match.group(1)
        if status == "exception":
            self.failed.setdefault(subject, []).append(node.fullname)
            LOGGER.error("sub-%s: node %s failed (%d failed so far)", subject, node.fullname,
                         len(self.failed))
        elif (status == "end" and node.name == f"sub_{subject}_report"
              and subject not in self.failed):  # nipype also says "end" for skipped nodes
            self.done.add(subject)
            LOGGER.info("sub-%s done: %d/%d subjects finished, %d failed, %s", subject,
                        len(self.done), len(self.subjects), len(self.failed),
                        clock(time.monotonic() - self.start))

    # -- lines ------------------------------------------------------------------------------
    def line(self) -> str:
        """``12/40 nodes done, 2 running, 1/3 subjects, 0 failed, 1:05 elapsed, ~2:10 left``."""
        with self._lock:
            total, done = self.total, self.nodes_done + self.nodes_skipped
            elapsed = time.monotonic() - self.start
            nodes = f"{done}/{total} nodes done" if total else f"{done} nodes done"
            parts = [nodes, f"{len(self._running)} running",
                     f"{len(self.done)}/{len(self.subjects)} subjects",
                     f"{self.nodes_failed} failed", f"{clock(elapsed)} elapsed"]
            if total and done:
                parts.append(f"~{clock(elapsed * max(total - done - self.nodes_failed, 0) / done)}"
                             " left")
        return ", ".join(parts)

    def final_line(self) -> str:
        """The last line: ``all N nodes done`` when every node ran without failing."""
        total = self.total
        elapsed = clock(time.monotonic() - self.start)
        if total is not None and self.nodes_done == total and not self.nodes_failed:
            return (f"all {total} nodes done, {len(self.done)}/{len(self.subjects)} subjects, "
                    f"{elapsed}")
        not_run = (total - self.nodes_done - self.nodes_failed) if total is not None else "?"
        return (f"{self.nodes_done}/{total if total is not None else '?'} nodes done, "
                f"{self.nodes_failed} failed, {not_run} not run, "
                f"{len(self.done)}/{len(self.subjects)} subjects, {elapsed}")

    # -- the background thread ---------------------------------------------------------------
    def _beat(self) -> None:
        tick = min(1.0, self.interval_s / 2)
        last = time.monotonic()
        while not self._stop.wait(tick):
            if self.status_line.is_terminal:
                self.status_line.show(self.line())
            elif time.monotonic() - last >= self.interval_s:
                LOGGER.info("progress: %s", self.line())
                last = time.monotonic()

    @contextlib.contextmanager
    def running(self):
        """Show progress while the block runs the graph; end with :meth:`final_line`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="niaffine-progress",
                                        daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.status_line.clear()
            LOGGER.info("progress: %s", self.final_line())


class ReportsGraphSize:
    """Plugin mixin: tells a :class:`RunProgress` status callback how many nodes will run.

    DistributedPluginBase plugins (MultiProc) add MapNode sub-nodes to their ``procs`` list
    as they go, so the count is read again at every progress line.
    """

    #: Whether the plugin says ``end`` without ``start`` for the nodes it skips.
    end_without_start_skips = False

    def run(self, graph, config, updatehash=False):
        """Announce the graph's size, then run it."""
        begin = getattr(getattr(self, "_status_callback", None), "begin", None)
        if begin is not None:
            begin(lambda: len(getattr(self, "procs", None) or graph),
                  end_without_start_skips=self.end_without_start_skips)
        return super().run(graph, config, updatehash=updatehash)


class ProgressLinearPlugin(ReportsGraphSize, LinearPlugin):
    """Nipype's ``Linear`` plugin that reports its graph's size to the progress."""

    end_without_start_skips = True

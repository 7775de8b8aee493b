# SPDX-License-Identifier: Apache-2.0
"""Nipype's MultiProc, made to survive the death of a worker process.

nipype 1.11's ``MultiProcPlugin`` runs nodes in a :class:`~concurrent.futures.ProcessPoolExecutor`.
When one worker dies (``kill -9``, the out-of-memory killer, a library that crashes while it
loads) the executor breaks: every future it holds fails with ``BrokenProcessPool``, nipype's
result callback raises, no result ever arrives and its scheduling loop waits forever.

:class:`ResilientMultiProcPlugin` notices the broken pool, starts a new one and runs each node
that was lost once more, alone in a one-worker pool (so a second death names the node that
causes it, not a bystander). A node lost a second time fails like any failing node, with a
crash file whose error is a :class:`WorkerLostError`; the run goes on with the other subjects
and ends. Workers ignore SIGINT: on Ctrl-C (or SIGTERM) the main process stops them itself,
so no worker prints a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from traceback import format_exception

from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer, run_node

from niaffine.bidsapp.progress import ReportsGraphSize

LOGGER = logging.getLogger("niaffine.bidsapp")

#: Seconds :meth:`ResilientMultiProcPlugin.stop_workers` waits for each pool's management thread.
MANAGER_JOIN_S = 5.0


class WorkerLostError(RuntimeError):
    """The process running a node died (twice) without returning a result."""


def _init_worker(cwd: str) -> None:
    process_initializer(cwd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's handler: just end


def lost_message(node_name: str) -> str:
    """The crash-file error of a node whose worker died on both attempts."""
    return (f"{WorkerLostError.__module__}.WorkerLostError: the worker process running "
            f"{node_name} died twice without a result (killed by a signal, e.g. the "
            "out-of-memory killer or kill -9, or crashed in a library)")


class ResilientMultiProcPlugin(ReportsGraphSize, MultiProcPlugin):
    """``MultiProc`` that retries, once and alone, a node whose worker process died.

    Takes nipype's ``MultiProc`` plugin arguments (``n_procs``, ``memory_gb``, ...); a
    ``status_callback`` with a ``begin`` method (:class:`~niaffine.bidsapp.progress.RunProgress`)
    is told the number of nodes.
    """

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        self.pool.shutdown(wait=False)  # nipype's pool, no worker started yet
        self._context = mp.get_context(self.plugin_args.get("mp_context"))
        self.pool = self._new_pool(self.processors)
        self._retry_pool = None
        self._nodes = {}  # taskid -> (node, updatehash)
        self._pool_of = {}  # taskid -> the pool its future belongs to
        self._lost = set()  # taskids whose worker died once
        self._waiting = collections.deque()  # lost taskids waiting for the retry pool
        self._retrying = None

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                   initargs=(self._cwd,), mp_context=self._context)

    # -- submission ---------------------------------------------------------------------
    def _submit_job(self, node, updatehash=False):
        self._taskid += 1
        if getattr(node.interface, "terminal_output", "") == "stream":
            node.interface.terminal_output = "allatonce"
        self._nodes[self._taskid] = (node, updatehash)
        try:
            self._submit(self._taskid, self.pool)
        except BrokenProcessPool:  # broken by a death nobody has asked about yet
            self.pool = self._new_pool(self.processors)
            self._submit(self._taskid, self.pool)
        LOGGER.debug("[MultiProc] submitted %s (taskid=%d)", node.fullname, self._taskid)
        return self._taskid

    def _submit(self, taskid: int, pool: ProcessPoolExecutor) -> None:
        node, updatehash = self._nodes[taskid]
        future = pool.submit(run_node, node, updatehash, taskid)
        self._task_obj[taskid] = future
        self._pool_of[taskid] = pool
        future.add_done_callback(self._async_callback)

    def _async_callback(self, args):
        if args.exception() is None:  # failures are looked at in _get_result
            result = args.result()
            self._taskresult[result["taskid"]] = result

    # -- results --------------------------------------------------------------------------
    def _get_result(self, taskid):
        if taskid in self._taskresult:
            return self._taskresult[taskid]
        if taskid in self._waiting:
            self._start_retry()
            return None
        future = self._task_obj[taskid]
        if not future.done():
            return None
        error = future.exception()
        if error is None:  # done, its callback may not have run yet
            self._taskresult[taskid] = future.result()
            return self._taskresult[taskid]
        node = self._nodes[taskid][0]
        if not isinstance(error, BrokenProcessPool):
            return self._failure(taskid, format_exception(type(error), error,
                                                          error.__traceback__))
        self._forget_pool(self._pool_of[taskid])
        if taskid in self._lost:
            LOGGER.error("node %s: its worker process died again; the node failed",
                         node.fullname)
            return self._failure(taskid, [lost_message(node.fullname) + "\n"])
        self._lost.add(taskid)
        self._waiting.append(taskid)
        LOGGER.warning("node %s: its worker process died; running it once more, alone",
                       node.fullname)
        self._start_retry()
        return None

    def _failure(self, taskid: int, traceback: list[str]) -> dict:
        self._taskresult[taskid] = {"result": None, "traceback": traceback, "taskid": taskid}
        return self._taskresult[taskid]

    def _forget_pool(self, pool: ProcessPoolExecutor) -> None:
        """Replace a broken pool (the main one at once, the retry pool when next needed)."""
        if pool is self.pool:
            self.pool.shutdown(wait=False)
            self.pool = self._new_pool(self.processors)
        elif pool is self._retry_pool:
            self._retry_pool.shutdown(wait=False)
            self._retry_pool = None

    def _start_retry(self) -> None:
        """Run the next lost node in the one-worker retry pool, when that pool is idle."""
        if self._retrying is not None or not self._waiting:
            return
        if self._retry_pool is None:
            self._retry_pool = self._new_pool(1)
        self._retrying = self._waiting.popleft()
        self._submit(self._retrying, self._retry_pool)

    def _clear_task(self, taskid):
        for table in (self._task_obj, self._taskresult, self._nodes, self._pool_of):
            table.pop(taskid, None)
        self._lost.discard(taskid)
        if self._retrying == taskid:
            self._retrying = None
            self._start_retry()

    # -- ending -----------------------------------------------------------------------------
    def run(self, graph, config, updatehash=False):
        """Run the graph; on any exit that is not normal (Ctrl-C, SIGTERM), stop the workers."""
        try:
            return super().run(graph, config, updatehash=updatehash)
        except BaseException:
            self.stop_workers()
            raise

    def _postrun_check(self):
        super()._postrun_check()
        if self._retry_pool is not None:
            self._retry_pool.shutdown()

    def stop_workers(self) -> None:
        """Terminate every worker now (their nodes are lost) and let the pools go.

        Each pool's management thread is given a few seconds to notice and close its wake-up
        pipe: on Python 3.11, an interpreter exit while it is closing that pipe (the atexit
        hook of :mod:`concurrent.futures` writes to it without the pool's lock) printed an
        ``OSError: [Errno 9] Bad file descriptor`` traceback after the one-line error.
        """
        managers = []
        for pool in (self.pool, self._retry_pool):
            if pool is None:
                continue
            # shutdown() drops the pool's reference to its management thread
            managers.append(getattr(pool, "_executor_manager_thread", None))
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
        for manager in managers:
            if manager is not None and manager.is_alive():
                manager.join(timeout=MANAGER_JOIN_S)

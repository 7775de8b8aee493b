# SPDX-License-Identifier: Apache-2.0
"""``niaffine bids_dir output_dir {participant,group}``: the BIDS-App entry point.

:func:`main` parses, checks, builds the dataset-wide graph, runs it and returns
the exit code (see :mod:`niaffine.bidsapp.errors`); it never calls ``sys.exit``.
:func:`cli` is the console script.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from niaffine import __version__, threads
from niaffine.bidsapp import crashes as crashes_mod
from niaffine.bidsapp import derivatives as drv
from niaffine.bidsapp import errors, guards
from niaffine.bidsapp.parser import build_parser
from niaffine.bidsapp.plugin import LOCAL_PLUGINS
from niaffine.bidsapp.progress import SUBJECT, RunProgress, StatusLine
from niaffine.bidsapp.settings import Settings, from_args, make_dirs

LOGGER = logging.getLogger("niaffine.bidsapp")
#: How long a batch plugin (SLURM...) waits for a finished job's result file to appear.
JOB_FINISHED_TIMEOUT_S = 60


class _StderrHandler(logging.StreamHandler):
    """Write to whatever ``sys.stderr`` is at the time (it may be swapped, e.g. by pytest),
    above the progress line when stderr is a terminal."""

    def __init__(self, status_line: StatusLine):
        super().__init__()
        self.status_line = status_line

    def emit(self, record):
        self.stream = sys.stderr
        with self.status_line.paused():
            super().emit(record)


class _NoNipypeErrors(logging.Filter):
    """Without ``-v``: Nipype's warnings pass, its node errors (and tracebacks) do not.

    niaffine reports each failing node itself, in one line with its crash file.
    """

    NODE_ERRORS = ("[Node] Error on", "Storing result file without outputs")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return (record.levelno < logging.ERROR and "\n" not in message
                and not message.startswith(self.NODE_ERRORS))


def _setup_logging(verbose: int, status_line: StatusLine):
    """Log niaffine (INFO: progress) and Nipype (by ``-v``) to stderr; return an undo."""
    from nipype import logging as nlogging

    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _StderrHandler(status_line)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%H:%M:%S"))
    app, own = logging.getLogger("niaffine"), logging.getLogger("niaffine.bidsapp")
    nipype = [nlogging.getLogger(n) for n in ("nipype.workflow", "nipype.interface",
                                              "nipype.utils")]
    quiet = _NoNipypeErrors()
    saved = (app.level, app.propagate, own.level, [lg.level for lg in nipype])
    app.addHandler(handler)
    app.setLevel(level)  # engine, interfaces: warnings unless -v
    own.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)  # progress: always
    app.propagate = False
    for logger in nipype:
        logger.setLevel(level)
        if verbose <= 0:
            logger.addFilter(quiet)

    def undo():
        app.removeHandler(handler)
        app.setLevel(saved[0])
        app.propagate = saved[1]
        own.setLevel(saved[2])
        for logger, old in zip(nipype, saved[3]):
            logger.setLevel(old)
            logger.removeFilter(quiet)

    return undo


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM (preemption, a time limit) raises :class:`errors.Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked child (a plugin's worker): just end
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        raise errors.Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _crash_files(log_dir: Path) -> set[Path]:
    return set(log_dir.glob("crash-*"))


def _write_settings(settings: Settings, tree: drv.OutputTree) -> Path:
    path = settings.output_dir / "logs" / f"niaffine-{settings.run_uuid}.toml"
    return tree.write_text(path, settings.to_toml())


def _work_lock_names(subjects: list[dict], settings: Settings) -> list[str]:
    """One work-dir lock per subject, and per template batch with ``--batch-size``."""
    names = [f"sub-{d['subject']}" for d in subjects]
    if settings.batch_size > 1 and settings.template_space is not None:
        names += [f"batch-{k}" for k in range(-(-len(subjects) // settings.batch_size))]
    return names


def _plugin(settings: Settings):
    from niaffine.bidsapp.plugin import PluginError, resolve_plugin

    try:
        return resolve_plugin(settings.plugin, settings.plugin_args, settings.use_plugin,
                              nprocs=settings.nprocs, n_gpu_procs=settings.n_gpu_procs,
                              mem_gb=settings.mem_gb)
    except PluginError as exc:
        raise errors.BidsAppError(f"plugin settings: {exc}", errors.EXIT_USAGE) from None


def run_participant(settings: Settings, *, progress_interval_s: float | None = None,
                    status_line: StatusLine | None = None) -> int:
    """The participant level: validate, query, check, then build, run, sink, report.

    Every check that can fail (dataset, labels, filters, inputs, plugin, links into
    ``bids_dir``) runs before the first folder is created or file written.

    Parameters
    ----------
    settings : Settings
    progress_interval_s : float, optional
        Seconds between progress log lines when stderr is not a terminal (default:
        ``$NIAFFINE_PROGRESS_INTERVAL``, else 30; see :mod:`niaffine.bidsapp.progress`).
    status_line : StatusLine, optional
        The terminal's progress line (shared with the log handler).
    """
    from niaffine.bidsapp import queries
    from niaffine.bidsapp.workflow import workflow_name

    if not settings.skip_bids_validation:
        queries.validate_dataset(settings.bids_dir)
    layout = queries.load_layout(settings.bids_dir, settings.bids_database_dir)
    subjects, skipped = queries.collect_subjects(
        layout, participant_label=settings.participant_label,
        session_label=settings.session_label, modalities=settings.modalities,
        bids_filters=settings.bids_filters)
    code = errors.EXIT_OK
    usable = []
    if not settings.reports_only:
        for data in subjects:  # cheap integrity checks: name the bad file before any work
            try:
                queries.check_inputs([data], series=settings.hmc)
                usable.append(data)
            except errors.BidsAppError as exc:
                skipped.append(queries.Skipped(data["subject"], data["session"], str(exc)))
                code = exc.code
    plugin = _plugin(settings) if usable else None
    work_flow_dir = settings.work_dir / workflow_name(settings.version)
    work_tops = [work_flow_dir, *(work_flow_dir.iterdir() if work_flow_dir.is_dir() else ())]
    guards.check_links(settings.output_dir, settings.bids_dir,
                       work_tops if not settings.reports_only else ())
    make_dirs(settings, work=bool(usable))
    tree = drv.OutputTree(settings.output_dir, settings.bids_dir)
    with guards.run_lock(settings.output_dir):
        drv.init_output_dir(tree)
        if settings.reports_only:
            return _rebuild_reports(settings, tree, subjects, skipped)
        for skip in skipped:
            LOGGER.error("%s", skip)
        if skipped:
            code = crashes_mod.most_specific(code, errors.EXIT_FAILED)
        LOGGER.info("settings recorded in %s", _write_settings(settings, tree))
        progress = RunProgress([d["subject"] for d in usable], interval_s=progress_interval_s,
                               status_line=status_line)
        if usable:
            with guards.work_locks(work_flow_dir, _work_lock_names(usable, settings)):
                code = crashes_mod.most_specific(
                    code, _run_workflow(settings, tree, usable, plugin, progress))
        _report_skipped(tree, skipped, progress)
        _summary(settings, progress, skipped)
    return code


def _rebuild_reports(settings: Settings, tree: drv.OutputTree, subjects, skipped) -> int:
    from niaffine.bidsapp.reports import write_subject_report

    labels = sorted({d["subject"] for d in subjects} | {s.subject for s in skipped})
    for label in labels:
        write_subject_report(tree, label)
    print(f"niaffine: {len(labels)} reports rebuilt in {settings.output_dir}")
    return errors.EXIT_OK


def _report_skipped(tree: drv.OutputTree, skipped, progress: RunProgress) -> None:
    from niaffine.bidsapp.reports import write_subject_report

    for subject in sorted({s.subject for s in skipped} - set(progress.done)):
        write_subject_report(tree, subject,
                             problems=[str(s) for s in skipped if s.subject == subject])


def _run_workflow(settings: Settings, tree: drv.OutputTree, usable, chosen, progress) -> int:
    """Build and run the graph; report each failed node in one line; return the exit code."""
    from niaffine.bidsapp.reports import write_subject_report
    from niaffine.bidsapp.workflow import init_niaffine_wf

    plugin, plugin_args = chosen
    workflow = init_niaffine_wf(settings, usable)
    if plugin in LOCAL_PLUGINS:
        # nipype waits this long between scheduling rounds (default 2 s): on a cached
        # rerun every level of the graph costs one round, so keep it short locally.
        workflow.config["execution"]["poll_sleep_duration"] = 0.2
    else:  # a batch job's result file may show up late on NFS (nipype waits 5 s, then fails)
        workflow.config["execution"]["job_finished_timeout"] = JOB_FINISHED_TIMEOUT_S
    if settings.device.startswith("cuda"):
        from niaffine.bidsapp.plugin import gpu_request, mark_gpu_nodes

        mark_gpu_nodes(workflow, plugin=plugin, gpu_sbatch_args=gpu_request(plugin_args))
    log_dir = settings.output_dir / "logs"
    before = _crash_files(log_dir)
    LOGGER.info("running %s with %s %s", workflow.name, plugin, plugin_args)
    plugin_args = {**plugin_args, "status_callback": progress}
    runner = plugin
    if plugin == "MultiProc":
        from niaffine.bidsapp.multiproc import ResilientMultiProcPlugin

        runner = ResilientMultiProcPlugin(plugin_args=plugin_args)
    elif plugin == "Linear":
        from niaffine.bidsapp.progress import ProgressLinearPlugin

        runner = ProgressLinearPlugin(plugin_args=plugin_args)
    else:  # a batch plugin does not tell its graph: the nodes before expansion, roughly
        progress.begin(len(workflow._get_all_nodes()))
    stopped = None
    try:
        with progress.running():
            workflow.run(plugin=runner, plugin_args=plugin_args)
    except Exception as exc:  # nipype re-raises node errors (first crash, or at the end)
        stopped = exc
    crashes = [crashes_mod.read_crash(path) for path in sorted(_crash_files(log_dir) - before)]
    failure = crashes_mod.write_error(stopped) if stopped is not None else None
    full = [crash for crash in crashes if crash.code == errors.EXIT_CANT_CREATE]
    if failure is not None or full:  # a full disk: no reports (they would fail too), one line
        raise failure or errors.BidsAppError(full[0].cause, errors.EXIT_CANT_CREATE)
    if stopped is not None and not crashes:  # no node to blame: the run itself failed
        LOGGER.error("the workflow stopped: %s", _last_line(stopped))
    for crash in crashes:
        LOGGER.error("%s", crash.line())
    for subject in progress.subjects:
        if subject not in progress.done:
            progress.failed.setdefault(subject, [])
    code = crashes_mod.exit_code(crashes)
    if progress.failed or stopped is not None:
        code = crashes_mod.most_specific(code, errors.EXIT_FAILED)
    for subject in progress.failed:
        problems = [crash.line().replace(str(crash.path), f"logs/{crash.path.name}")
                    for crash in crashes if _subject_of(crash.node) == subject]
        write_subject_report(tree, subject,
                             problems=problems or ["the subject's workflow did not finish"])
    return code


def _subject_of(node_name: str) -> str | None:
    match = SUBJECT.search(node_name)
    return match.group(1) if match else None


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _summary(settings: Settings, progress: RunProgress, skipped) -> None:
    ok = sorted(progress.done - set(progress.failed))
    print(f"\nniaffine {__version__}: {len(ok)} subject(s) processed, "
          f"{len(progress.failed)} failed, {len(skipped)} skipped "
          f"({time.monotonic() - progress.start:.0f} s)")
    for subject, nodes in sorted(progress.failed.items()):
        print(f"  FAILED sub-{subject}" + (f": {', '.join(nodes[:3])}" if nodes else ""))
    for skip in skipped:
        print(f"  SKIPPED {skip}")
    print(f"  derivatives: {settings.output_dir}")
    for subject in ok:
        print(f"  report: {settings.output_dir / f'sub-{subject}.html'}")
    if progress.failed:
        print(f"  crash files: {settings.output_dir / 'logs'}")


def run_group(settings: Settings) -> int:
    """The group level: QC table and dataset-wide report from the participant outputs."""
    from niaffine.bidsapp.reports import write_group_outputs

    if not any(settings.output_dir.glob("sub-*/**/*_xfm.json")):
        raise errors.BidsAppError(
            f"no participant-level outputs (*_xfm.json) in {settings.output_dir}: run the "
            "participant level first", errors.EXIT_NO_MATCH)
    guards.check_links(settings.output_dir, settings.bids_dir)
    tree = drv.OutputTree(settings.output_dir, settings.bids_dir)
    expected = settings.participant_label or sorted(
        p.name[4:] for p in settings.bids_dir.glob("sub-*") if p.is_dir())
    with guards.run_lock(settings.output_dir):
        drv.init_output_dir(tree)
        tsv, index, rows = write_group_outputs(tree, expected)
    flagged = sum(r["flags"] not in ("n/a", "missing") for r in rows)
    missing = [r["subject"] for r in rows if r["flags"] == "missing"]
    print(f"niaffine group: {len(rows) - len(missing)} registrations, {flagged} flagged"
          + (f", no outputs for {', '.join('sub-' + s for s in missing)}" if missing else "")
          + f"\n  table: {tsv}\n  report: {index}")
    return errors.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the BIDS-App; return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).
    """
    threads.configure_environment()  # before anything loads torch (see niaffine.threads)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, syntax errors
        return int(exc.code or 0)
    status_line = StatusLine()
    restore_logging = _setup_logging(args.verbose, status_line)
    try:
        with _sigterm_raises():
            settings = from_args(args)
            threads.configure(settings.omp_nthreads)  # inherited by MultiProc's workers
            if settings.analysis_level == "group":
                return run_group(settings)
            return run_participant(
                settings, status_line=status_line,
                progress_interval_s=settings.progress_interval_s)
    except errors.BidsAppError as exc:
        return _fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return _fail("interrupted", errors.EXIT_INTERRUPTED)
    except errors.Terminated:
        return _fail("terminated by SIGTERM", errors.EXIT_TERMINATED)
    except OSError as exc:
        failure = crashes_mod.write_error(exc)
        if failure is not None:
            return _fail(str(failure), failure.code)
        LOGGER.debug("I/O error", exc_info=True)
        return _fail(f"{exc.filename or 'I/O'}: {exc.strerror or exc}", errors.EXIT_IOERR)
    except Exception as exc:  # a bug: one line, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        return _fail(f"internal error, please report it: {type(exc).__name__}: "
                     f"{_last_line(exc)}" + ("" if args.verbose else " (-v shows the traceback)"),
                     errors.EXIT_SOFTWARE)
    finally:
        restore_logging()


def _fail(message: str, code: int) -> int:
    print(f"niaffine: error: {message} (exit code {code}: {errors.EXIT_CODES.get(code, '')})",
          file=sys.stderr)
    return code


def cli() -> None:
    """Console script ``niaffine``."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    cli()

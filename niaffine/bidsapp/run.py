# SPDX-License-Identifier: Apache-2.0
"""``niaffine bids_dir output_dir {participant,group}``: the BIDS-App entry point.

:func:`main` parses, checks, builds the dataset-wide graph, runs it and returns
the exit code (see :mod:`niaffine.bidsapp.errors`); it never calls ``sys.exit``.
:func:`cli` is the console script.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

from niaffine import __version__
from niaffine.bidsapp import derivatives as drv
from niaffine.bidsapp import errors
from niaffine.bidsapp.parser import build_parser
from niaffine.bidsapp.settings import Settings, from_args

LOGGER = logging.getLogger("niaffine.bidsapp")
_SUBJECT = re.compile(r"(?:^|\.)sub_([A-Za-z0-9]+?)(?:_ses_([A-Za-z0-9]+))?_(?:wf|ds|report|batch|anat_wf)\b")


class _StderrHandler(logging.StreamHandler):
    """Write to whatever ``sys.stderr`` is at the time (it may be swapped, e.g. by pytest)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(verbose: int):
    """Log niaffine (INFO: progress) and Nipype (by ``-v``) to stderr; return an undo."""
    from nipype import logging as nlogging

    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%H:%M:%S"))
    app, own = logging.getLogger("niaffine"), logging.getLogger("niaffine.bidsapp")
    nipype = [nlogging.getLogger(n) for n in ("nipype.workflow", "nipype.interface",
                                              "nipype.utils")]
    saved = (app.level, app.propagate, own.level, [lg.level for lg in nipype])
    app.addHandler(handler)
    app.setLevel(level)  # engine, interfaces: warnings unless -v
    own.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)  # progress: always
    app.propagate = False
    for logger in nipype:
        logger.setLevel(level)

    def undo():
        app.removeHandler(handler)
        app.setLevel(saved[0])
        app.propagate = saved[1]
        own.setLevel(saved[2])
        for logger, old in zip(nipype, saved[3]):
            logger.setLevel(old)

    return undo


class Progress:
    """Nipype ``status_callback`` that follows subjects (done / failed) and logs them."""

    def __init__(self, subjects: list[str]):
        self.subjects = sorted(set(subjects))
        self.done: set[str] = set()
        self.failed: dict[str, list[str]] = {}
        self.start = time.monotonic()

    def __call__(self, node, status: str) -> None:
        match = _SUBJECT.search(node.fullname)
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
            LOGGER.info("sub-%s done: %d/%d subjects finished, %d failed, %.0f s", subject,
                        len(self.done), len(self.subjects), len(self.failed),
                        time.monotonic() - self.start)


def _crash_files(log_dir: Path) -> set[Path]:
    return set(log_dir.glob("crash-*"))


def _input_error(crashes) -> str | None:
    """The first ``InputError`` message found in new crash files, if any."""
    for crash in sorted(crashes):
        text = crash.read_text(errors="replace")
        match = re.search(r"(?:niaffine\.errors\.)?InputError: (.+)", text)
        if match:
            return match.group(1).strip()
    return None


def crash_summary(crash: Path) -> tuple[str, str]:
    """``(node full name, last error line)`` of a Nipype text crash file."""
    text = crash.read_text(errors="replace")
    node = re.search(r"^Node: (\S+)", text, flags=re.MULTILINE)
    found = re.findall(r"^\s*([\w.]+(?:Error|Exception)\b.*)$", text, flags=re.MULTILINE)
    return (node.group(1) if node else crash.name), (found[-1].strip() if found else "")


def _write_settings(settings: Settings) -> Path:
    path = settings.output_dir / "logs" / f"niaffine-{settings.run_uuid}.toml"
    return drv.write_text(path, settings.to_toml())


def _plugin(settings: Settings):
    from niaffine.bidsapp.plugin import PluginError, resolve_plugin

    try:
        return resolve_plugin(settings.plugin, settings.plugin_args, settings.use_plugin,
                              nprocs=settings.nprocs, n_gpu_procs=settings.n_gpu_procs,
                              mem_gb=settings.mem_gb)
    except PluginError as exc:
        raise errors.BidsAppError(f"plugin settings: {exc}", errors.EXIT_USAGE) from None


def run_participant(settings: Settings) -> int:
    """The participant level: validate, query, build, run, sink, report."""
    from niaffine.bidsapp import queries
    from niaffine.bidsapp.reports import write_subject_report

    if not settings.skip_bids_validation:
        queries.validate_dataset(settings.bids_dir)
    layout = queries.load_layout(settings.bids_dir, settings.bids_database_dir)
    subjects, skipped = queries.collect_subjects(
        layout, participant_label=settings.participant_label,
        session_label=settings.session_label, modalities=settings.modalities,
        bids_filters=settings.bids_filters)
    drv.init_output_dir(settings.output_dir, settings.bids_dir)
    if settings.reports_only:
        labels = sorted({d["subject"] for d in subjects} | {s.subject for s in skipped})
        for label in labels:
            write_subject_report(settings.output_dir, label)
        print(f"niaffine: {len(labels)} reports rebuilt in {settings.output_dir}")
        return errors.EXIT_OK
    code = errors.EXIT_OK
    usable = []
    for data in subjects:  # cheap integrity checks: name the bad file before any work
        try:
            queries.check_inputs([data])
            usable.append(data)
        except errors.BidsAppError as exc:
            skipped.append(queries.Skipped(data["subject"], data["session"], str(exc)))
            code = exc.code
    for skip in skipped:
        LOGGER.error("%s", skip)
        code = code or errors.EXIT_FAILED
    settings_file = _write_settings(settings)
    LOGGER.info("settings recorded in %s", settings_file)
    progress = Progress([d["subject"] for d in usable])
    if usable:
        plugin, plugin_args = _plugin(settings)
        from niaffine.bidsapp.workflow import init_niaffine_wf

        workflow = init_niaffine_wf(settings, usable)
        if plugin in ("MultiProc", "LegacyMultiProc", "Linear"):
            # nipype waits this long between scheduling rounds (default 2 s): on a cached
            # rerun every level of the graph costs one round, so keep it short locally.
            workflow.config["execution"]["poll_sleep_duration"] = 0.2
        if settings.device.startswith("cuda"):
            from niaffine.bidsapp.plugin import gpu_request, mark_gpu_nodes

            mark_gpu_nodes(workflow, plugin=plugin, gpu_sbatch_args=gpu_request(plugin_args))
        log_dir = settings.output_dir / "logs"
        before = _crash_files(log_dir)
        LOGGER.info("running %s with %s %s", workflow.name, plugin, plugin_args)
        try:
            workflow.run(plugin=plugin, plugin_args={**plugin_args, "status_callback": progress})
        except Exception as exc:  # nipype re-raises node errors (first crash, or at the end)
            LOGGER.error("the workflow did not finish cleanly: %s", str(exc).splitlines()[0]
                         if str(exc) else type(exc).__name__)
            progress.failed.setdefault("?", [])
        new_crashes = _crash_files(log_dir) - before
        for subject in progress.subjects:
            if subject not in progress.done:
                progress.failed.setdefault(subject, [])
        progress.failed.pop("?", None)
        if progress.failed or new_crashes:
            message = _input_error(new_crashes)
            if message:
                LOGGER.error("corrupt input: %s", message)
                code = errors.EXIT_NO_DATA
            code = code or errors.EXIT_FAILED
        for subject in progress.failed:
            problems = []
            for crash in sorted(new_crashes):
                node, error = crash_summary(crash)
                if _SUBJECT.search(node) and _SUBJECT.search(node).group(1) == subject:
                    problems.append(f"{node} failed: {error} (crash file: logs/{crash.name})")
            write_subject_report(settings.output_dir, subject,
                                 problems=problems or ["the subject's workflow did not finish"])
    skipped_subjects = sorted({s.subject for s in skipped} - set(progress.done))
    for subject in skipped_subjects:
        write_subject_report(settings.output_dir, subject,
                             problems=[str(s) for s in skipped if s.subject == subject])
    _summary(settings, progress, skipped)
    return code


def _summary(settings: Settings, progress: Progress, skipped) -> None:
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
    drv.init_output_dir(settings.output_dir, settings.bids_dir)
    expected = settings.participant_label or sorted(
        p.name[4:] for p in settings.bids_dir.glob("sub-*") if p.is_dir())
    tsv, index, rows = write_group_outputs(settings.output_dir, expected)
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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, syntax errors
        return int(exc.code or 0)
    restore_logging = _setup_logging(args.verbose)
    try:
        settings = from_args(args)
        if settings.analysis_level == "group":
            return run_group(settings)
        return run_participant(settings)
    except errors.BidsAppError as exc:
        print(f"niaffine: error: {exc} (exit code {exc.code}: "
              f"{errors.EXIT_CODES.get(exc.code, '')})", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("niaffine: interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    finally:
        restore_logging()


def cli() -> None:
    """Console script ``niaffine``."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    cli()

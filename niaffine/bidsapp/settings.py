# SPDX-License-Identifier: Apache-2.0
"""Frozen run settings of the BIDS-App, their checks, and their TOML record.

:func:`from_args` turns parsed arguments into a :class:`Settings` object after
checking everything that can be checked without reading images: paths, their
placement, writability, the output spaces and the requested device. Each failed
check raises :class:`~niaffine.bidsapp.errors.BidsAppError` with its exit code.
Nothing is created here: :func:`make_dirs` creates the folders once every check
of the run (the BIDS queries included) has passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import uuid
from pathlib import Path

from niaffine import __version__, choices
from niaffine import spaces as sp
from niaffine.bidsapp import errors
from niaffine.bidsapp.parser import ANALYSIS_LEVELS
from niaffine.io import is_inside
from niaffine.spaces import Space, template_label  # noqa: F401  (template_label: re-export)
from niaffine.threads import available_cpus

LOGGER = logging.getLogger("niaffine.bidsapp")
#: The default ``--output-spaces`` (:data:`niaffine.choices.DEFAULT_SPACES`), parsed.
DEFAULT_SPACES = sp.parse_spaces(choices.DEFAULT_SPACES)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one run needs to know, immutable once checked.

    Paths are absolute. ``spaces`` holds every output space (:class:`niaffine.spaces.Space`,
    ``T1w`` first): the workflows take these. ``output_spaces``, ``template_space``,
    ``template`` and ``template_mask`` are a single-template summary of the first template
    space (logged with the run's settings; ``template_space`` also tells whether
    ``--batch-size`` has anything to batch): ``output_spaces`` is ``("T1w", <its name>)``,
    ``template_space`` its name (``None`` when only T1w space is requested), ``template`` a
    path for a user template or a TemplateFlow template (the image on the space's output
    grid, ``template_mask`` its brain mask), ``None`` for the built-in MNI152NLin2009aSym.
    ``progress_interval_s`` is ``--progress-interval`` (``None``:
    ``$NIAFFINE_PROGRESS_INTERVAL``, else 25 s; see :mod:`niaffine.bidsapp.progress`).
    ``ignored_options`` are the fMRIPrep options accepted without effect.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filters: dict = dataclasses.field(default_factory=dict)
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    modalities: tuple[str, ...] = choices.MODALITIES
    spaces: tuple[Space, ...] = DEFAULT_SPACES
    output_spaces: tuple[str, ...] = choices.DEFAULT_SPACES
    template_space: str | None = sp.BUILTIN_TEMPLATE
    template: Path | None = None
    template_mask: Path | None = None
    dof: int = choices.DEFAULT_DOF
    dof_coreg: int = choices.DEFAULT_DOF_COREG
    metric: str = "auto"
    resample_bold: bool = False
    hmc: bool = True
    reports_only: bool = False
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    device: str = "cpu"
    n_gpu_procs: int = 1
    batch_size: int = 1
    plugin: str | None = None
    plugin_args: str | None = None
    use_plugin: Path | None = None
    stop_on_first_crash: bool = False
    random_seed: int = 0
    progress_interval_s: float | None = None
    ignored_options: tuple[str, ...] = ()
    verbose: int = 0
    run_uuid: str = ""
    version: str = __version__

    def to_dict(self) -> dict:
        """Return a JSON/TOML-safe dictionary (paths as strings, no ``None``)."""
        out = {}
        for field in dataclasses.fields(self):
            value = _plain(getattr(self, field.name))
            if value is not None:
                out[field.name] = value
        return out

    def to_toml(self) -> str:
        """Serialise to TOML (flat table ``[niaffine]``; filters as a JSON string)."""
        lines = ["# niaffine run settings", "[niaffine]"]
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                value = json.dumps(value, sort_keys=True)
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _plain(value):
    if isinstance(value, Path | Space):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _toml_value(value) -> str:
    """Format a scalar or a list of scalars as TOML.

    >>> _toml_value(True), _toml_value(3), _toml_value(["a", 'b"c'])
    ('true', '3', '["a", "b\\\\"c"]')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def check_output_placement(bids_dir: Path, output_dir: Path, work_dir: Path) -> None:
    """Refuse output/work directories that would write into the input dataset.

    ``output_dir`` may be inside ``bids_dir`` only under ``bids_dir/derivatives/``
    (the BIDS convention); ``work_dir`` may never be inside ``bids_dir``.

    Raises
    ------
    BidsAppError
        With code ``EXIT_USAGE`` (64).
    """
    if output_dir == bids_dir:
        raise errors.BidsAppError(
            f"output_dir is the input dataset ({bids_dir}); niaffine never writes into "
            "bids_dir: use e.g. <bids_dir>/derivatives/niaffine", errors.EXIT_USAGE)
    if is_inside(output_dir, bids_dir) and not is_inside(output_dir, bids_dir / "derivatives"):
        raise errors.BidsAppError(
            f"output_dir {output_dir} is inside bids_dir {bids_dir} but not under "
            f"{bids_dir / 'derivatives'}", errors.EXIT_USAGE)
    if is_inside(bids_dir, output_dir):
        raise errors.BidsAppError(
            f"output_dir {output_dir} contains bids_dir {bids_dir}", errors.EXIT_USAGE)
    if is_inside(work_dir, bids_dir):
        raise errors.BidsAppError(
            f"work dir {work_dir} is inside bids_dir {bids_dir}; niaffine never writes into "
            "bids_dir: pass -w/--work-dir outside the dataset", errors.EXIT_USAGE)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, what: str) -> None:
    """Prove that ``path`` can be created and written, without creating it.

    An existing folder gets a one-byte probe file (written and removed: a full file system
    fails here); a missing one needs its nearest existing ancestor to be a writable folder.
    Nothing is left behind either way, so a run that stops at a later check leaves no
    empty folders.

    Raises
    ------
    BidsAppError
        With code ``EXIT_CANT_CREATE`` (73).
    """
    def refuse(reason: str):
        return errors.BidsAppError(f"cannot write to {what} {path}: {reason}",
                                   errors.EXIT_CANT_CREATE)

    if not path.exists():
        ancestor = _existing_ancestor(path)
        if not ancestor.is_dir():
            raise refuse(f"{ancestor} is not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            reason = "Read-only file system" if _read_only(ancestor) else "Permission denied"
            raise refuse(f"{reason} ({ancestor})")
        return
    if not path.is_dir():
        raise refuse("not a folder")
    probe = path / f".niaffine-write-test-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"x")
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def make_dirs(settings: Settings, *, work: bool = True) -> None:
    """Create ``output_dir`` and, with ``work``, the work dir (not for ``--reports-only``).

    Raises
    ------
    BidsAppError
        With code ``EXIT_CANT_CREATE`` (73).
    """
    folders = [("output_dir", settings.output_dir)]
    if work and settings.analysis_level == "participant" and not settings.reports_only:
        folders.append(("work dir", settings.work_dir))
    for what, path in folders:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.BidsAppError(f"cannot write to {what} {path}: {exc.strerror or exc}",
                                      errors.EXIT_CANT_CREATE) from None


def resolve_device(device: str) -> str:
    """Resolve ``auto``; refuse CUDA where torch has none (:mod:`niaffine.devices`).

    Raises
    ------
    BidsAppError
        With code ``EXIT_UNAVAILABLE`` (69) when CUDA is requested but unavailable, or
        ``EXIT_USAGE_ARGPARSE`` (2) for an unknown device string.
    """
    from niaffine.devices import DeviceError
    from niaffine.devices import resolve_device as _resolve
    from niaffine.errors import DeviceUnavailableError

    try:
        return str(_resolve(device))
    except DeviceError as exc:
        raise errors.BidsAppError(str(exc), errors.EXIT_USAGE_ARGPARSE) from None
    except DeviceUnavailableError as exc:
        raise errors.BidsAppError(str(exc), errors.EXIT_UNAVAILABLE) from None


def _spaces(args, *, resolve: bool) -> dict:
    """Parse ``--output-spaces`` into Space objects and the single-template view.

    With ``resolve``, every template space must be available locally (TemplateFlow home
    or built in) at the resolutions it needs.

    Raises
    ------
    BidsAppError
        With code ``EXIT_USAGE`` (64), one line.
    """
    try:
        spaces = sp.parse_spaces(args.output_spaces, template_mask=args.template_mask)
        if resolve:
            sp.check_spaces(spaces)
        first = next((space for space in spaces if space.is_template), None)
        template, mask = None, None
        if first is not None and first.kind == "file":
            template, mask = first.path, first.mask
        elif first is not None and resolve:
            found = sp.resolve_template(first, first.output_res())
            if found.source == "templateflow":
                template, mask = found.t1w, found.mask
    except sp.SpaceError as exc:
        raise errors.BidsAppError(str(exc), errors.EXIT_USAGE) from None
    return {"spaces": spaces, "template": template, "template_mask": mask,
            "template_space": first.name if first else None,
            "output_spaces": ("T1w",) + ((first.name,) if first else ())}


def _selection(args) -> dict:
    """Modalities and filters, with fMRIPrep's ``--anat-only``, ``--ignore``, ``--task-id``."""
    drop = {"t2w": "T2w", "flair": "FLAIR"}
    left_out = {drop[what] for what in args.ignore if what in drop}
    if args.anat_only:
        left_out |= {"bold", "dwi"}
    modalities = tuple(m for m in dict.fromkeys(args.modalities) if m not in left_out)
    filters = {key: dict(value) for key, value in (args.bids_filters or {}).items()}
    if args.task_id:
        given = filters.setdefault("bold", {}).setdefault("task", args.task_id)
        if given != args.task_id:
            raise errors.BidsAppError(
                f"--task-id {args.task_id} conflicts with the filter file's bold task "
                f"{given!r}", errors.EXIT_USAGE)
    return {"modalities": modalities, "bids_filters": filters}


def _ignored(args) -> tuple[str, ...]:
    """The fMRIPrep options given that change nothing; refuse ``--boilerplate-only``."""
    if args.boilerplate_only:
        raise errors.BidsAppError(
            "--boilerplate-only: niaffine writes no citation boilerplate (the reports list "
            "every registration's settings); drop the option", errors.EXIT_USAGE)
    ignored = list(args.ignored or [])
    if args.output_layout != "bids":
        ignored.append(f"--output-layout {args.output_layout}")
    if ignored:
        LOGGER.warning("fMRIPrep options accepted and ignored (niaffine has no use for them): "
                       "%s", " ".join(ignored))
    return tuple(ignored)


def from_args(args, *, check_device: bool = True) -> Settings:
    """Check parsed arguments and freeze them into :class:`Settings`.

    Parameters
    ----------
    args : argparse.Namespace
        From :func:`niaffine.bidsapp.parser.build_parser`.
    check_device : bool
        Resolve ``--device`` (imports torch); only the participant level needs it.

    Raises
    ------
    BidsAppError
        Codes 16 (no dataset), 17 (level), 64 (placement/options), 69 (device), 73 (unwritable).
    """
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise errors.BidsAppError(
            f"unknown analysis level {args.analysis_level!r}: use one of "
            f"{', '.join(ANALYSIS_LEVELS)}", errors.EXIT_ANALYSIS_LEVEL)
    bids_dir = args.bids_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise errors.BidsAppError(f"bids_dir {bids_dir} does not exist or is not a folder",
                                  errors.EXIT_BIDS_INVALID)
    if not (bids_dir / "dataset_description.json").is_file():
        raise errors.BidsAppError(
            f"{bids_dir} is not a BIDS dataset: dataset_description.json is missing",
            errors.EXIT_BIDS_INVALID)
    output_dir = args.output_dir.expanduser().resolve()
    work_dir = (args.work_dir or Path.cwd() / "work").expanduser().resolve()
    check_output_placement(bids_dir, output_dir, work_dir)
    database_dir = (args.bids_database_dir.expanduser().resolve()
                    if args.bids_database_dir else None)
    if database_dir is not None and is_inside(database_dir, bids_dir):
        raise errors.BidsAppError(
            f"--bids-database-dir {database_dir} is inside bids_dir {bids_dir}; niaffine never "
            "writes into bids_dir", errors.EXIT_USAGE)
    participant = args.analysis_level == "participant"
    device = args.device
    if check_device and participant and not args.reports_only:
        device = resolve_device(device)  # before anything is created or written
    spaces = _spaces(args, resolve=participant and not args.reports_only)
    ignored = _ignored(args)
    if args.use_plugin is not None and not Path(args.use_plugin).is_file():
        raise errors.BidsAppError(f"plugin file not found: {args.use_plugin}", errors.EXIT_USAGE)
    check_writable(output_dir, "output_dir")
    if participant and not args.reports_only:
        check_writable(work_dir, "work dir")
    nprocs = args.nprocs or available_cpus()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=args.analysis_level,
        work_dir=work_dir,
        participant_label=tuple(dict.fromkeys(args.participant_label or ())),
        session_label=tuple(dict.fromkeys(args.session_label or ())),
        skip_bids_validation=bool(args.skip_bids_validation),
        bids_database_dir=database_dir,
        **_selection(args),
        **spaces,
        dof=args.dof,
        dof_coreg=args.dof_coreg,
        metric=args.metric,
        resample_bold=bool(args.resample_bold),
        hmc=bool(getattr(args, "hmc", True)),
        reports_only=bool(args.reports_only),
        nprocs=nprocs,
        omp_nthreads=args.omp_nthreads or min(nprocs, 8),
        mem_gb=args.mem_gb,
        device=device,
        n_gpu_procs=args.n_gpu_procs,
        batch_size=args.batch_size,
        plugin=args.plugin,
        plugin_args=args.plugin_args,
        use_plugin=Path(args.use_plugin).resolve() if args.use_plugin else None,
        stop_on_first_crash=bool(args.stop_on_first_crash),
        random_seed=args.random_seed,
        progress_interval_s=args.progress_interval,
        ignored_options=ignored,
        verbose=args.verbose,
        run_uuid=f"{stamp}_{uuid.uuid4().hex[:8]}",
    )

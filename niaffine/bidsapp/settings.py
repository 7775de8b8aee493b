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
import re
import uuid
from pathlib import Path

from niaffine import __version__
from niaffine.bidsapp import errors
from niaffine.bidsapp.parser import ANALYSIS_LEVELS
from niaffine.io import is_inside
from niaffine.threads import available_cpus

LOGGER = logging.getLogger("niaffine.bidsapp")
BUILTIN_TEMPLATES = ("MNI152NLin2009aSym",)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one run needs to know, immutable once checked.

    Paths are absolute. ``template_space`` is ``None`` when only T1w space is
    requested; ``template`` is a path only for a user template.
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
    modalities: tuple[str, ...] = ("T2w", "FLAIR", "PDw", "bold", "dwi")
    output_spaces: tuple[str, ...] = ("T1w", "MNI152NLin2009aSym")
    template_space: str | None = "MNI152NLin2009aSym"
    template: Path | None = None
    template_mask: Path | None = None
    dof: int = 12
    dof_coreg: int = 6
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
    if isinstance(value, Path):
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


def template_label(path: Path) -> str:
    """Space label of a user template file: ``tpl-<label>`` if present, else the stem.

    Examples
    --------
    >>> template_label(Path("/x/tpl-MyTpl_res-1_T1w.nii.gz"))
    'MyTpl'
    >>> template_label(Path("/x/my_template-v2.nii"))
    'mytemplatev2'
    """
    name = path.name
    match = re.search(r"(?:^|_)tpl-([A-Za-z0-9]+)", name)
    if match:
        return match.group(1)
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    label = re.sub(r"[^A-Za-z0-9]", "", stem).lower()
    return label or "custom"


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


def _spaces(spaces, template_mask):
    """Split ``--output-spaces`` into (labels, template label, user template path)."""
    labels, template_space, template = [], None, None
    for space in spaces:
        if space == "T1w" or space in BUILTIN_TEMPLATES:
            label = space
        elif Path(space).is_file():
            template = Path(space).resolve()
            label = template_label(template)
        else:
            raise errors.BidsAppError(
                f"unknown output space {space!r}: use T1w, {', '.join(BUILTIN_TEMPLATES)} or "
                "the path of a template NIfTI", errors.EXIT_USAGE)
        if label != "T1w":
            if template_space is not None and template_space != label:
                raise errors.BidsAppError(
                    f"only one template space per run (got {template_space} and {label})",
                    errors.EXIT_USAGE)
            template_space = label
        if label not in labels:
            labels.append(label)
    if "T1w" not in labels:
        labels.insert(0, "T1w")  # the T1w-space derivatives are always written
    if template_mask is not None and template is None:
        raise errors.BidsAppError(
            "--template-mask needs a user template path in --output-spaces", errors.EXIT_USAGE)
    if template_mask is not None and not Path(template_mask).is_file():
        raise errors.BidsAppError(f"template mask not found: {template_mask}", errors.EXIT_USAGE)
    return tuple(labels), template_space, template


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
    spaces, template_space, template = _spaces(args.output_spaces, args.template_mask)
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
        bids_filters=dict(args.bids_filters or {}),
        skip_bids_validation=bool(args.skip_bids_validation),
        bids_database_dir=database_dir,
        modalities=tuple(dict.fromkeys(args.modalities)),
        output_spaces=spaces,
        template_space=template_space,
        template=template,
        template_mask=Path(args.template_mask).resolve() if args.template_mask else None,
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
        verbose=args.verbose,
        run_uuid=f"{stamp}_{uuid.uuid4().hex[:8]}",
    )

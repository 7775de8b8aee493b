# SPDX-License-Identifier: Apache-2.0
"""BIDS queries: validate the input dataset, index it, select subjects and their images.

The result of :func:`collect_subjects` is a list of plain ``subject_data`` dicts,
exactly what ``init_single_subject_wf`` takes, plus a list of subjects skipped
with the reason (e.g. no T1w). :func:`check_nifti` is a cheap pre-flight check
that names corrupt or truncated files before any workflow starts.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from niaffine import choices
from niaffine.bidsapp import errors

LOGGER = logging.getLogger("niaffine.bidsapp")
#: BIDS data type (folder) of each modality coregistered to the T1w
#: (:data:`niaffine.choices.DATATYPES`).
DATATYPES = {m: choices.DATATYPES[m] for m in choices.MODALITIES}
NIFTI = [".nii", ".nii.gz"]
#: Keys of ``--bids-filter-file``: the data types niaffine queries.
FILTER_KEYS = ("t1w", "t2w", "flair", "pdw", "bold", "dwi")
#: Dimensions each image type may have (trailing singleton dimensions ignored).
NDIM = {suffix: (3, 4) if suffix in choices.SERIES_MODALITIES else (3,)
        for suffix in choices.DATATYPES}
#: Series suffixes: their sidecar metadata is collected (:data:`SERIES_METADATA`).
SERIES = choices.SERIES_MODALITIES
#: Sidecar keys of a series kept in ``subject_data`` (and copied into its derivatives).
SERIES_METADATA = ("RepetitionTime", "TaskName", "SliceTiming", "PhaseEncodingDirection",
                   "TotalReadoutTime", "EchoTime")
#: Folders never indexed: they are not raw data.
IGNORE = ("code", "derivatives", "sourcedata", "stimuli", "models")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A subject (and session) that cannot be processed, and why."""

    subject: str
    session: str | None
    reason: str

    def __str__(self) -> str:
        ses = f" ses-{self.session}" if self.session else ""
        return f"sub-{self.subject}{ses}: {self.reason}"


def find_validator() -> str | None:
    """Path of ``bids-validator-deno`` (next to this Python first, then on ``PATH``)."""
    local = Path(sys.executable).parent / "bids-validator-deno"
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("bids-validator-deno")


def validate_dataset(bids_dir, *, timeout: float = 600.0) -> None:
    """Run the BIDS validator on ``bids_dir``; raise exit code 16 on errors.

    Without ``bids-validator-deno`` installed the check is skipped with a warning
    (pybids still refuses folders without ``dataset_description.json``).
    """
    validator = find_validator()
    if validator is None:
        LOGGER.warning("bids-validator-deno not found: skipping BIDS validation "
                       "(pip install bids-validator-deno)")
        return
    cmd = [validator, "--ignoreWarnings", str(bids_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        LOGGER.warning("BIDS validator could not run (%s): skipping validation", exc)
        return
    if proc.returncode != 0:
        report = (proc.stdout + proc.stderr).strip().splitlines()
        errs = [line.strip() for line in report if "[ERROR]" in line or "ERR" in line]
        summary = "; ".join(errs[:3]) or (report[-1] if report else "")
        raise errors.BidsAppError(
            f"BIDS validation failed for {bids_dir}: {summary} (run bids-validator-deno on it "
            "for details, or pass --skip-bids-validation)", errors.EXIT_BIDS_INVALID)
    LOGGER.info("BIDS validation passed: %s", bids_dir)


def load_layout(bids_dir, database_dir=None):
    """Index ``bids_dir`` with pybids (reusing ``database_dir`` when it holds an index)."""
    from bids import BIDSLayout, BIDSLayoutIndexer
    from bids.exceptions import BIDSValidationError

    kwargs = {}
    if database_dir is not None:
        Path(database_dir).mkdir(parents=True, exist_ok=True)
        kwargs["database_path"] = str(database_dir)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return BIDSLayout(str(bids_dir), validate=False,
                          indexer=BIDSLayoutIndexer(validate=False, ignore=list(IGNORE)),
                          **kwargs)
    except (BIDSValidationError, ValueError) as exc:
        raise errors.BidsAppError(f"{bids_dir} is not a BIDS dataset: {exc}",
                                  errors.EXIT_BIDS_INVALID) from None
    except SQLAlchemyError as exc:  # a damaged or foreign --bids-database-dir
        reason = str(exc).splitlines()[0]
        raise errors.BidsAppError(
            f"--bids-database-dir {database_dir} holds no usable pybids index ({reason}): "
            "remove it, or give another folder", errors.EXIT_USAGE) from None


def check_filters(layout, bids_filters) -> dict:
    """Validate ``--bids-filter-file`` against the layout; return pybids-ready queries.

    Keys must be niaffine's data types (:data:`FILTER_KEYS`), their entities ones the layout
    knows (``subject`` and ``session`` excepted: use the label options). Values are strings,
    numbers, booleans, ``null`` (the entity must be absent) or ``"*"`` (any value, but
    present), or lists of strings and numbers, as in fMRIPrep's filter files.

    Raises
    ------
    BidsAppError
        ``EXIT_USAGE`` (64), naming the data type and the entity.
    """
    from bids.layout import Query

    def refuse(message):
        return errors.BidsAppError(f"--bids-filter-file: {message}", errors.EXIT_USAGE)

    known = set(layout.get_entities())
    out = {}
    for key, query in (bids_filters or {}).items():
        kind = str(key).lower()
        if kind not in FILTER_KEYS:
            raise refuse(f"unknown data type {key!r} (use {', '.join(FILTER_KEYS)})")
        if not isinstance(query, dict):
            raise refuse(f"{key!r} must map entities to values, got {query!r}")
        checked = {}
        for entity, value in query.items():
            if entity in ("subject", "session"):
                raise refuse(f"{key!r} filters on {entity!r}: use --participant-label / "
                             "--session-label instead")
            if entity not in known:
                raise refuse(f"unknown entity {entity!r} in {key!r} (entities of this "
                             f"dataset: {', '.join(sorted(known - {'subject', 'session'}))})")
            if value is None:
                value = Query.NONE
            elif value == "*":
                value = Query.ANY
            elif isinstance(value, list):
                if not value or not all(isinstance(v, str | int | float) for v in value):
                    raise refuse(f"{key}.{entity}: a list must hold strings or numbers")
            elif not isinstance(value, str | int | float | bool):
                raise refuse(f"{key}.{entity}: unsupported value {value!r}")
            checked[entity] = value
        out[kind] = checked
    return out


def _query(layout, subject, session, suffix, datatype, filters):
    from bids.layout import Query

    query = {"subject": subject, "suffix": suffix, "datatype": datatype, "extension": NIFTI,
             "session": session if session else Query.NONE}
    query.update(filters.get(suffix.lower(), {}))
    try:
        return sorted(layout.get(return_type="file", **query))
    except (ValueError, TypeError) as exc:  # a filter value pybids cannot use
        raise errors.BidsAppError(f"--bids-filter-file: pybids refused the {suffix} query: "
                                  f"{str(exc).splitlines()[0]}", errors.EXIT_USAGE) from None


def collect_subjects(layout, *, participant_label=(), session_label=(), modalities=None,
                     bids_filters=None) -> tuple[list[dict], list[Skipped]]:
    """Select the subjects/sessions to process and their images.

    Returns
    -------
    subjects : list of dict
        ``subject_data`` dicts for ``init_single_subject_wf``.
    skipped : list of Skipped
        Subjects/sessions without a usable T1w.

    Raises
    ------
    BidsAppError
        Code 18 when labels name subjects or sessions that do not exist, when a filter of
        ``--bids-filter-file`` (any data type: ``t1w``, ``bold``...) matches no image of the
        selected subjects and sessions, as fMRIPrep refuses a BOLD filter that finds no
        BOLD run, or when the selection is empty. A filter of a data type left out of
        ``modalities`` is not used (a warning says so).
    """
    filters = check_filters(layout, bids_filters)
    modalities = tuple(DATATYPES) if modalities is None else tuple(modalities)
    available = sorted(layout.get_subjects())
    if not available:
        raise errors.BidsAppError(f"no subjects (sub-*) found in {layout.root}",
                                  errors.EXIT_NO_MATCH)
    chosen = list(participant_label) or available
    missing = [s for s in chosen if s not in available]
    if missing:
        raise errors.BidsAppError(
            f"participant label(s) {', '.join('sub-' + s for s in missing)} match no subject "
            f"in {layout.root} (found: {', '.join(available[:10])}"
            f"{', ...' if len(available) > 10 else ''})", errors.EXIT_NO_MATCH)
    queried = {"t1w", *(m.lower() for m in modalities)}
    for kind in sorted(set(filters) - queried):
        LOGGER.warning("--bids-filter-file: the %s filter is not used (%s is not among "
                       "--modalities)", kind, kind)
    matched = dict.fromkeys(set(filters) & queried, 0)
    subjects, skipped, sessions_seen = [], [], set()
    for sub in chosen:
        sessions = sorted(layout.get_sessions(subject=sub)) or [None]
        sessions_seen.update(s for s in sessions if s)
        if session_label:
            sessions = [s for s in sessions if s in session_label]
        for ses in sessions:
            t1w = _query(layout, sub, ses, "T1w", "anat", filters)
            if "t1w" in matched:
                matched["t1w"] += len(t1w)
            if not t1w:
                reason = "no T1w image matches the t1w filter" if "t1w" in filters else \
                    "no T1w image found"
                skipped.append(Skipped(sub, ses, f"{reason}; skipped"))
                continue
            if len(t1w) > 1:
                LOGGER.warning("sub-%s%s: %d T1w images, using %s (select with "
                               "--bids-filter-file)", sub, f" ses-{ses}" if ses else "",
                               len(t1w), Path(t1w[0]).name)
            images = []
            for suffix in modalities:
                found = _query(layout, sub, ses, suffix, DATATYPES[suffix], filters)
                if suffix.lower() in matched:
                    matched[suffix.lower()] += len(found)
                for path in found:
                    image = {"path": path, "suffix": suffix, "bvals": None}
                    if suffix == "dwi":
                        image["bvals"] = layout.get_bval(path) or None
                        image["bvecs"] = layout.get_bvec(path) or None
                    if suffix in SERIES:
                        image["metadata"] = _series_metadata(layout, path)
                    images.append(image)
            subjects.append({"subject": sub, "session": ses, "t1w": t1w[0], "images": images})
    _check_filters_matched(layout, chosen, matched, bids_filters)
    unknown = [s for s in session_label if s not in sessions_seen]
    if session_label and unknown:
        raise errors.BidsAppError(
            f"session label(s) {', '.join('ses-' + s for s in unknown)} match no session of "
            f"the selected subjects", errors.EXIT_NO_MATCH)
    if not subjects and not skipped:
        raise errors.BidsAppError("the selection (labels and filters) matches no data",
                                  errors.EXIT_NO_MATCH)
    return subjects, skipped


def _series_metadata(layout, path) -> dict:
    """The :data:`SERIES_METADATA` keys of a series' sidecars (BIDS inheritance applied)."""
    metadata = layout.get_metadata(path) or {}
    return {key: metadata[key] for key in SERIES_METADATA if key in metadata}


def _check_filters_matched(layout, chosen, matched: dict, bids_filters) -> None:
    """Exit 18 naming the first filter that matched no image of the selected subjects."""
    import json

    for kind in sorted(k for k, count in matched.items() if count == 0):
        suffix = next(s for s in ("T1w", *DATATYPES) if s.lower() == kind)
        query = next(v for k, v in (bids_filters or {}).items() if str(k).lower() == kind)
        unfiltered = layout.get(return_type="file", subject=chosen, suffix=suffix,
                                datatype=DATATYPES.get(suffix, "anat"), extension=NIFTI)
        raise errors.BidsAppError(
            f"--bids-filter-file: the {kind} filter {json.dumps(query)} matches no {suffix} "
            f"image of the selected subjects ({len(unfiltered)} {suffix} image(s) without "
            "it); fix the filter, or leave the data type out with --modalities",
            errors.EXIT_NO_MATCH)


def _gzip_isize(path: Path) -> int:
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return int.from_bytes(handle.read(4), "little")


def _gzip_length(path: Path) -> int:
    total = 0
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            total += len(chunk)
    return total


def check_nifti(path, suffix: str | None = None) -> None:
    """Cheap integrity check of a NIfTI file: header, geometry, size of the data block.

    For ``.nii.gz`` the gzip trailer's length field is compared with the expected
    size; only if it disagrees is the file decompressed (multi-member gzip) to
    confirm. Reads no image data otherwise. The header must describe an image of
    its type's dimensions (:data:`NDIM`, by ``suffix``) with a plausible geometry
    (:func:`niaffine.io.check_geometry`: voxel sizes, field of view).

    Raises
    ------
    BidsAppError
        Code 65 naming the file.
    """
    import nibabel as nb

    from niaffine.errors import InputError
    from niaffine.io import check_geometry, spatial_shape

    path = Path(path)
    try:
        img = nb.load(str(path))
        header = img.header
        offset = getattr(img.dataobj, "offset", None) or header.get_data_offset()
        expected = int(offset) + int(
            header.get_data_dtype().itemsize * max(1, int(_prod(img.shape))))
        if path.name.endswith(".gz"):
            size = _gzip_isize(path)
            if size != expected % (1 << 32) and _gzip_length(path) < expected:
                raise ValueError(f"data truncated (expected {expected} bytes)")
        elif path.stat().st_size < expected:
            raise ValueError(f"data truncated ({path.stat().st_size} of {expected} bytes)")
    except Exception as exc:  # nibabel raises many types on bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise errors.BidsAppError(f"corrupt or truncated NIfTI file {path}: {reason}",
                                  errors.EXIT_NO_DATA) from None
    role = f"{suffix} image" if suffix else "image"
    try:
        shape = spatial_shape(img.shape, NDIM.get(suffix, (2, 3, 4)), path=path, role=role)
        check_geometry(img.affine, shape, path=path, role=role)
    except InputError as exc:
        raise errors.BidsAppError(str(exc), errors.EXIT_NO_DATA) from None


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= int(n)
    return out


def check_series(image: dict) -> None:
    """What realigning a series needs: 4D, finite volumes; for DWI, b-values and b-vectors
    that match the volumes, with no zero-norm vector on a diffusion-weighted volume
    (:mod:`niaffine.series_io`'s checks, which read the data once).

    Raises
    ------
    BidsAppError
        Code 65, one line naming the file.
    """
    from niaffine.errors import InputError
    from niaffine.series_io import load_series, read_bvals, read_bvecs

    suffix = image["suffix"]
    try:
        series = load_series(image["path"], role=f"{suffix} series")
        if suffix == "dwi":
            missing = [kind for kind in ("bvals", "bvecs") if not image.get(kind)]
            if missing:
                raise InputError(f"{image['path']}: no .{missing[0][:-1]} file found for "
                                 "this DWI series")
            bvals = read_bvals(image["bvals"], series.shape[3])
            read_bvecs(image["bvecs"], series.shape[3], bvals)
    except InputError as exc:
        raise errors.BidsAppError(str(exc), errors.EXIT_NO_DATA) from None


def check_inputs(subjects: list[dict], *, series: bool = False) -> None:
    """Run :func:`check_nifti` on every T1w and image of the selection (and, with
    ``series``, :func:`check_series` on every BOLD and DWI series)."""
    for data in subjects:
        check_nifti(data["t1w"], "T1w")
        for image in data["images"]:
            check_nifti(image["path"], image["suffix"])
            if series and image["suffix"] in SERIES:
                check_series(image)

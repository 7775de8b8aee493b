# SPDX-License-Identifier: Apache-2.0
"""BIDS-Derivatives writer: names, sidecars, dataset files, atomic writes.

Every file is written under a hidden temporary name in its final folder
(``.tmp-<12 hex>-<name>``, :func:`niaffine.io.atomic_path`) and then renamed with
:func:`os.replace`, which is atomic on POSIX file systems: a reader (or an
interrupted run) sees either the old file or the complete new one, never half of
it. An :class:`OutputTree` makes every write of a run refuse destinations inside
the raw dataset. Files shared by several participant jobs (``dataset_description.json``,
``.bidsignore``) are merged under an exclusive lock on ``output_dir/.niaffine.lock``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
from pathlib import Path

from niaffine import __version__, choices
from niaffine.bidsapp import errors
from niaffine.io import atomic_path, is_inside

LOGGER = logging.getLogger("niaffine.bidsapp")
#: The BIDS data type (folder) of each suffix (:data:`niaffine.choices.DATATYPES`).
DATATYPE = choices.DATATYPES
#: What BIDS has no name for yet: transforms, their sidecars, 3D references of series,
#: confounds tables (not in the validator's schema), the gradient tables of derivative DWI,
#: figures, logs, group QC. (Folders without a trailing slash: the validator needs that.)
BIDSIGNORE = ("*_xfm.txt", "*_xfm.json", "*_boldref.*", "*_dwiref.*",
              "*_desc-confounds_timeseries.*", "*_dwi.bval", "*_dwi.bvec", "figures", "logs",
              "group", "*.html")
_NAME = re.compile(r"^(?P<entities>.+?)_(?P<suffix>[A-Za-z0-9]+)(?P<ext>\.nii(\.gz)?|\.[a-z]+)$")


# --------------------------------------------------------------------------- atomic I/O
def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; return the path.

    Examples
    --------
    >>> import tempfile
    >>> target = write_text(Path(tempfile.mkdtemp()) / "a.txt", "done")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('done', ['a.txt'])
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, data: dict) -> Path:
    """Write ``data`` as indented, key-sorted JSON atomically; return the path."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def copy_file(src, dst, *, repetition_time: float | None = None) -> Path:
    """Copy ``src`` to ``dst`` atomically; a NIfTI gets its units set on the way.

    A NIfTI destination is rewritten (nibabel) when the extensions' compression differs, when
    its spatial units are not millimetres, its time units (4D) not seconds, or its time step
    not ``repetition_time``; otherwise it is copied byte for byte.

    Parameters
    ----------
    src, dst : path-like
        Source (e.g. in a Nipype work folder) and derivative path.
    repetition_time : float, optional
        The 4D image's time step (s), e.g. the raw sidecar's ``RepetitionTime``.

    Examples
    --------
    >>> import tempfile, nibabel as nb, numpy as np
    >>> base = Path(tempfile.mkdtemp())
    >>> nb.save(nb.Nifti1Image(np.zeros((2, 2, 2, 3), np.int16), np.eye(4)), base / "a.nii")
    >>> out = nb.load(copy_file(base / "a.nii", base / "b.nii.gz", repetition_time=2.0))
    >>> out.header.get_xyzt_units(), float(out.header.get_zooms()[3])
    (('mm', 'sec'), 2.0)
    """
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        img = _with_units(src, dst, repetition_time)
        if img is None:
            shutil.copyfile(src, tmp)
        else:
            import nibabel as nb

            nb.save(img, tmp)
    return dst


def _with_units(src: Path, dst: Path, repetition_time: float | None):
    """The NIfTI image to save at ``dst`` with units set, or None when a plain copy does."""
    if not dst.name.endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nb

    img = nb.load(src)
    header = img.header
    four_d = len(img.shape) > 3 and img.shape[3] > 1
    units = ("mm", "sec") if four_d else ("mm", header.get_xyzt_units()[1])
    zooms = header.get_zooms()
    retime = four_d and repetition_time is not None and not (
        abs(float(zooms[3]) - float(repetition_time)) < 1e-6)
    same_compression = src.name.endswith(".gz") == dst.name.endswith(".gz")
    if same_compression and header.get_xyzt_units() == units and not retime:
        return None
    out = img.__class__(img.dataobj, img.affine, header)
    out.header.set_xyzt_units(*units)
    if retime:
        out.header.set_zooms(tuple(zooms[:3]) + (float(repetition_time),) + tuple(zooms[4:]))
    return out


class UnsafeOutputError(errors.BidsAppError):
    """A derivative path that resolves into ``bids_dir`` (through a symbolic link)."""

    def __init__(self, message: str):
        super().__init__(message, errors.EXIT_USAGE)


@dataclasses.dataclass(frozen=True)
class OutputTree:
    """The derivatives folder of a run, and the raw dataset none of its files may land in.

    Every write resolves its destination first (symbolic links included, the folders still
    to be created too) and raises :class:`UnsafeOutputError` (exit 64) when it lies inside
    ``bids_dir`` but not inside ``root`` (which may itself be ``bids_dir/derivatives/...``).

    Examples
    --------
    >>> import tempfile
    >>> base = Path(tempfile.mkdtemp())
    >>> (base / "bids" / "sub-01").mkdir(parents=True)
    >>> (base / "out").mkdir()
    >>> (base / "out" / "sub-01").symlink_to(base / "bids" / "sub-01")
    >>> tree = OutputTree(base / "out", base / "bids")
    >>> _ = tree.write_text(base / "out" / "ok.txt", "fine")
    >>> tree.write_text(base / "out" / "sub-01" / "figures" / "a.svg", "<svg/>")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    niaffine.bidsapp.derivatives.UnsafeOutputError: refusing to write .../a.svg: it resolves to .../bids/...
    >>> sorted(p.name for p in (base / "bids" / "sub-01").iterdir())
    []
    """

    root: Path
    bids_dir: Path

    def check(self, path) -> Path:
        """Return ``path`` if writing it cannot touch ``bids_dir``; raise otherwise."""
        path = Path(path)
        resolved = path.resolve()
        bids_dir = Path(self.bids_dir).resolve()
        if is_inside(resolved, bids_dir) and not is_inside(resolved, Path(self.root).resolve()):
            raise UnsafeOutputError(
                f"refusing to write {path}: it resolves to {resolved}, inside bids_dir "
                f"{bids_dir} (a symbolic link in the output folder points there); remove the "
                "link")
        return path

    def write_text(self, path, text: str) -> Path:
        """:func:`write_text` after :meth:`check`."""
        return write_text(self.check(path), text)

    def write_json(self, path, data: dict) -> Path:
        """:func:`write_json` after :meth:`check`."""
        return write_json(self.check(path), data)

    def copy_file(self, src, dst, **kwargs) -> Path:
        """:func:`copy_file` after :meth:`check`."""
        return copy_file(src, self.check(dst), **kwargs)


@contextlib.contextmanager
def output_lock(output_dir):
    """Hold an exclusive ``flock`` on ``output_dir/.niaffine.lock`` (shared-file merges)."""
    lock = Path(output_dir) / ".niaffine.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- dataset files
def container_info() -> dict | None:
    """Describe the container we run in (Docker/Podman/Apptainer), or ``None``."""
    env = os.environ
    if env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER"):
        image = env.get("APPTAINER_NAME") or env.get("SINGULARITY_NAME") or ""
        return {"Type": "apptainer", "Tag": image} if image else {"Type": "apptainer"}
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        info = {"Type": "docker"}
        if env.get("NIAFFINE_CONTAINER_TAG"):
            info["Tag"] = env["NIAFFINE_CONTAINER_TAG"]
        return info
    return None


def dataset_description(bids_dir: Path) -> dict:
    """The derivative ``dataset_description.json`` content for a run on ``bids_dir``."""
    generated = {"Name": "niaffine", "Version": __version__}
    container = container_info()
    if container:
        generated["Container"] = container
    source = {"URL": Path(bids_dir).resolve().as_uri()}
    try:
        raw = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
        if raw.get("DatasetDOI"):
            source["DOI"] = raw["DatasetDOI"]
        # The raw dataset's own version, where it states one; never its BIDSVersion (the
        # version of the standard it follows).
        version = raw.get("DatasetVersion") or raw.get("Version")
        if version:
            source["Version"] = str(version)
    except (OSError, json.JSONDecodeError):
        pass
    return {
        "Name": "niaffine derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
        "HowToAcknowledge": "Please cite niaffine and name its version.",
    }


def derivatives_readme(bids_dir: Path) -> str:
    """The derivative dataset's ``README.md`` (BIDS recommends one): what made it, from what."""
    return (
        "# niaffine derivatives\n\n"
        f"Affine registrations, realigned series and reports made by niaffine {__version__}\n"
        f"from the BIDS dataset at {Path(bids_dir).resolve().as_uri()}. The files follow\n"
        "fMRIPrep's names; `logs/` holds each run's settings, `group/` the dataset-wide\n"
        "quality tables. See niaffine's docs/outputs.md for every file.\n"
    )


def init_output_dir(tree: OutputTree) -> None:
    """Write ``dataset_description.json`` and ``README.md`` and merge ``.bidsignore``,
    safely across jobs."""
    output_dir = Path(tree.root)
    tree.check(output_dir / "logs").mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir):
        tree.write_json(output_dir / "dataset_description.json",
                        dataset_description(tree.bids_dir))
        readme = output_dir / "README.md"
        if not readme.exists():  # the user's own notes are kept
            tree.write_text(readme, derivatives_readme(tree.bids_dir))
        ignore = output_dir / ".bidsignore"
        lines = ignore.read_text().splitlines() if ignore.exists() else []
        merged = list(dict.fromkeys([line for line in lines if line.strip()] + list(BIDSIGNORE)))
        if merged != lines:
            tree.write_text(ignore, "\n".join(merged) + "\n")


# --------------------------------------------------------------------------- names
def parse_name(path) -> tuple[list[tuple[str, str]], str, str]:
    """Split a BIDS file name into ``(entities, suffix, extension)``.

    Examples
    --------
    >>> parse_name("/d/sub-01/func/sub-01_task-rest_run-1_bold.nii.gz")
    ([('sub', '01'), ('task', 'rest'), ('run', '1')], 'bold', '.nii.gz')
    """
    match = _NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"not a BIDS file name: {path}")
    entities = [tuple(part.split("-", 1)) for part in match.group("entities").split("_")]
    if not all(len(pair) == 2 for pair in entities):
        raise ValueError(f"not a BIDS file name: {path}")
    return entities, match.group("suffix"), match.group("ext")


def subject_dir(output_dir, subject: str, session: str | None, datatype: str) -> Path:
    """``output_dir/sub-X[/ses-Y]/<datatype>``."""
    base = Path(output_dir) / f"sub-{subject}"
    return (base / f"ses-{session}" if session else base) / datatype


def bids_uri(path, bids_dir) -> str:
    """``bids:raw:<relative path>`` for a file of the raw dataset (else its absolute path).

    >>> bids_uri("/data/ds/sub-01/anat/sub-01_T1w.nii.gz", "/data/ds")
    'bids:raw:sub-01/anat/sub-01_T1w.nii.gz'
    """
    try:
        return "bids:raw:" + Path(path).relative_to(bids_dir).as_posix()
    except ValueError:
        return str(path)

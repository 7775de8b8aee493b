# SPDX-License-Identifier: Apache-2.0
"""Series files in and out: 4D images, FSL b-values/b-vectors, per-volume ITK transform arrays,
fMRIPrep-style confounds (TSV + JSON).

- One affine per volume is stored as ITK text with one ``#Transform k`` block per volume (what
  fMRIPrep writes for ``*_desc-hmc_xfm.txt`` and reads with nitransforms'
  ``ITKLinearTransformArray``); each maps reference points to the volume's points (LPS inside
  the file, as every ITK transform; the flip happens in nitransforms).
- b-values: one line (or one column) of numbers; b-vectors: FSL's three rows (a file with one
  row of three numbers per volume is accepted and read transposed).
- Confounds: tab-separated, ``n/a`` where undefined, with a JSON sidecar describing each column.

Errors are one-line :class:`~niaffine.errors.InputError` messages naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputError
from .io import _short, atomic_path, load_image

#: BIDS ``PhaseEncodingDirection`` codes and their voxel axes.
PE_AXES = {"i": 0, "i-": 0, "j": 1, "j-": 1, "k": 2, "k-": 2}
#: What ``--pe-dir`` and the interfaces accept.
PE_CODES = ("auto", *PE_AXES)
#: Descriptions and units of the confound columns, for the JSON sidecar.
COLUMN_DESCRIPTIONS = {
    "trans": ("Translation of the head along the {axis} axis of the reference's FSL frame "
              "(MCFLIRT convention: the volume-to-reference transform about the reference's "
              "centre)", "mm"),
    "rot": ("Rotation about the {axis} axis of the reference's FSL frame (MCFLIRT convention)",
            "rad"),
    "framewise_displacement": ("Framewise displacement (Power et al. 2012): sum of the absolute "
                               "backward differences of the translations and of the rotations "
                               "as arcs on a 50 mm sphere", "mm"),
    "rmsd": ("Root mean square displacement from the previous volume over an 80 mm sphere "
             "about the reference's centre (Jenkinson 1999)", "mm"),
    "dvars": ("Root mean square over the brain of the backward temporal difference of the "
              "realigned series scaled to a median of 1000", "arbitrary"),
    "std_dvars": ("DVARS divided by its expected value under temporal autocorrelation "
                  "(Nichols 2013)", "arbitrary"),
}


def phase_encoding_direction(series, code: str):
    """World direction of a series' phase-encoding axis from its BIDS code (``"auto"`` passes
    through; the sign is immaterial to the eddy-current model).

    >>> import nibabel as nib
    >>> img = nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.float32), np.diag([-2.0, 2, 2, 1]))
    >>> phase_encoding_direction(img, "i-").tolist(), phase_encoding_direction(img, "auto")
    ([-1.0, 0.0, 0.0], 'auto')
    """
    if code == "auto":
        return code
    if code not in PE_AXES:
        raise InputError(f"phase-encoding direction {code!r} is not one of {', '.join(PE_CODES)}")
    column = np.asarray(series.affine, dtype=float)[:3, PE_AXES[code]]
    return column / np.linalg.norm(column)


def sidecar_phase_encoding(path) -> str | None:
    """The BIDS ``PhaseEncodingDirection`` in a series' JSON sidecar (``x.nii.gz`` -> ``x.json``
    beside it), or None where there is no sidecar or it does not say.

    Raises :class:`~niaffine.errors.InputError` for a sidecar that is not JSON or holds a code
    that is not a BIDS phase-encoding direction.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "sub-01_dwi.json").write_text('{"PhaseEncodingDirection": "j-"}')
    >>> sidecar_phase_encoding(folder / "sub-01_dwi.nii.gz"), sidecar_phase_encoding(folder / "x.nii")
    ('j-', None)
    """
    from .interfaces.common import split_nifti_name

    path = Path(path)
    sidecar = path.with_name(split_nifti_name(path)[0] + ".json")
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{sidecar}: the series' JSON sidecar cannot be read ({_short(err)}); "
                         "fix it or give --pe-dir") from None
    code = meta.get("PhaseEncodingDirection") if isinstance(meta, dict) else None
    if code is not None and code not in PE_AXES:
        raise InputError(f"{sidecar}: PhaseEncodingDirection {code!r} is not one of "
                         f"{', '.join(PE_AXES)}")
    return code


def load_series(path, *, role: str = "series") -> nib.Nifti1Image:
    """Load a 4D series (validated: exists, readable, 4D, finite; the message of a NaN lists
    the volumes)."""
    from .engine.series_reference import series_array

    img = load_image(path, role=role, ndim=(3, 4), check_values=False)
    if img.ndim != 4:
        raise InputError(f"{path}: {role} must be 4D (volumes along the 4th axis), got shape "
                         f"{img.shape}; a single volume is no series")
    series_array(img)  # NaN/Inf volumes, singular affine
    return img


def _rows(path, what: str) -> list[list[float]]:
    """The numbers of a text file, row by row (commas or white space between them)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        rows = [[float(v) for v in line.replace(",", " ").split()]
                for line in path.read_text().splitlines()]
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a {what} file ({_short(err)})") from None
    rows = [row for row in rows if row]
    if not rows:
        raise InputError(f"{path}: the {what} file is empty")
    return rows


def read_bvals(path, n_volumes: int) -> np.ndarray:
    """b-values ``(T,)`` from an FSL ``.bval`` file (one row or one column), checked against
    the series' length."""
    values = np.array([v for row in _rows(path, "b-values") for v in row])
    if values.size != n_volumes:
        raise InputError(f"{path}: {values.size} b-values for a series of {n_volumes} volumes")
    if not np.isfinite(values).all() or (values < 0).any():
        raise InputError(f"{path}: b-values must be finite and non-negative")
    return values


def read_bvecs(path, n_volumes: int, bvals=None, *, b0_threshold: float = 50.0) -> np.ndarray:
    """b-vectors ``(3, T)`` from an FSL ``.bvec`` file.

    Raises
    ------
    InputError
        Not three rows (or ``T`` rows of three) numbers, non-finite values, or a zero-norm
        vector on a diffusion-weighted (``b > b0_threshold``) volume.
    """
    rows = _rows(path, "b-vectors")
    lengths = sorted({len(row) for row in rows})
    values = np.array(rows) if len(lengths) == 1 else np.zeros((0, 0))
    if values.shape == (n_volumes, 3) and n_volumes != 3:
        values = values.T
    if values.shape != (3, n_volumes):
        found = f"{len(rows)} rows of {'/'.join(str(n) for n in lengths)} numbers"
        raise InputError(f"{path}: expected 3 rows of {n_volumes} numbers (one per volume), "
                         f"found {found}")
    if not np.isfinite(values).all():
        raise InputError(f"{path}: b-vectors must be finite")
    if bvals is not None:
        norms = np.linalg.norm(values, axis=0)
        bad = [t for t in range(n_volumes) if bvals[t] > b0_threshold and norms[t] < 1e-6]
        if bad:
            listed = ", ".join(str(t) for t in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise InputError(f"{path}: zero-norm b-vector on diffusion-weighted volume(s) "
                             f"{listed}")
    return values


def write_bvecs(bvecs, path) -> Path:
    """Write ``(3, T)`` b-vectors as FSL's three rows (atomic)."""
    bvecs = np.asarray(bvecs, dtype=float)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(" ".join(f"{v:.8f}" for v in row) for row in bvecs) + "\n")
    return Path(path)


def write_bvals(bvals, path) -> Path:
    """Write b-values as one FSL row (atomic)."""
    with atomic_path(path) as tmp:
        tmp.write_text(" ".join(f"{v:g}" for v in np.asarray(bvals, dtype=float)) + "\n")
    return Path(path)


def save_transform_array(matrices, path) -> Path:
    """Write ``(T, 4, 4)`` reference-to-volume world matrices as one ITK text file (atomic).

    Each matrix becomes a ``MatrixOffsetTransformBase_double_3_3`` block in LPS, as
    nitransforms' ``ITKLinearTransformArray`` writes and reads it.
    """
    from nitransforms.io.itk import ITKLinearTransformArray

    matrices = np.asarray(matrices, dtype=float)
    if matrices.ndim != 3 or matrices.shape[1:] != (4, 4):
        raise InputError(f"{path}: expected (T, 4, 4) matrices, got {matrices.shape}")
    if Path(str(path)).suffix.lower() not in (".txt", ".tfm"):
        raise InputError(f"{path}: a transform array is ITK text (.txt or .tfm)")
    with atomic_path(path) as tmp:
        ITKLinearTransformArray.from_ras(matrices).to_filename(str(tmp))
    return Path(path)


def load_transform_array(path, n_volumes: int | None = None) -> np.ndarray:
    """Read an ITK text file of one or more affines into ``(T, 4, 4)`` world (RAS) matrices."""
    from nitransforms.io.itk import ITKLinearTransformArray

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: transform file not found")
    try:
        matrices = ITKLinearTransformArray.from_filename(str(path)).to_ras()
    except Exception as err:  # nitransforms raises several types for unreadable files
        raise InputError(f"{path}: not a readable ITK transform array ({_short(err)})") from None
    matrices = np.asarray(matrices, dtype=float).reshape(-1, 4, 4)
    if n_volumes is not None and len(matrices) != n_volumes:
        raise InputError(f"{path}: {len(matrices)} transforms for a series of {n_volumes} volumes")
    if not np.isfinite(matrices).all():
        raise InputError(f"{path}: transforms with NaN or infinite values")
    return matrices


def split_transform_array(matrices, folder, *, stem: str = "vol") -> list[Path]:
    """Write one ITK text file per volume (``<stem>0000_xfm.txt`` ...), for tools that read a
    single affine per file (``antsApplyTransforms -t``, ANTsPy's ``read_transform``).

    Returns
    -------
    list of Path
    """
    from .io import save_transform

    folder = Path(folder)
    return [save_transform(m, folder / f"{stem}{t:04d}_xfm.txt")
            for t, m in enumerate(np.asarray(matrices, dtype=float))]


def confounds_metadata(columns) -> dict:
    """The JSON sidecar of a confounds table: ``{column: {"Description", "Units"}}``."""
    meta = {}
    for name in columns:
        base = name.split("_derivative1")[0].split("_power2")[0]
        kind, _, axis = base.partition("_")
        if kind in ("trans", "rot") and axis in ("x", "y", "z"):
            text, units = COLUMN_DESCRIPTIONS[kind]
            text = text.format(axis=axis)
        elif base in COLUMN_DESCRIPTIONS:
            text, units = COLUMN_DESCRIPTIONS[base]
        else:
            text, units = name, "arbitrary"
        if "_derivative1" in name:
            text, units = f"Backward difference of {base}: {text}", units
        if name.endswith("_power2"):
            text, units = f"Square of {name[: -len('_power2')]}", f"({units})^2"
        meta[name] = {"Description": text, "Units": units}
    return meta


def write_confounds_tsv(columns: dict, path) -> Path:
    """Write a confounds table: tab-separated, a header row, ``n/a`` for NaN (atomic).

    Parameters
    ----------
    columns : dict
        Column name to ``(T,)`` array (see :func:`niaffine.engine.motion.confound_columns`).
    path : str or os.PathLike
        E.g. ``*_desc-confounds_timeseries.tsv``.
    """
    names = list(columns)
    lengths = {len(np.asarray(columns[n])) for n in names}
    if len(lengths) != 1:
        raise InputError(f"{path}: confound columns of different lengths {sorted(lengths)}")
    rows = ["\t".join(names)]
    rows += ["\t".join(_cell(columns[n][t]) for n in names) for t in range(lengths.pop())]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    return Path(path)


def write_confounds_json(columns, path) -> Path:
    """Write the JSON sidecar of a confounds table (see :func:`confounds_metadata`, atomic)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(confounds_metadata(list(columns)), indent=2) + "\n")
    return Path(path)


def write_confounds(columns: dict, path, *, json_path=None) -> tuple[Path, Path]:
    """Write a confounds TSV and its JSON sidecar (default: the TSV's name with ``.json``)."""
    path = Path(path)
    json_path = Path(json_path) if json_path else path.with_suffix(".json")
    return write_confounds_tsv(columns, path), write_confounds_json(columns, json_path)


def _cell(value) -> str:
    value = float(value)
    return "n/a" if not np.isfinite(value) else f"{value:.8g}"

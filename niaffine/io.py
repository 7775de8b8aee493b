# SPDX-License-Identifier: Apache-2.0
"""Files in and out: validated NIfTI loading, transform files through nitransforms.

Transforms are held in memory as world (RAS mm) matrices mapping reference (fixed) points to
moving points. On disk they are written through :mod:`nitransforms` as ITK text (what ANTs and
fMRIPrep read; LPS inside the file), FSL ``.mat`` (scaled-voxel coordinates of both images) or
FreeSurfer LTA. Every writer is atomic: a temporary file in the destination folder is renamed
into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

import nibabel as nb
import numpy as np

from .errors import InputError

#: Transform formats by file extension.
TRANSFORM_FORMATS = {".txt": "itk", ".tfm": "itk", ".mat": "fsl", ".lta": "lta"}
#: Plausible voxel sizes (mm): from ex-vivo and small-animal scans to thick clinical slices.
VOXEL_SIZE_RANGE_MM = (0.01, 20.0)
#: Largest plausible field of view along one axis (mm).
MAX_EXTENT_MM = 1000.0
#: Largest plausible distance of an image's centre from the scanner's origin (mm).
MAX_CENTRE_MM = 5000.0
#: Names of niaffine's temporary files: ``.tmp-<12 hex digits>-<final name>``, beside the
#: final file and renamed onto it (see :func:`atomic_path`).
TEMP_NAME = re.compile(r"^\.tmp-[0-9a-f]{12}-.")


def load_image(path, *, role: str = "image", ndim=(2, 3), check_values: bool = True):
    """Load and validate an image; every problem becomes a one-line :class:`InputError`.

    Parameters
    ----------
    path : str or os.PathLike
    role : str
        What the image is for ("fixed image", "moving mask"...), used in messages.
    ndim : sequence of int
        Accepted numbers of dimensions (trailing singleton dimensions are ignored).
    check_values : bool
        Reject images with NaN/Inf values or nothing but zeros.

    Returns
    -------
    nibabel.Nifti1Image
        With its data in memory (read once, so a truncated file fails here, not later).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {role} not found")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise InputError(f"{path}: {role} is not a readable file")
    try:
        img = nb.load(str(path))
    except Exception as err:  # nibabel raises many types for unreadable files
        raise InputError(f"{path}: {role} is not a readable NIfTI/MGH image ({_short(err)})") from None
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise InputError(f"{path}: {role} is corrupt or truncated ({_short(err)})") from None
    shape = spatial_shape(data.shape, ndim, path=path, role=role)
    if check_values:
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise InputError(f"{path}: {role} contains NaN or infinite values")
        if not data.any():
            raise InputError(f"{path}: {role} is all zero")
    affine = img.affine
    check_geometry(affine, shape, path=path, role=role)
    header = img.header if isinstance(img, nb.Nifti1Image) else None
    out = nb.Nifti1Image(data.reshape(shape), affine, header)
    out.set_filename(str(path))
    return out


def spatial_shape(shape, ndim=(2, 3), *, path="", role: str = "image") -> tuple[int, ...]:
    """``shape`` without trailing singleton dimensions, checked against ``ndim``.

    Examples
    --------
    >>> spatial_shape((10, 11, 12, 1), (3,))
    (10, 11, 12)
    >>> spatial_shape((10, 11, 12, 2), (3,), path="t1.nii.gz", role="T1w image")
    Traceback (most recent call last):
    ...
    niaffine.errors.InputError: t1.nii.gz: T1w image must be 3D, got shape (10, 11, 12, 2)
    """
    ndim = tuple(ndim)
    out = tuple(int(n) for n in shape)
    while len(out) > min(ndim) and out[-1] == 1:
        out = out[:-1]
    if len(out) not in ndim:
        want = " or ".join(f"{d}D" for d in ndim)
        raise InputError(f"{path}: {role} must be {want}, got shape {tuple(shape)}")
    return out


def check_geometry(affine, shape, *, path="", role: str = "image") -> None:
    """Refuse a voxel-to-world matrix no brain MRI has: one line naming the file.

    Voxel sizes (the lengths of the matrix's columns) must lie in
    :data:`VOXEL_SIZE_RANGE_MM`, the field of view along every axis must be at most
    :data:`MAX_EXTENT_MM`, and its centre within :data:`MAX_CENTRE_MM` of the scanner's
    origin. A header whose voxel sizes were scaled by mistake (x1000 for metres, x1e6) would
    otherwise register to a nonsense transform.

    Parameters
    ----------
    affine : (4, 4) array
        Voxel-to-world (mm) matrix.
    shape : sequence of int
        Spatial shape (2 or 3 dimensions; a 4th, time, is ignored).

    Examples
    --------
    >>> check_geometry(np.diag([1.0, 1.0, 1.2, 1.0]), (176, 256, 256))
    >>> check_geometry(np.diag([2e6, 2e6, 2e6, 1.0]), (96, 96, 60), path="t2.nii.gz",
    ...                role="T2w image")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    niaffine.errors.InputError: t2.nii.gz: T2w image has implausible voxel sizes 2e+06 x 2e+06 x 2e+06 mm ...
    """
    affine = None if affine is None else np.asarray(affine, dtype=float)
    if affine is None or affine.shape != (4, 4) or not np.isfinite(affine).all() \
            or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: {role} has a singular or missing voxel-to-world matrix")
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    low, high = VOXEL_SIZE_RANGE_MM
    if sizes.min() < low or sizes.max() > high:
        shown = " x ".join(f"{v:.3g}" for v in sizes)
        raise InputError(f"{path}: {role} has implausible voxel sizes {shown} mm "
                         f"(brain MRI: {low:g} to {high:g} mm)")
    dims = np.ones(3)
    dims[: min(3, len(shape))] = [max(1, int(n)) for n in tuple(shape)[:3]]
    extent = sizes * dims
    if extent.max() > MAX_EXTENT_MM:
        raise InputError(f"{path}: {role} has an implausible field of view "
                         f"{' x '.join(f'{v:.4g}' for v in extent)} mm "
                         f"(at most {MAX_EXTENT_MM:g} mm)")
    centre = affine[:3, :3] @ ((dims - 1) / 2) + affine[:3, 3]
    if np.linalg.norm(centre) > MAX_CENTRE_MM:
        raise InputError(f"{path}: {role} lies implausibly far from the scanner's origin "
                         f"({np.linalg.norm(centre):.3g} mm; at most {MAX_CENTRE_MM:g} mm)")


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def transform_format(path, fmt: str | None = None) -> str:
    """The transform format for ``path``: ``itk``, ``fsl`` or ``lta``.

    >>> transform_format("a/b_xfm.txt"), transform_format("x.mat"), transform_format("y.lta")
    ('itk', 'fsl', 'lta')
    """
    if fmt is not None:
        fmt = fmt.lower()
        fmt = {"ants": "itk", "fs": "lta"}.get(fmt, fmt)
        if fmt not in ("itk", "fsl", "lta"):
            raise InputError(f"{path}: unknown transform format {fmt!r} (itk, fsl, lta)")
        return fmt
    suffix = Path(str(path)).suffix.lower()
    if suffix not in TRANSFORM_FORMATS:
        raise InputError(f"{path}: cannot tell the transform format from the extension "
                         f"(use .txt/.tfm for ITK, .mat for FSL, .lta for FreeSurfer)")
    return TRANSFORM_FORMATS[suffix]


def is_inside(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (no links resolved here).

    >>> is_inside(Path("/d/bids/sub-01"), Path("/d/bids")), is_inside(Path("/d/b2"), Path("/d/b"))
    (True, False)
    """
    path, folder = Path(path), Path(folder)
    return path == folder or folder in path.parents


def temp_path(path) -> Path:
    """A hidden, unique name beside ``path`` that ends like it (so writers pick its format).

    >>> TEMP_NAME.match(temp_path("/d/sub-01_T1w.nii.gz").name) is not None
    True
    """
    path = Path(path)
    return path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Whatever happens (an error, Ctrl-C) the temporary file is removed. An ``OSError`` of the
    writer that names no file, or the temporary one (a full disk: ``No space left on
    device``), is raised again naming ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        names = {str(err.filename), str(err.filename2)}
        if err.errno is None or (err.filename is not None and str(tmp) not in names):
            raise
        raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def save_image(img, path) -> Path:
    """Write a nibabel image atomically."""
    with atomic_path(path) as tmp:
        nb.save(img, str(tmp))
    return Path(path)


def as_3d_matrix(matrix) -> np.ndarray:
    """A (4, 4) world matrix; a 2D (3, 3) result acts in the (x, y) plane and keeps z.

    >>> as_3d_matrix(np.array([[1.0, 0, 5], [0, 1, 6], [0, 0, 1]]))[:3, 3]
    array([5., 6., 0.])
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape == (4, 4):
        return matrix
    if matrix.shape != (3, 3):
        raise InputError(f"expected a 3x3 (2D) or 4x4 (3D) matrix, got {matrix.shape}")
    out = np.eye(4)
    out[:2, :2] = matrix[:2, :2]
    out[:2, 3] = matrix[:2, 2]
    return out


def itk_text(matrix) -> str:
    """ITK text (``AffineTransform_double_3_3``) of a fixed-to-moving world (RAS mm) matrix.

    nitransforms converts the matrix to ITK's LPS convention
    (``ITKLinearTransform.from_ras``); its own writer prints ``AffineTransform_float_3_3``
    with 6 significant digits (``%g``: 0.5 um steps at 100 mm, the float32 a
    ``float`` file promises is not even reached), so the text is printed here with the
    17 digits of the engine's float64 result, as ANTs writes double-precision transforms.

    Examples
    --------
    >>> print(itk_text(np.eye(4) + np.eye(4, k=3) * 12.5), end="")
    #Insight Transform File V1.0
    #Transform 0
    Transform: AffineTransform_double_3_3
    Parameters: 1 0 0 0 1 0 0 0 1 -12.5 0 0
    FixedParameters: 0 0 0
    """
    from nitransforms.io.itk import ITKLinearTransform

    lps = ITKLinearTransform.from_ras(as_3d_matrix(matrix)).structarr["parameters"]
    values = [*np.asarray(lps[:3, :3], dtype=float).ravel(), *np.asarray(lps[:3, 3], dtype=float)]
    return ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            f"Parameters: {' '.join(_number(v) for v in values)}\nFixedParameters: 0 0 0\n")


def _number(value: float) -> str:
    """Shortest text that reads back to the same float64 (``-0`` printed as ``0``)."""
    return repr(float(value) + 0.0).removesuffix(".0")


def save_transform(matrix, path, *, reference=None, moving=None, fmt: str | None = None) -> Path:
    """Write a fixed-to-moving world matrix as ITK text, FSL ``.mat`` or FreeSurfer LTA.

    Parameters
    ----------
    matrix : (4, 4) array
        World (RAS mm) matrix mapping reference points to moving points.
    path : str or os.PathLike
    reference, moving : nibabel images
        The fixed and moving images; FSL needs both, LTA records both grids.
    fmt : str, optional
        ``itk``, ``fsl`` or ``lta``; by default from the extension.
    """
    import nitransforms.linear as ntl

    fmt = transform_format(path, fmt)
    matrix = as_3d_matrix(matrix)
    if fmt == "fsl" and (reference is None or moving is None):
        raise InputError(f"{path}: FSL .mat files need both the reference and the moving image")
    xfm = ntl.Affine(matrix, reference=reference)
    with atomic_path(path) as tmp:
        if fmt == "itk":
            tmp.write_text(itk_text(matrix))
        else:
            xfm.to_filename(str(tmp), fmt="fsl" if fmt == "fsl" else "fs", moving=moving)
    return Path(path)


def load_transform(path, *, reference=None, moving=None, fmt: str | None = None) -> np.ndarray:
    """Read a transform file into a fixed-to-moving world (RAS mm) matrix.

    Parameters
    ----------
    path : str or os.PathLike
    reference, moving : nibabel images, optional
        Needed for FSL ``.mat`` files (and LTA files stored in voxel coordinates).
    fmt : str, optional
        ``itk``, ``fsl`` or ``lta``; by default from the extension.
    """
    import nitransforms.linear as ntl

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: transform file not found")
    fmt = transform_format(path, fmt)
    if fmt == "fsl" and (reference is None or moving is None):
        raise InputError(f"{path}: reading an FSL .mat needs both the reference and the moving image")
    try:
        xfm = ntl.load(str(path), fmt="fs" if fmt == "lta" else fmt, reference=reference,
                       moving=moving)
    except Exception as err:
        raise InputError(f"{path}: not a readable {fmt.upper()} affine transform ({_short(err)})") from None
    matrix = np.asarray(xfm.matrix, dtype=float)
    if matrix.ndim == 3:
        if matrix.shape[0] != 1:
            raise InputError(f"{path}: holds {matrix.shape[0]} transforms, expected one")
        matrix = matrix[0]
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise InputError(f"{path}: not a 4x4 affine transform")
    return matrix

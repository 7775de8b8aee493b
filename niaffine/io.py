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
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np

from .errors import InputError

#: Transform formats by file extension.
TRANSFORM_FORMATS = {".txt": "itk", ".tfm": "itk", ".mat": "fsl", ".lta": "lta"}


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
    shape = data.shape
    while len(shape) > min(ndim) and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in tuple(ndim):
        want = " or ".join(f"{d}D" for d in ndim)
        raise InputError(f"{path}: {role} must be {want}, got shape {data.shape}")
    if check_values:
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise InputError(f"{path}: {role} contains NaN or infinite values")
        if not data.any():
            raise InputError(f"{path}: {role} is all zero")
    affine = img.affine
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: {role} has a singular or missing voxel-to-world matrix")
    header = img.header if isinstance(img, nb.Nifti1Image) else None
    out = nb.Nifti1Image(data.reshape(shape), affine, header)
    out.set_filename(str(path))
    return out


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


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffixes, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; follow the umask instead
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
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
            xfm.to_filename(str(tmp), fmt="itk")
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

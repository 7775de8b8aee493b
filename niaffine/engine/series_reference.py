# SPDX-License-Identifier: Apache-2.0
"""Series input, references and masks for :func:`niaffine.engine.series.register_series`.

- :func:`series_array`: a 4D nibabel image as a validated ``(T, X, Y, Z)`` float32 array.
- :func:`volume_kinds`: b=0 (``"b0"``), diffusion-weighted (``"dw"``) or BOLD (``"bold"``).
- :func:`first_reference`: the volume a first realignment pass registers to.
- :func:`robust_reference`: the median (mean for fewer than five) of realigned volumes.
- :func:`head_mask`: where the metric is evaluated when no mask is given.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..masks import largest_component
from ..threads import thread_map
from .resample import resample_array, voxel_map

LOGGER = logging.getLogger(__name__)

#: Volumes a robust reference is made of, at most (evenly spread over the candidates).
MAX_REFERENCE_VOLUMES = 12
#: A BOLD run's first reference is the most typical of this many first volumes.
FIRST_CANDIDATES = 10


def _name(img, fallback: str = "series") -> str:
    filename = getattr(img, "get_filename", lambda: None)()
    return str(filename) if filename else fallback


def series_array(series) -> tuple[np.ndarray, np.ndarray, str]:
    """Volumes of a 4D image as a contiguous ``(T, X, Y, Z)`` float32 array.

    Parameters
    ----------
    series : nibabel image
        4D (trailing singleton dimensions beyond the fourth are ignored).

    Returns
    -------
    data : (T, X, Y, Z) array
    affine : (4, 4) array
    name : str
        The file name, or ``"series"``.

    Raises
    ------
    InputError
        Not 4D (a 3D image is one volume, not a series), complex, NaN or infinite values
        (the message lists the volumes), or a singular voxel-to-world matrix.

    Examples
    --------
    >>> img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    >>> series_array(img)
    Traceback (most recent call last):
    ...
    niaffine.errors.InputError: series: expected a 4D series (volumes along the 4th axis), got shape (4, 4, 4)
    """
    name = _name(series)
    data = np.asanyarray(series.dataobj)
    shape = data.shape
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 4:
        raise InputError(f"{name}: expected a 4D series (volumes along the 4th axis), "
                         f"got shape {data.shape}")
    if np.iscomplexobj(data):
        raise InputError(f"{name}: complex-valued series are not supported")
    data = data.reshape(shape)
    affine = np.asarray(series.affine, dtype=float)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{name}: the header's voxel-to-world matrix is singular")
    volumes = np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)
    if np.issubdtype(volumes.dtype, np.floating):
        bad = [t for t in range(len(volumes)) if not np.isfinite(volumes[t]).all()]
        if bad:
            listed = ", ".join(str(t) for t in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise InputError(f"{name}: {len(bad)} volume(s) contain NaN or infinite values "
                             f"(volumes {listed})")
    return volumes, affine, name


def volume_kinds(n_volumes: int, bvals, b0_threshold: float, name: str = "series") -> list[str]:
    """``"bold"`` for every volume, or ``"b0"``/``"dw"`` from b-values.

    >>> volume_kinds(3, None, 50.0)
    ['bold', 'bold', 'bold']
    >>> volume_kinds(3, [0, 1000, 5], 50.0)
    ['b0', 'dw', 'b0']
    """
    if bvals is None:
        return ["bold"] * n_volumes
    values = np.asarray(bvals, dtype=float).ravel()
    if values.size != n_volumes:
        raise InputError(f"{name}: {values.size} b-values for {n_volumes} volumes")
    if not np.isfinite(values).all() or (values < 0).any():
        raise InputError(f"{name}: b-values must be finite and non-negative")
    kinds = ["b0" if b <= b0_threshold else "dw" for b in values]
    if "b0" not in kinds:
        raise InputError(f"{name}: no b=0 volume (b <= {b0_threshold:g}) to build a reference")
    return kinds


def first_reference(data: np.ndarray, kinds: list[str], usable: list[int]) -> int:
    """The volume of a first pass: the first usable b=0 for DWI; for BOLD the most typical of
    the first ten usable volumes (highest median correlation with the others), which passes
    over non-steady-state volumes and volumes caught in a jump."""
    if "b0" in kinds:
        return next(t for t in usable if kinds[t] == "b0")
    candidates = usable[:FIRST_CANDIDATES]
    if len(candidates) < 3:
        return candidates[0]
    flat = np.stack([data[t][::2, ::2, ::2].ravel() for t in candidates]).astype(np.float64)
    corr = np.corrcoef(flat)
    np.fill_diagonal(corr, np.nan)
    return candidates[int(np.nanargmax(np.nanmedian(corr, axis=1)))]


def volume_image(volume: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A 3D float32 image of one volume."""
    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm")
    return img


def reference_image(img) -> nib.Nifti1Image:
    """A given reference as a validated 3D float32 image (a 4D one with one volume is fine)."""
    name = _name(img, "reference image")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name}: the reference must be a 3D image, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{name}: the reference contains NaN or infinite values")
    if not np.ptp(data) > 0:
        raise InputError(f"{name}: the reference is constant")
    out = volume_image(data, img.affine)
    if _name(img, ""):
        out.set_filename(_name(img))
    return out


def reference_mask(mask, ref_img) -> nib.Nifti1Image:
    """A given mask, checked to lie on the reference's grid, as uint8."""
    name = _name(mask, "mask")
    data = np.asanyarray(mask.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != ref_img.shape[:3] or not np.allclose(mask.affine, ref_img.affine, atol=1e-3):
        raise InputError(f"{name}: the mask is not on the reference's grid (shape "
                         f"{data.shape} vs {ref_img.shape[:3]}, or another affine)")
    binary = (np.nan_to_num(data) > 0).astype(np.uint8)
    if not binary.any():
        raise InputError(f"{name}: the mask is empty")
    return nib.Nifti1Image(binary, ref_img.affine)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Threshold maximising the between-class variance of ``values``."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(float)
    total = weight[-1]
    cum_mean = np.cumsum(hist * centres)
    between = (cum_mean[-1] * weight - total * cum_mean) ** 2 / np.maximum(
        weight * (total - weight), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def head_mask(ref_img, *, dilate_voxels: int = 2) -> nib.Nifti1Image:
    """The head (or brain) in a reference: Otsu threshold of the lightly smoothed image,
    largest connected component, holes filled, dilated by ``dilate_voxels`` (6-connected steps).

    Examples
    --------
    >>> data = np.zeros((20, 20, 20), np.float32); data[5:15, 5:15, 5:15] = 100.0
    >>> mask = head_mask(nib.Nifti1Image(data, np.eye(4)), dilate_voxels=1)
    >>> int(np.asanyarray(mask.dataobj).sum())  # the cube and one voxel on each face
    1600
    """
    data = np.asanyarray(ref_img.dataobj).astype(np.float32)
    smooth = ndi.gaussian_filter(data, 0.5)
    positive = smooth[smooth > 0]
    if positive.size == 0:
        return nib.Nifti1Image(np.ones(data.shape, np.uint8), ref_img.affine)
    fg = largest_component(smooth > _otsu(np.clip(positive, None, np.percentile(positive, 99.5))))
    if dilate_voxels > 0:
        fg = ndi.binary_dilation(fg, iterations=int(dilate_voxels))
    return nib.Nifti1Image(fg.astype(np.uint8), ref_img.affine)


def robust_reference(data: np.ndarray, matrices: np.ndarray, affine: np.ndarray,
                     volumes: list[int], grid_img) -> nib.Nifti1Image:
    """Voxel-wise median (mean for fewer than five) of volumes resampled into a reference grid.

    Parameters
    ----------
    data : (T, X, Y, Z) array
    matrices : (T, 4, 4) array
        Reference-world to volume-world matrices (a first realignment).
    affine : (4, 4) array
        The series' voxel-to-world matrix.
    volumes : list of int
        The volumes to combine (at most :data:`MAX_REFERENCE_VOLUMES`, evenly spread).
    grid_img : nibabel image
        The reference grid (shape and affine).

    Returns
    -------
    nibabel.Nifti1Image
        float32 on the reference grid.
    """
    if len(volumes) > MAX_REFERENCE_VOLUMES:
        pick = np.linspace(0, len(volumes) - 1, MAX_REFERENCE_VOLUMES).round().astype(int)
        volumes = [volumes[i] for i in np.unique(pick)]
    shape = grid_img.shape[:3]
    stack = np.empty((len(volumes),) + tuple(shape), dtype=np.float32)

    def resample(k):
        vox = voxel_map(matrices[volumes[k]], grid_img.affine, affine)
        stack[k] = resample_array(data[volumes[k]], vox, shape, order=3)

    thread_map(resample, range(len(volumes)))
    combined = np.median(stack, axis=0) if len(volumes) >= 5 else stack.mean(axis=0)
    return volume_image(combined, grid_img.affine)

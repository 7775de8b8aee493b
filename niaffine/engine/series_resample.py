# SPDX-License-Identifier: Apache-2.0
"""Resample a series volume by volume, each through its own composed transform (one
interpolation), onto any grid.

With head-motion matrices ``H_t`` (reference to volume ``t``) and transforms applied before
them in ANTs' order (``[template_to_t1w, t1w_to_reference]``: the output grid's points go
through the first one first), volume ``t`` is sampled at ``H_t @ C @ N @ x`` for every output
point ``x``: head-motion correction, coregistration and normalisation in one interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

from ..errors import InputError
from .resample import compose, resample_array, voxel_map


def volume_matrices(motion, before: Sequence = ()) -> np.ndarray:
    """Per-volume output-to-volume world matrices ``(T, 4, 4)``: ``motion[t] @ compose(before)``.

    Parameters
    ----------
    motion : (T, 4, 4) array
        Reference-to-volume matrices (head motion).
    before : sequence of (4, 4) arrays
        Transforms applied to output points before the head motion, in ANTs' order (e.g.
        ``[template_to_t1w, t1w_to_reference]``); empty for output on the reference grid.

    Examples
    --------
    >>> shift = np.eye(4); shift[0, 3] = 1.0
    >>> float(volume_matrices(np.stack([shift]), [shift])[0, 0, 3])
    2.0
    """
    motion = np.asarray(motion, dtype=float)
    if motion.ndim != 3 or motion.shape[1:] != (4, 4):
        raise InputError(f"head-motion transforms must be (T, 4, 4), got {motion.shape}")
    chain = compose(list(before)) if len(before) else np.eye(4)
    return motion @ chain


def resample_series(series_img, matrices, reference_img, *, order: int = 1, fill: float = 0.0,
                    device="cpu") -> nib.Nifti1Image:
    """Resample every volume of a 4D series through its own output-to-volume matrix.

    Parameters
    ----------
    series_img : nibabel image
        4D series.
    matrices : (T, 4, 4) array
        Output-world to volume-world matrices (see :func:`volume_matrices`).
    reference_img : nibabel image
        The output grid (its first three dimensions and affine).
    order : {0, 1, 3}
        Nearest, linear or cubic B-spline interpolation.
    fill : float
        Value outside each volume's field of view.

    Returns
    -------
    nibabel.Nifti1Image
        float32 4D image on the output grid, with the series' repetition time and units.
    """
    data = np.asanyarray(series_img.dataobj)
    if data.ndim != 4:
        raise InputError(f"{series_img.get_filename() or 'series'}: expected a 4D series, got "
                         f"shape {data.shape}")
    matrices = np.asarray(matrices, dtype=float)
    if len(matrices) != data.shape[3]:
        raise InputError(f"{len(matrices)} transforms for a series of {data.shape[3]} volumes")
    shape = tuple(int(s) for s in reference_img.shape[:3])
    out = np.empty(shape + (data.shape[3],), dtype=np.float32)
    for t in range(data.shape[3]):
        vox = voxel_map(matrices[t], reference_img.affine, series_img.affine)
        out[..., t] = resample_array(np.asarray(data[..., t], dtype=np.float32), vox, shape,
                                     order=order, fill=fill, device=device)
    return series_like(out, reference_img.affine, series_img)


def series_like(data: np.ndarray, affine: np.ndarray, series_img) -> nib.Nifti1Image:
    """A float32 4D image on ``affine`` with the repetition time and units of ``series_img``."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    zooms = series_img.header.get_zooms()
    tr = float(zooms[3]) if len(zooms) > 3 else 1.0
    img.header.set_zooms(tuple(nib.affines.voxel_sizes(affine)) + (tr,))
    units = series_img.header.get_xyzt_units() if hasattr(series_img.header, "get_xyzt_units") \
        else ("mm", "sec")
    img.header.set_xyzt_units(units[0] or "mm", units[1] or "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def reference_grid(target_img, voxel_size=None) -> nib.Nifti1Image:
    """An empty image with ``target_img``'s orientation and field of view at ``voxel_size``.

    fMRIPrep's ``space-T1w`` series keep the series' resolution on the T1w's field of view
    ("native resolution"); this makes that grid.

    Parameters
    ----------
    target_img : nibabel image
        E.g. the T1w.
    voxel_size : float or (3,) sequence, optional
        Output voxel sizes (mm); default: the target's.

    Examples
    --------
    >>> t1 = nib.Nifti1Image(np.zeros((10, 12, 9), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    >>> grid = reference_grid(t1, 3.0)
    >>> grid.shape, nib.affines.voxel_sizes(grid.affine).tolist()
    ((4, 4, 3), [3.0, 3.0, 3.0])
    """
    affine = np.asarray(target_img.affine, dtype=float)
    shape = np.asarray(target_img.shape[:3], dtype=float)
    old = nib.affines.voxel_sizes(affine)
    new = old if voxel_size is None else np.broadcast_to(np.asarray(voxel_size, float), (3,))
    extent = (shape - 1) * old  # centre to centre
    new_shape = np.maximum(1, np.floor(extent / new + 1e-6).astype(int) + 1)
    linear = affine[:3, :3] / old * new
    centre = affine @ np.r_[(shape - 1) / 2, 1.0]
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre[:3] - linear @ ((new_shape - 1) / 2)
    return nib.Nifti1Image(np.zeros(tuple(int(s) for s in new_shape), np.uint8), out)

# SPDX-License-Identifier: Apache-2.0
"""Resample images onto any reference grid through world-space affine transforms."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import torch

from .. import choices
from ..errors import InputError
from .frames import sample_grid, voxel_to_grid

ORDERS = {order: name for name, order in choices.INTERPOLATIONS.items()}


def compose(matrices) -> np.ndarray:
    """Compose world matrices listed in the order they apply to reference points.

    ``[A, B]`` maps a reference point ``x`` to ``B @ A @ x`` (ANTs' ``-t`` order): the first
    transform takes reference points to an intermediate space, the last reaches the moving image.

    >>> a = np.eye(4); a[0, 3] = 1
    >>> b = np.diag([2.0, 1, 1, 1])
    >>> float(compose([a, b])[0, 3])
    2.0
    """
    if isinstance(matrices, np.ndarray) and matrices.ndim == 2:
        return matrices.astype(float)
    out = None
    for m in matrices:
        m = np.asarray(m, dtype=float)
        out = m if out is None else m @ out
    if out is None:
        raise InputError("no transform given")
    return out


def voxel_map(matrix, reference_affine, moving_affine) -> np.ndarray:
    """Reference-voxel to moving-voxel matrix for a fixed-to-moving world ``matrix``."""
    return np.linalg.inv(moving_affine) @ matrix @ reference_affine


def resample_array(data: np.ndarray, vox_map: np.ndarray, out_shape, *, order: int = 1,
                   fill: float = 0.0, device="cpu", chunk: int = 8) -> np.ndarray:
    """Resample a 3D (or 3D + time) array through a voxel-to-voxel map.

    Parameters
    ----------
    data : (X, Y, Z) or (X, Y, Z, T) array
    vox_map : (4, 4) array
        Output voxel indices to input voxel indices.
    out_shape : tuple of 3 int
    order : {0, 1, 3}
        Nearest, linear, or cubic B-spline (prefiltered) interpolation.
    fill : float
        Value outside the input field of view.
    chunk : int
        Volumes resampled together (memory bound for long series).
    """
    if order not in ORDERS:
        raise InputError(f"interpolation order {order} is not one of 0 (nearest), 1, 3")
    series = data if data.ndim == 4 else data[..., None]
    out_shape = tuple(int(s) for s in out_shape)
    if order == 3:
        from scipy import ndimage

        out = np.empty(out_shape + (series.shape[-1],), dtype=np.float32)
        for t in range(series.shape[-1]):
            out[..., t] = ndimage.affine_transform(
                series[..., t].astype(np.float32), vox_map[:3, :3], offset=vox_map[:3, 3],
                output_shape=out_shape, order=3, mode="constant", cval=fill, prefilter=True)
        return out if data.ndim == 4 else out[..., 0]
    dev = torch.device(device)
    to_grid = torch.as_tensor(voxel_to_grid(series.shape[:3]) @ vox_map, dtype=torch.float64)
    axes = [torch.arange(n, dtype=torch.float64) for n in out_shape]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    grid = (idx @ to_grid[:3, :3].T + to_grid[:3, 3]).to(torch.float32).to(dev)[None]
    inside = (grid.abs() <= 1 + 1e-6).all(-1)[0]
    keep_dtype = order == 0 and np.issubdtype(series.dtype, np.integer)
    out = np.empty(out_shape + (series.shape[-1],), dtype=series.dtype if keep_dtype else np.float32)
    mode = "nearest" if order == 0 else "bilinear"
    for t0 in range(0, series.shape[-1], chunk):
        block = np.moveaxis(series[..., t0:t0 + chunk], -1, 0).astype(np.float32)
        vol = torch.from_numpy(np.ascontiguousarray(block))[None].to(dev)
        res = sample_grid(vol, grid.reshape(1, -1, 1, 1, 3), mode=mode)
        res = res.reshape(vol.shape[1], *out_shape)
        res = torch.where(inside, res, torch.as_tensor(fill, dtype=res.dtype, device=dev))
        res = res.cpu().numpy()
        if keep_dtype:
            res = np.rint(res)
        out[..., t0:t0 + chunk] = np.moveaxis(res, 0, -1)
    return out if data.ndim == 4 else out[..., 0]


def resample_image(moving_img, matrix, reference_img, *, order: int = 1, fill: float = 0.0,
                   device="cpu") -> nb.Nifti1Image:
    """Resample ``moving_img`` onto ``reference_img``'s grid.

    Parameters
    ----------
    moving_img : nibabel image
        3D or 4D (every volume goes through the same transform).
    matrix : (4, 4) array or sequence of (4, 4) arrays
        Fixed(reference)-to-moving world matrix, or several composed with :func:`compose` into
        one interpolation.
    reference_img : nibabel image
        Grid of the output (its first three dimensions and affine).
    order : {0, 1, 3}
        Nearest (labels keep their integer type), linear, or cubic B-spline.
    fill : float
        Value outside the moving field of view.

    Returns
    -------
    nibabel.Nifti1Image
        On the reference grid, with the reference's qform/sform codes and the moving image's
        other header fields (units, TR, intent).
    """
    mat = compose(matrix)
    ref_shape = reference_img.shape[:3]
    data = np.asanyarray(moving_img.dataobj)
    if data.ndim not in (3, 4):
        raise InputError(f"{moving_img.get_filename() or 'moving image'}: expected 3D or 4D data, "
                         f"got shape {data.shape}")
    vox = voxel_map(mat, reference_img.affine, moving_img.affine)
    out = resample_array(data, vox, ref_shape, order=order, fill=fill, device=device)
    header = moving_img.header.copy() if isinstance(moving_img, nb.Nifti1Image) else None
    img = nb.Nifti1Image(out, reference_img.affine, header)
    ref_header = getattr(reference_img, "header", None)
    codes = (1, 1)
    if isinstance(ref_header, nb.Nifti1Header):
        codes = (int(ref_header["sform_code"]) or 1, int(ref_header["qform_code"]) or 1)
    img.set_sform(reference_img.affine, codes[0])
    img.set_qform(reference_img.affine, codes[1])
    img.set_data_dtype(out.dtype)
    zooms = tuple(np.sqrt((reference_img.affine[:3, :3] ** 2).sum(0)))
    if out.ndim == 4:
        zooms += (moving_img.header.get_zooms()[3] if len(moving_img.header.get_zooms()) > 3 else 1.0,)
    img.header.set_zooms(zooms)
    return img

# SPDX-License-Identifier: Apache-2.0
"""In-memory volumes: channel-first tensors with their voxel-to-world matrix.

Nibabel images enter the engine here and nowhere else. A :class:`Volume` holds data shaped
``[C, I, J, K]`` (or ``[C, I, J]`` for 2D images) and the matching ``(n + 1, n + 1)`` affine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError


@dataclass(frozen=True)
class Volume:
    """Channel-first image data and its voxel-to-world (RAS mm) matrix.

    Attributes
    ----------
    data : (C, *shape) tensor
        float32 intensities.
    affine : (n + 1, n + 1) array
        Voxel-to-world matrix for the ``n`` spatial axes.
    name : str
        What the volume is called in error messages (a file name, or a role).
    """

    data: torch.Tensor
    affine: np.ndarray
    name: str = "image"

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.data.ndim - 1

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape."""
        return tuple(self.data.shape[1:])

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel sizes (mm) along each array axis."""
        return np.sqrt((self.affine[:-1, :-1] ** 2).sum(axis=0))

    @property
    def channels(self) -> int:
        """Number of channels (contrasts registered jointly)."""
        return self.data.shape[0]


def _name_of(img, fallback: str) -> str:
    filename = getattr(img, "get_filename", lambda: None)()
    return str(filename) if filename else fallback


def _spatial(img, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine of a nibabel image, squeezed to 2 or 3 spatial dimensions."""
    data = np.asanyarray(img.dataobj)
    affine = np.asarray(img.affine, dtype=float)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[2] == 1:
        # A single slice: register in the (x, y) world plane.
        data = data[..., 0]
    if data.ndim == 2:
        affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
    elif data.ndim != 3:
        raise InputError(f"{name}: expected a 2D or 3D image, got shape {data.shape}")
    if np.iscomplexobj(data):
        raise InputError(f"{name}: complex-valued images are not supported")
    return data.astype(np.float32, copy=False), affine


def as_volume(images, *, name: str = "image", mask: bool = False) -> Volume:
    """Convert a nibabel image (or a list of them on one grid) to a :class:`Volume`.

    Parameters
    ----------
    images : nibabel image, sequence of nibabel images, or Volume
        Several images become the channels of one volume; they must share a grid.
    name : str
        Used in error messages when the images have no file name.
    mask : bool
        Binarise (``> 0``) instead of validating intensities.

    Raises
    ------
    InputError
        For images that are not 2D/3D, contain NaN/Inf, are all zero, or do not share a grid.
    """
    if isinstance(images, Volume):
        return images
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise InputError(f"{name}: no image given")
    arrays, affine, label = [], None, _name_of(images[0], name)
    for img in images:
        label_i = _name_of(img, name)
        data, aff = _spatial(img, label_i)
        if affine is not None and (data.shape != arrays[0].shape or not np.allclose(aff, affine, atol=1e-4)):
            raise InputError(f"{label_i}: channels of {name} must share one grid (shape and affine)")
        if mask:
            data = (np.nan_to_num(data) > 0).astype(np.float32)
            if not data.any():
                raise InputError(f"{label_i}: the mask is empty")
        else:
            if not np.isfinite(data).all():
                raise InputError(f"{label_i}: the image contains NaN or infinite values")
            if not data.any():
                raise InputError(f"{label_i}: the image is all zero")
        affine = aff
        arrays.append(data)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:-1, :-1])) < 1e-12:
        raise InputError(f"{label}: the header's voxel-to-world matrix is singular")
    tensor = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
    return Volume(tensor, affine, label)


def robust_range(values: torch.Tensor, *, lower: float = 0.5,
                 upper: float = 99.5) -> tuple[float, float]:
    """The ``lower`` and ``upper`` percentiles of the non-zero values (all values if none).

    Beyond 500 000 values, a regular sub-grid of a few hundred thousand is used (every
    ``k``-th voxel along every axis, a view whatever the memory layout): the percentiles of
    that many voxels are those of the image to a fraction of a percent, where flattening
    (a copy for a NIfTI's Fortran-ordered array), masking and partitioning a whole 1 mm
    volume took 20-40 ms per image. The range is never empty: constant data gives its
    minimum and maximum, and ``hi - lo`` is then replaced by one where it is zero (see
    :func:`robust_normalise`).

    >>> robust_range(torch.arange(1001.0))
    (5.995, 995.005)
    """
    if values.numel() > 500_000 and values.ndim > 0:
        step = max(1, round((values.numel() / 300_000) ** (1.0 / values.ndim)))
        values = values[(slice(None, None, step),) * values.ndim]
    flat = values.reshape(-1)
    nonzero = flat[flat != 0]
    if nonzero.numel() == 0:
        nonzero = flat
    lo, hi = np.percentile(nonzero.cpu().numpy(), [lower, upper])
    if not hi > lo:
        lo, hi = float(nonzero.min()), float(nonzero.max())
    return float(lo), float(hi)


def robust_normalise(data: torch.Tensor, *, lower: float = 0.5, upper: float = 99.5) -> torch.Tensor:
    """Winsorise each channel to percentiles of its non-zero voxels and scale to ``[0, 1]``.

    Parameters
    ----------
    data : (C, ...) tensor
    lower, upper : float
        Percentiles (as ANTs' default winsorisation, 0.5 and 99.5), see :func:`robust_range`.

    Examples
    --------
    >>> x = torch.arange(1000.0).reshape(1, 10, 10, 10)
    >>> y = robust_normalise(x)
    >>> float(y.min()), float(y.max())
    (0.0, 1.0)
    """
    out = torch.empty_like(data)
    for c in range(data.shape[0]):
        lo, hi = robust_range(data[c], lower=lower, upper=upper)
        span = hi - lo if hi > lo else 1.0
        out[c] = ((data[c] - lo) / span).clamp_(0.0, 1.0)
    return out

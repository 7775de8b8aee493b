# SPDX-License-Identifier: Apache-2.0
"""Pyramid levels of a series, made once and shared by every pass and chunk.

:func:`~niaffine.engine.register_batch` builds a pyramid of every fixed and moving image it is
given. For a series that means smoothing B copies of the same reference per call, and the same
volumes again in every pass. Here each level of each volume (and of each reference) is made
once: a Gaussian blur of ``smoothing * spacing`` (standard deviation, mm) then sampling every
``round(spacing / voxel)`` voxels (the first voxel kept, ``affine @ diag(steps)``). The engine
then gets images already at the level's resolution and does no smoothing of its own.

On the CPU the blur is scipy's (about ten times faster than a 3D convolution in torch there);
on CUDA it is :func:`niaffine.engine.pyramid.gaussian_smooth` on the device.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage as ndi

from .pyramid import gaussian_smooth
from .volume import Volume


def level_steps(voxel_size, spacing_mm: float) -> np.ndarray:
    """Sampling step (voxels) per axis of a level of ``spacing_mm``.

    >>> level_steps([2.5, 2.5, 3.5], 5.0).tolist()
    [2, 2, 1]
    """
    return np.maximum(1, np.round(spacing_mm / np.asarray(voxel_size, dtype=float))).astype(int)


def _blur_numpy(volume: np.ndarray, sigma_vox) -> np.ndarray:
    if max(sigma_vox) <= 0.05:
        return volume
    return ndi.gaussian_filter(volume, sigma_vox, mode="nearest", truncate=2.5)


class SeriesLevels:
    """Level images of the volumes of one series (cached per level and volume).

    Parameters
    ----------
    data : (T, X, Y, Z) float32 array
    affine : (4, 4) array
    name : str
        Used to name volumes in messages (``"<name> volume <t>"``).
    device : torch.device
        Where level data lives (blurred there on CUDA).
    """

    def __init__(self, data: np.ndarray, affine: np.ndarray, name: str, device: torch.device):
        self.data, self.affine, self.name, self.device = data, np.asarray(affine, float), name, device
        self.voxel = nib.affines.voxel_sizes(self.affine)
        self._cache: dict = {}

    def volumes(self, items, spacing_mm: float, sigma_mm: float) -> list[Volume]:
        """Level ``spacing_mm`` (blurred by ``sigma_mm``) of the volumes ``items``."""
        key = (round(spacing_mm, 6), round(sigma_mm, 6))
        cache = self._cache.setdefault(key, {})
        missing = [t for t in items if t not in cache]
        if missing:
            steps = level_steps(self.voxel, spacing_mm)
            affine = self.affine @ np.diag(np.r_[steps, 1.0])
            for t, level in zip(missing, blur_and_sample(self.data[missing], self.voxel, steps,
                                                         sigma_mm, self.device)):
                cache[t] = Volume(level[None], affine, f"{self.name} volume {t}")
        return [cache[t] for t in items]

    def forget(self, items) -> None:
        """Drop cached levels of ``items`` (their data changed)."""
        for cache in self._cache.values():
            for t in items:
                cache.pop(t, None)


def blur_and_sample(volumes: np.ndarray, voxel, steps, sigma_mm: float, device) -> list:
    """Blur ``(B, X, Y, Z)`` volumes by ``sigma_mm`` and sample them every ``steps`` voxels.

    Returns
    -------
    list of (X', Y', Z') tensors on ``device``
    """
    sigma_vox = [float(sigma_mm) / float(v) for v in voxel]
    sl = tuple(slice(None, None, int(s)) for s in steps)
    if torch.device(device).type == "cuda":
        batch = torch.from_numpy(np.ascontiguousarray(volumes))[:, None].to(device)
        if max(sigma_vox) > 0.05:
            batch = gaussian_smooth(batch, sigma_vox)
        return [v[0][sl].contiguous() for v in batch]
    return [torch.from_numpy(np.ascontiguousarray(_blur_numpy(v, sigma_vox)[sl]))
            for v in volumes]


def reference_level(ref_img, mask_img, spacing_mm: float, sigma_mm: float, device):
    """The reference and its mask at one level: ``(Volume, mask image)``.

    The mask is dilated by one voxel before it is sampled at coarse levels, so that thin
    parts of the head are not lost between samples.
    """
    voxel = nib.affines.voxel_sizes(ref_img.affine)
    steps = level_steps(voxel, spacing_mm)
    data = np.asanyarray(ref_img.dataobj).astype(np.float32)[None]
    level = blur_and_sample(data, voxel, steps, sigma_mm, device)[0]
    affine = np.asarray(ref_img.affine, dtype=float) @ np.diag(np.r_[steps, 1.0])
    name = ref_img.get_filename() or "reference"
    mask = np.asanyarray(mask_img.dataobj) > 0
    if (steps > 1).any():
        mask = ndi.binary_dilation(mask)
    mask = mask[tuple(slice(None, None, int(s)) for s in steps)]
    return Volume(level[None], affine, name), nib.Nifti1Image(mask.astype(np.uint8), affine)


def level_spacing(volume: Volume) -> float:
    """The spacing to give the engine for a volume already at its level: its smallest voxel
    size (so that the engine neither blurs nor resamples it again)."""
    return float(np.min(volume.voxel_size))

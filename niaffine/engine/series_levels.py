# SPDX-License-Identifier: Apache-2.0
"""Pyramid levels of a series, made once and shared by every pass and chunk.

:func:`~niaffine.engine.register_batch` builds a pyramid of every fixed and moving image it is
given. For a series that means smoothing B copies of the same reference per call, and the same
volumes again in every pass. Here each level of each volume (and of each reference) is made
once: a Gaussian blur of ``smoothing * spacing`` (standard deviation, mm) then sampling every
``round(spacing / voxel)`` voxels (the first voxel kept, ``affine @ diag(steps)``). The engine
then gets images already at the level's resolution and does no smoothing of its own.

Every volume is winsorised and scaled to ``[0, 1]`` once (as the engine would at every call,
:func:`~niaffine.engine.volume.robust_normalise`), before it is blurred. A coarse level is made from
a finer one already made where its sampling steps are multiples of the finer one's: Gaussian
blurs add in variance, so the finer level is blurred by ``sqrt(sigma**2 - sigma_finer**2)`` on
its own, smaller grid (the finer level's own blur keeps its sampling free of aliasing).
:func:`~niaffine.engine.series_passes.realign` asks for the levels finest first for that reason.

On the CPU the blur is scipy's (about ten times faster than a 3D convolution in torch there);
on CUDA it is :func:`niaffine.engine.pyramid.gaussian_smooth` on the device.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage as ndi

from ..threads import thread_map
from .pyramid import gaussian_smooth
from .volume import Volume, robust_normalise


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
        steps = level_steps(self.voxel, spacing_mm)
        key = (tuple(int(v) for v in steps), round(float(sigma_mm), 6))
        cache = self._cache.setdefault(key, {})
        missing = [t for t in items if t not in cache]
        if missing:
            affine = self.affine @ np.diag(np.r_[steps, 1.0])
            source = self._finer_level(missing, key)
            if source is None:
                levels = blur_and_sample(self._normalised(missing), self.voxel, steps,
                                         sigma_mm, self.device)
            else:  # made from a finer level of the same volumes
                (s_steps, s_sigma), s_cache = source
                stack = torch.stack([s_cache[t].data[0] for t in missing])
                extra = float(np.sqrt(max(float(sigma_mm) ** 2 - s_sigma ** 2, 0.0)))
                levels = blur_and_sample(stack, self.voxel * np.asarray(s_steps), steps //
                                         np.asarray(s_steps), extra, self.device)
            for t, level in zip(missing, levels):
                cache[t] = Volume(level[None], affine, f"{self.name} volume {t}")
        return [cache[t] for t in items]

    def _finer_level(self, items, key):
        """The coarsest cached level of ``items`` that ``key`` can be made from, or None."""
        steps, sigma = np.asarray(key[0]), key[1]
        best = None
        for (s_steps, s_sigma), cache in self._cache.items():
            finer = np.asarray(s_steps)
            if ((s_steps, s_sigma) == key or (steps % finer).any() or s_sigma > sigma + 1e-9
                    or not all(t in cache for t in items)):
                continue
            if best is None or np.prod(finer) > np.prod(best[0][0]):
                best = ((s_steps, s_sigma), cache)
        return best

    def _normalised(self, items) -> np.ndarray:
        """Volumes ``items`` winsorised and scaled to ``[0, 1]`` (each by its own range)."""
        out = np.empty((len(items),) + self.data.shape[1:], dtype=np.float32)

        def scale(k):
            out[k] = robust_normalise(torch.from_numpy(self.data[items[k]])[None])[0].numpy()

        thread_map(scale, range(len(items)))
        return out


def blur_and_sample(volumes, voxel, steps, sigma_mm: float, device) -> list:
    """Blur ``(B, X, Y, Z)`` volumes by ``sigma_mm`` and sample them every ``steps`` voxels.

    Parameters
    ----------
    volumes : (B, X, Y, Z) array or tensor
    voxel : (3,) voxel sizes (mm) of ``volumes``
    steps : (3,) int
    sigma_mm : float
    device : torch.device

    Returns
    -------
    list of (X', Y', Z') tensors on ``device``
    """
    sigma_vox = [float(sigma_mm) / float(v) for v in voxel]
    sl = tuple(slice(None, None, int(s)) for s in steps)
    if torch.device(device).type == "cuda":
        batch = torch.as_tensor(volumes)[:, None].to(device)
        if max(sigma_vox) > 0.05:
            batch = gaussian_smooth(batch, sigma_vox)
        return [v[0][sl].contiguous() for v in batch]
    arrays = volumes.numpy() if isinstance(volumes, torch.Tensor) else volumes
    return thread_map(lambda v: torch.from_numpy(np.ascontiguousarray(_blur_numpy(v, sigma_vox)[sl])),
                      arrays)


def reference_level(ref_img, mask_img, spacing_mm: float, sigma_mm: float, device):
    """The reference and its mask at one level: ``(Volume, mask image)``.

    The reference is scaled to ``[0, 1]`` as the volumes are (:class:`SeriesLevels`). The
    mask is dilated by one voxel before it is sampled at coarse levels, so that thin parts of
    the head are not lost between samples.
    """
    voxel = nib.affines.voxel_sizes(ref_img.affine)
    steps = level_steps(voxel, spacing_mm)
    data = robust_normalise(torch.from_numpy(
        np.asanyarray(ref_img.dataobj).astype(np.float32)[None])).numpy()
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

# SPDX-License-Identifier: Apache-2.0
"""The passes of a series realignment: chunks of volumes through
:func:`~niaffine.engine.register_batch` level by level, failures split off, outliers retried.

Used by :func:`niaffine.engine.series.register_series`; see its module for the method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch

from ..errors import DeviceMemoryError, InputError, RegistrationError
from . import metrics as M
from .register import level_tolerances, register_batch
from .series_levels import SeriesLevels, level_spacing, reference_level

LOGGER = logging.getLogger("niaffine.engine.series")

#: Robust z-score of a volume's final metric above which it is retried and flagged.
OUTLIER_Z = 3.5
#: Outliers are only looked for among at least this many volumes of one kind.
OUTLIER_MIN_VOLUMES = 8
#: Default memory budget (MiB) for one engine call on the CPU; on CUDA half the free memory.
CPU_BUDGET_MB = 1024.0
#: Bytes per sample point and volume in one engine call (points, values, gradients, subsets).
_BYTES_PER_POINT = 320
#: Bytes per voxel and volume (the volume, the stacked reference and masks, level copies).
_BYTES_PER_VOXEL = 28


@dataclass(frozen=True)
class Settings:
    levels: tuple
    smoothing: float
    max_samples: int | None
    max_iterations: int
    tolerance: float
    tolerance_mm: float
    coarse_tolerance: float
    device: torch.device
    seed: int
    callback: Callable | None


class State:
    """Per-volume matrices, final losses, iteration counts, failures and outliers."""

    def __init__(self, n_volumes: int):
        self.matrices = np.tile(np.eye(4), (n_volumes, 1, 1))
        self.losses = np.full(n_volumes, np.nan)
        self.iterations = np.zeros(n_volumes, dtype=int)
        self.failed: dict[int, str] = {}
        self.outliers: set[int] = set()


def _scaled(function, scale: float, offset: float, name: str):
    """``scale * (function + offset)``: a loss whose gradients are of order one per mm.

    The engine's optimiser takes a first steepest-descent step as long as the gradient (in
    loss per mm), capped at 1: with raw correlations (losses near -1, gradients ~1e-3 per mm
    near the answer) the first step moves a thousandth of a millimetre and passes for
    convergence.
    """

    def loss(fixed, moving, weight):
        return scale * (function(fixed, moving, weight) + offset)

    loss.__name__ = name
    return loss


#: The metrics of a series realignment, scaled so that the optimiser's first step is useful.
SERIES_METRICS = {
    "ncc": _scaled(M.ncc, 1000.0, 1.0, "ncc"),
    "mse": _scaled(M.mse, 1000.0, 0.0, "mse"),
    "mi": _scaled(lambda f, m, w: M.mutual_information(f, m, w, bins=32), 100.0, 0.0, "mi"),
    "nmi": _scaled(lambda f, m, w: M.mutual_information(f, m, w, bins=32, normalised=True),
                   100.0, 0.0, "nmi"),
    "cr": _scaled(lambda f, m, w: M.correlation_ratio(f, m, w, bins=32), 100.0, 1.0, "cr"),
}


def budget_mb(memory_mb, device: torch.device) -> float:
    if memory_mb is not None:
        return float(memory_mb)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free / 2**20
    return CPU_BUDGET_MB


def volumes_per_call_for(mask_img, shape, budget_mb: float, max_samples=None) -> int:
    """How many volumes one engine call may hold within ``budget_mb`` (at least one).

    >>> import nibabel as nib
    >>> m = nib.Nifti1Image(np.ones((40, 40, 30), np.uint8), np.eye(4))
    >>> volumes_per_call_for(m, (40, 40, 30), 1024.0)
    64
    """
    points = int(np.count_nonzero(np.asanyarray(mask_img.dataobj)))
    if max_samples is not None:
        points = min(points, int(max_samples))
    per_volume = points * _BYTES_PER_POINT + int(np.prod(shape)) * _BYTES_PER_VOXEL
    return max(1, int(budget_mb * 2**20 // max(per_volume, 1)))


def realign(state: State, vols, todo, target, dofs, metrics, settings, chunk,
             stage, levels=None) -> None:
    """Register the volumes ``todo`` to the reference, from ``state.matrices``, in place."""
    groups: dict = {}
    for t in todo:
        groups.setdefault((dofs[t], metrics[t]), []).append(t)
    done = 0
    for (dof, metric), members in groups.items():
        for lo in range(0, len(members), chunk):
            items = members[lo:lo + chunk]
            found = _register_chunk(items, state.matrices, vols, target, dof, metric,
                                    settings, levels)
            for t, outcome in found.items():
                if isinstance(outcome, Exception):
                    state.failed[t] = str(outcome).splitlines()[0]
                    continue
                state.failed.pop(t, None)
                state.matrices[t], state.losses[t], its = outcome
                state.iterations[t] += its
            done += len(items)
            LOGGER.info("%s: %d/%d volumes", stage, done, len(todo))
            if settings.callback is not None:
                settings.callback(stage, done, len(todo))


def _register_chunk(items, matrices, vols: SeriesLevels, target: Target, dof, metric,
                    settings, levels=None) -> dict:
    """``{volume: (matrix, final loss, iterations) or Exception}``; a failing chunk is split.

    ``levels`` (default: every level of ``settings``) are multiples of the reference's voxel.
    Levels coarser than the finest of ``settings`` stop early as a registration's coarse levels
    do (:func:`~niaffine.engine.register.level_tolerances`): each series level is one engine
    call, whose single level the engine would treat as its finest.
    """
    current = {t: matrices[t] for t in items}
    iterations = dict.fromkeys(items, 0)
    levels = levels or settings.levels
    try:
        for factor in sorted(settings.levels):  # finest first: coarser levels reuse finer ones
            spacing = factor * target.voxel
            vols.volumes(items, spacing, settings.smoothing * spacing)
        for factor in levels:
            spacing = factor * target.voxel
            sigma = settings.smoothing * spacing
            fixed, fixed_mask = target.level(spacing, sigma)
            tolerance, tolerance_mm = level_tolerances(
                factor == min(settings.levels), spacing, settings.tolerance,
                settings.tolerance_mm, settings.coarse_tolerance)
            results = register_batch(
                [fixed] * len(items), vols.volumes(items, spacing, sigma),
                fixed_masks=[fixed_mask] * len(items),
                initial_matrices=[current[t] for t in items], dof=dof,
                metric=SERIES_METRICS[metric],
                init="identity", rotation_search=False, normalise=False,
                rigid_first=factor == settings.levels[0],
                levels_mm=(level_spacing(fixed),), smoothing_mm=0.0,
                edge_mm=0.0, max_samples=settings.max_samples,
                max_iterations=settings.max_iterations, tolerance=tolerance,
                tolerance_mm=tolerance_mm, device=settings.device, seed=settings.seed)
            for t, res in zip(items, results):
                current[t] = res.matrix
                iterations[t] += sum(res.iterations)
    except (InputError, RegistrationError) as err:
        if len(items) == 1:
            return {items[0]: err}
        if isinstance(err, DeviceMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        LOGGER.warning("%d volumes failed together (%s); splitting", len(items),
                       str(err).splitlines()[0])
        half = len(items) // 2
        found = _register_chunk(items[:half], matrices, vols, target, dof, metric, settings,
                                levels)
        found.update(_register_chunk(items[half:], matrices, vols, target, dof, metric,
                                     settings, levels))
        return found
    return {t: (current[t], r.final_metric, iterations[t]) for t, r in zip(items, results)}


class Target:
    """The reference and its mask, with their levels made on first use."""

    def __init__(self, image, mask, device):
        self.image, self.mask, self.device = image, mask, device
        self.voxel = float(np.min(nib.affines.voxel_sizes(image.affine)))
        self._levels: dict = {}

    def level(self, spacing_mm: float, sigma_mm: float):
        key = (round(spacing_mm, 6), round(sigma_mm, 6))
        if key not in self._levels:
            self._levels[key] = reference_level(self.image, self.mask, spacing_mm, sigma_mm,
                                                self.device)
        return self._levels[key]


def outlying(values: np.ndarray, window: int = 3) -> np.ndarray:
    """Which final losses stand out from their neighbours in time.

    Each loss is compared with the median of the ``2 * window + 1`` losses around it (a
    volume that landed in a wrong minimum is worse than the volumes acquired just before and
    after it, while a slow trend or a step in the losses, e.g. after a jump to a pose the
    reference fits less well, is not). A volume is an outlier when that excess is above
    :data:`OUTLIER_Z` robust standard deviations (1.4826 MAD of all excesses) and larger than
    the local median itself (twice the local loss for the correlation loss, zero at a perfect
    fit). Never with fewer than :data:`OUTLIER_MIN_VOLUMES` finite values.

    >>> outlying(np.array([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02, 5.0])).tolist()
    [False, False, False, False, False, False, False, False, True]
    >>> bool(outlying(np.r_[np.full(10, 1.0), np.full(10, 3.0)]).any())  # a step is no outlier
    False
    """
    values = np.asarray(values, dtype=float)
    out = np.zeros(values.shape, dtype=bool)
    finite = np.flatnonzero(np.isfinite(values))
    if len(finite) < OUTLIER_MIN_VOLUMES:
        return out
    series = values[finite]
    local = np.array([np.median(series[max(0, k - window):k + window + 1])
                      for k in range(len(series))])
    excess = series - local
    mad = 1.4826 * np.median(np.abs(excess - np.median(excess)))
    out[finite] = (excess > OUTLIER_Z * max(mad, 1e-12)) & (excess > np.abs(local))
    return out


def retry_outlier_volumes(state: State, groups, vols, dofs, metrics, settings) -> None:
    """Register outlier volumes again from their neighbours' transforms; keep the best.

    ``groups`` lists ``(volumes, target)``: volumes compared with one another, and the
    reference their final losses were measured against.
    """
    for group, target in groups:
        group = [t for t in group if t not in state.failed]
        suspects = [t for t, bad in zip(group, outlying(state.losses[group])) if bad]
        if not suspects:
            continue
        LOGGER.info("retrying outlier volumes %s from their neighbours' transforms", suspects)
        good = [t for t in group if t not in suspects]
        for side in (-1, 1):
            trial = state.matrices.copy()
            for t in suspects:
                neighbours = [g for g in good if (g - t) * side > 0]
                if neighbours:
                    trial[t] = state.matrices[min(neighbours, key=lambda g: abs(g - t))]
            found = _register_chunk(suspects, trial, vols, target, dofs[suspects[0]],
                                    metrics[suspects[0]], settings)
            for t, outcome in found.items():
                if not isinstance(outcome, Exception) and outcome[1] < state.losses[t]:
                    state.matrices[t], state.losses[t] = outcome[0], outcome[1]
                    state.iterations[t] += outcome[2]
        state.outliers.update(t for t, bad in zip(group, outlying(state.losses[group])) if bad)


def fill_failed(matrices: np.ndarray, failed: dict) -> np.ndarray:
    """Failed volumes take the matrix of the nearest good volume (earlier one on ties)."""
    out = matrices.copy()
    good = [t for t in range(len(matrices)) if t not in failed]
    for t in failed:
        out[t] = matrices[min(good, key=lambda g: (abs(g - t), g))]
    return out

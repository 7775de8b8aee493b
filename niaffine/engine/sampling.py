# SPDX-License-Identifier: Apache-2.0
"""Per-level problem data: fixed sample points, moving volumes, and the batched loss.

At each pyramid level the metric is evaluated on a set of fixed-image voxel centres (a seeded
random subset of the voxels inside the fixed mask, or inside the dilated foreground when no mask
is given, as ANTs samples a percentage of voxels). Fixed intensities at those points are exact;
moving intensities are interpolated at the transformed points. Dense metrics (local NCC) use
every voxel of the level grid instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .frames import (
    apply_homogeneous,
    grid_shape_for,
    inside_grid,
    sample_grid,
    voxel_centres,
    world_to_grid,
)


@dataclass
class LevelProblem:
    """Everything one level's loss needs, on one device.

    Attributes
    ----------
    points : (B, N, n) tensor
        Fixed world sample points, in the moving data's dtype (float32 resolves 1e-5 mm at
        200 mm from the origin).
    fixed_values : (B, C, N) tensor, or (B, C, *shape) for dense metrics
    weights : (B, N) tensor, or (B, 1, *shape) for dense metrics
    moving : (B, C, *moving_shape) tensor
        Moving intensities at this level.
    moving_mask : (B, 1, *moving_shape) tensor or None
    world_to_moving_grid : (B, n + 1, n + 1) float64 tensor
    dense_shape : tuple or None
        Spatial shape of the fixed level grid when the metric is dense.
    moving_extent : (B, 1, n) tensor or None
        Upper grid coordinate of each item's data when moving images of different shapes are
        zero-padded to one array (None: the whole array is data).
    """

    points: torch.Tensor
    fixed_values: torch.Tensor
    weights: torch.Tensor
    moving: torch.Tensor
    moving_mask: torch.Tensor | None
    world_to_moving_grid: torch.Tensor
    dense_shape: tuple | None = None
    moving_extent: torch.Tensor | None = None

    @property
    def samples(self) -> int:
        """Number of sample points per batch item."""
        return self.points.shape[1]

    def warp(self, matrix: torch.Tensor):
        """Moving values and validity weights at the transformed sample points.

        Parameters
        ----------
        matrix : (B, n + 1, n + 1) float64 tensor
            Fixed-to-moving world matrices.

        Returns
        -------
        values : (B, C, N) tensor (or dense)
        weights : (B, N) tensor (or dense)
        """
        ndim = self.points.shape[-1]
        to_grid = self.world_to_moving_grid @ matrix
        coords = apply_homogeneous(to_grid.to(self.points.dtype), self.points).to(self.moving.dtype)
        grid = grid_shape_for(coords, ndim)
        values = sample_grid(self.moving, grid)
        b, c = values.shape[:2]
        values = values.reshape(b, c, -1)
        if self.moving_extent is None:
            inside = inside_grid(coords.detach())
        else:
            c = coords.detach()
            inside = ((c >= -1.0 - 1e-6) & (c <= self.moving_extent + 1e-6)).all(dim=-1)
        weights = self.weights_flat() * inside.to(values.dtype)
        if self.moving_mask is not None:
            inside_mask = sample_grid(self.moving_mask, grid.detach(), padding_mode="zeros")
            weights = weights * (inside_mask.reshape(b, -1) > 0.5).to(values.dtype)
        if self.dense_shape is not None:
            values = values.reshape(b, c, *self.dense_shape)
            weights = weights.reshape(b, 1, *self.dense_shape)
        return values, weights

    def subset(self, items: list[int]) -> LevelProblem:
        """The problem of some batch items only (views where ``items`` are consecutive).

        Examples
        --------
        >>> z = torch.zeros
        >>> p = LevelProblem(z(3, 4, 3), z(3, 1, 4), z(3, 4), z(3, 1, 2, 2, 2), None, z(3, 4, 4))
        >>> p.subset([1, 2]).moving.shape[0], p.subset([0, 2]).points.shape[0]
        (2, 2)
        """
        items = [int(b) for b in items]
        if items == list(range(items[0], items[-1] + 1)):
            index = slice(items[0], items[-1] + 1)
        else:
            index = torch.as_tensor(items, device=self.points.device)

        def pick(value):
            return None if value is None else value[index]

        return LevelProblem(
            points=pick(self.points), fixed_values=pick(self.fixed_values),
            weights=pick(self.weights), moving=pick(self.moving),
            moving_mask=pick(self.moving_mask), world_to_moving_grid=pick(self.world_to_moving_grid),
            dense_shape=self.dense_shape, moving_extent=pick(self.moving_extent),
        )

    def weights_flat(self) -> torch.Tensor:
        """Sample weights as ``(B, N)``."""
        return self.weights.reshape(self.weights.shape[0], -1)

    def overlap(self, matrix: torch.Tensor) -> torch.Tensor:
        """Fraction ``(B,)`` of the fixed sample weight that lands inside the moving image."""
        with torch.no_grad():
            _, w = self.warp(matrix)
            w = w.reshape(w.shape[0], -1)
            return w.sum(-1) / self.weights_flat().sum(-1).clamp_min(1e-8)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(B, 1, *spatial)`` masks by a cube of side ``2 * radius + 1``.

    Separable: a cube is the product of three segments, and each segment is an OR of shifted
    views of a byte mask (about 8x cheaper on a CPU than max pooling the float mask).

    >>> m = torch.zeros(1, 1, 5, 5, 5); m[0, 0, 2, 2, 2] = 1
    >>> int(dilate(m, 1).sum()), int(erode(dilate(m, 1), 1).sum())
    (27, 1)
    """
    if radius <= 0:
        return mask
    ndim = mask.ndim - 2
    out = mask > 0.5
    for axis in range(ndim):
        dim = 2 + axis
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius
        padded = F.pad(out.to(torch.uint8), pad).bool()
        length = out.shape[dim]
        acc = padded.narrow(dim, 0, length).clone()
        for offset in range(1, 2 * radius + 1):
            acc |= padded.narrow(dim, offset, length)
        out = acc
    return out.to(mask.dtype)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of ``(B, 1, *spatial)`` masks by a cube of side ``2 * radius + 1``."""
    if radius <= 0:
        return mask
    return 1.0 - dilate(1.0 - mask, radius)


def sample_points(
    fixed: torch.Tensor,
    affine: np.ndarray,
    region: torch.Tensor,
    *,
    max_samples: int | None,
    generators: list[torch.Generator],
    same_as: list[int] | None = None,
):
    """Draw fixed sample points inside ``region`` for every batch item.

    Parameters
    ----------
    fixed : (B, C, *shape) tensor
        Fixed intensities at this level.
    affine : (B, n + 1, n + 1) array
        Voxel-to-world matrices of the level grid.
    region : (B, 1, *shape) bool tensor
        Where samples may be drawn.
    max_samples : int or None
        Cap per item; ``None`` keeps every voxel of the region.
    generators : list of torch.Generator
        One seeded CPU generator per batch item, so an item's samples do not depend on the
        other items of its batch.
    same_as : list of int, optional
        For each item, an earlier item (or itself) with the same fixed data, affine, region
        and generator state: that item's points are copied rather than drawn again (one
        reference for every volume of a series, one template for many subjects).

    Returns
    -------
    points : (B, N, n) float64 tensor
    values : (B, C, N) tensor
    weights : (B, N) tensor
        1 for drawn points, 0 for padding when items have fewer region voxels than others.
    """
    b, c = fixed.shape[:2]
    shape = fixed.shape[2:]
    flat_region = region.reshape(b, -1).cpu()
    same_as = list(range(b)) if same_as is None else [int(k) for k in same_as]
    chosen = []
    for item in range(b):
        if same_as[item] != item:
            chosen.append(chosen[same_as[item]])
            continue
        idx = torch.nonzero(flat_region[item], as_tuple=False)[:, 0]
        if max_samples is not None and idx.numel() > max_samples:
            idx = idx[random_subset(idx.numel(), max_samples, generators[item])]
        chosen.append(idx)
    n = max(int(idx.numel()) for idx in chosen)
    points = torch.zeros(b, n, len(shape), dtype=torch.float64)
    values = torch.zeros(b, c, n, dtype=fixed.dtype)
    weights = torch.zeros(b, n, dtype=fixed.dtype)
    flat_fixed = fixed.reshape(b, c, -1).cpu()
    for item, idx in enumerate(chosen):
        if same_as[item] != item:
            k = same_as[item]
            points[item], values[item], weights[item] = points[k], values[k], weights[k]
            continue
        aff = torch.as_tensor(np.asarray(affine[item], dtype=float))
        k = idx.numel()
        values[item, :, :k] = flat_fixed[item][:, idx]
        voxels = voxel_indices(idx, tuple(shape)).to(torch.float64)
        points[item, :k] = voxels @ aff[:-1, :-1].T + aff[:-1, -1]
        weights[item, :k] = 1.0
    return points, values, weights


def random_subset(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct indices drawn uniformly from ``range(n)``, in increasing order.

    A permutation of all ``n`` indices costs ``O(n)`` (75 ms for the 8.7 million voxels of a
    1 mm template grid, of which 100 000 are kept). For ``k`` up to an eighth of ``n``,
    indices are drawn with replacement instead (a few percent more than ``k``), the distinct
    ones kept and ``k`` of those chosen at random: the distinct values of independent uniform
    draws are a uniformly random subset of their size, so the result is one of ``k``.

    >>> g = torch.Generator().manual_seed(0)
    >>> pick = random_subset(1000, 50, g)
    >>> len(pick), len(set(pick.tolist())), bool((pick[1:] > pick[:-1]).all())
    (50, 50, True)
    """
    if k >= n:
        return torch.arange(n)
    if n <= 8 * k:  # a permutation is as cheap
        return torch.randperm(n, generator=generator)[:k].sort().values
    # expected distinct values of m draws: n (1 - exp(-m / n)); ask for 2 % more than k
    draws = int(math.ceil(-n * math.log1p(-1.02 * k / n))) + 32
    distinct = torch.unique(torch.randint(n, (draws,), generator=generator))
    while distinct.numel() < k:  # rare: another round of draws
        more = torch.randint(n, (k - distinct.numel() + 32,), generator=generator)
        distinct = torch.unique(torch.cat([distinct, more]))
    keep = torch.randperm(distinct.numel(), generator=generator)[:k]
    return distinct[keep].sort().values


def voxel_indices(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(N, n)`` voxel indices of C-order flat indices into ``shape``.

    The same as ``torch.stack(torch.unravel_index(flat, shape), -1)``, whose first call
    imports sympy (about a second of every process's start).

    >>> voxel_indices(torch.tensor([0, 5, 23]), (2, 3, 4)).tolist()
    [[0, 0, 0], [0, 1, 1], [1, 2, 3]]
    """
    out = []
    rest = flat
    for size in reversed(shape):
        out.append(rest % size)
        rest = torch.div(rest, size, rounding_mode="floor")
    return torch.stack(out[::-1], dim=-1)


def dense_points(shape, affine: np.ndarray) -> torch.Tensor:
    """World coordinates ``(B, prod(shape), n)`` of every voxel of each item's level grid."""
    return torch.stack([voxel_centres(shape, a, dtype=torch.float64) for a in affine])


def grid_extent(extents, shape) -> torch.Tensor:
    """Upper ``grid_sample`` coordinates ``(B, 1, n)`` of items occupying ``extents`` of ``shape``.

    >>> grid_extent([[3, 5], [5, 5]], (5, 5)).tolist()
    [[[1.0, 0.0]], [[1.0, 1.0]]]
    """
    extents = np.asarray(extents, dtype=float)
    full = np.asarray(shape, dtype=float)
    upper = np.where(full > 1, -1.0 + 2.0 * (extents - 1) / np.maximum(full - 1, 1), 0.0)
    return torch.as_tensor(upper[:, ::-1].copy())[:, None, :]


def moving_grid_matrices(affine: np.ndarray, shape) -> torch.Tensor:
    """World-to-grid matrices ``(B, n + 1, n + 1)`` of each item's moving level grid."""
    return torch.as_tensor(np.stack([world_to_grid(a, shape) for a in affine]))

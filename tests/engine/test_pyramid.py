# SPDX-License-Identifier: Apache-2.0
"""Pyramid levels: the separable downsampling equals sampling every new voxel centre."""

import numpy as np
import pytest
import torch

from niaffine.engine.frames import sample_grid, voxel_centres, voxel_to_grid
from niaffine.engine.pyramid import build_pyramid, downsample


def _sampled(data: torch.Tensor, factors) -> torch.Tensor:
    """The reference: trilinear ``grid_sample`` at the voxel centres ``j * factor``."""
    shape = data.shape[2:]
    new_shape = [int(np.floor((n - 1) / f + 1e-6)) + 1 for n, f in zip(shape, factors)]
    positions = voxel_centres(new_shape, np.diag(list(factors) + [1.0]), dtype=torch.float64)
    to_grid = torch.as_tensor(voxel_to_grid(shape))
    grid = (positions @ to_grid[:-1, :-1].T + to_grid[:-1, -1]).float()
    points = grid.reshape(1, -1, *([1] * (len(shape) - 1)), len(shape)).expand(
        data.shape[0], *([-1] * (len(shape) + 1)))
    return sample_grid(data, points).reshape(*data.shape[:2], *new_shape)


@pytest.mark.parametrize("factors", [(1.5, 2.0, 1.0), (4 / 3, 4 / 3, 4 / 3), (3.0, 1.7, 2.5)])
def test_downsample_matches_trilinear_sampling(factors):
    data = torch.rand(2, 3, 17, 13, 11, generator=torch.Generator().manual_seed(1))
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    out, new_affine = downsample(data, affine, factors)
    expected = _sampled(data, factors)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(new_affine, affine @ np.diag(list(factors) + [1.0]))


def test_downsample_2d_and_identity():
    data = torch.rand(1, 1, 9, 7, generator=torch.Generator().manual_seed(2))
    out, _ = downsample(data, np.eye(3), [1.0, 1.0])
    assert out is data
    torch.testing.assert_close(downsample(data, np.eye(3), [2.0, 1.25])[0],
                               _sampled(data, (2.0, 1.25)), atol=2e-6, rtol=0)


def test_integer_factor_keeps_voxels_and_is_contiguous():
    data = torch.arange(2 * 9 * 8 * 7, dtype=torch.float32).reshape(1, 2, 9, 8, 7)
    out, _ = downsample(data, np.eye(4), [2.0, 3.0, 2.0])
    torch.testing.assert_close(out, data[:, :, ::2, ::3, ::2])
    assert out.is_contiguous()


def test_pyramid_level_of_a_constant_image_stays_constant():
    data = torch.full((1, 1, 20, 18, 16), 0.7)
    levels = build_pyramid(data, np.diag([1.5, 1.5, 1.5, 1.0])[None], [8.0, 2.0])
    for level, _ in levels:
        torch.testing.assert_close(level, torch.full_like(level, 0.7))
    assert levels[0][0].shape[2:] == (4, 4, 3)

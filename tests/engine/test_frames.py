# SPDX-License-Identifier: Apache-2.0
"""Voxel, world and ``grid_sample`` frames agree with nibabel and scipy."""

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from niaffine.data.geometry import make_grid
from niaffine.engine import frames

GRIDS_3D = {
    "RAS": {"orientation": "RAS", "oblique_deg": 0.0},
    "LPS": {"orientation": "LPS", "oblique_deg": 0.0},
    "oblique LIA": {"orientation": "LIA", "oblique_deg": (17.0, -9.0, 25.0)},
}


def _affine_2d(orientation: str) -> np.ndarray:
    """A 2D voxel-to-world matrix: RAS-like, flipped (LP) or rotated by 30 degrees."""
    flips = {"RAS": (1, 1), "LPS": (-1, -1), "oblique LIA": (1, -1)}[orientation]
    angle = np.deg2rad(30.0) if orientation == "oblique LIA" else 0.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = np.eye(3)
    affine[:2, :2] = rot @ np.diag([1.5 * flips[0], 2.5 * flips[1]])
    affine[:2, 2] = [-7.0, 12.0]
    return affine


def _sample_world(volume: np.ndarray, affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    """``grid_sample`` (align_corners=True) of ``volume`` at world points via ``world_to_grid``."""
    ndim = volume.ndim
    to_grid = frames.world_to_grid(affine, volume.shape)
    grid = world @ to_grid[:ndim, :ndim].T + to_grid[:ndim, ndim]
    data = torch.as_tensor(volume, dtype=torch.float64)[None, None]
    grid_t = torch.as_tensor(grid, dtype=torch.float64).reshape(1, -1, *([1] * (ndim - 1)), ndim)
    out = F.grid_sample(data, grid_t, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(-1).numpy()


@pytest.mark.parametrize("name", sorted(GRIDS_3D))
@pytest.mark.parametrize("ndim", [3, 2])
def test_world_to_grid_matches_scipy_map_coordinates(name, ndim):
    rng = np.random.default_rng(3)
    if ndim == 3:
        shape = (7, 9, 11)
        affine = make_grid(shape=shape, voxel_size=(1.5, 2.0, 2.5), centre=(4.0, -6.0, 9.0),
                           **GRIDS_3D[name])
    else:
        shape = (9, 13)
        affine = _affine_2d(name)
    volume = rng.random(shape)
    # Random points strictly inside the field of view, plus every voxel centre.
    voxels = rng.uniform(0.0, 1.0, (500, ndim)) * (np.array(shape) - 1)
    centres = np.argwhere(np.ones(shape)).astype(float)
    voxels = np.concatenate([voxels, centres])
    world = nib.affines.apply_affine(affine, voxels)

    ours = _sample_world(volume, affine, world)
    reference = ndi.map_coordinates(volume, voxels.T, order=1, mode="constant")
    assert np.allclose(ours, reference, atol=1e-10)
    # At voxel centres the sample is the voxel value itself.
    assert np.allclose(ours[500:], volume.reshape(-1), atol=1e-10)


@pytest.mark.parametrize("shape", [(4, 6, 9), (5, 3)])
def test_voxel_to_grid_corners_and_axis_order(shape):
    m = frames.voxel_to_grid(shape)
    ndim = len(shape)
    first = m @ np.r_[np.zeros(ndim), 1.0]
    last = m @ np.r_[np.array(shape) - 1.0, 1.0]
    assert np.allclose(first[:ndim], -1.0) and np.allclose(last[:ndim], 1.0)
    # grid_sample's x (first output) runs along the last array axis.
    step = m @ np.r_[np.eye(ndim)[-1], 1.0] - m @ np.r_[np.zeros(ndim), 1.0]
    assert np.isclose(step[0], 2.0 / (shape[-1] - 1))
    assert np.allclose(step[1:ndim], 0.0)


def test_world_to_grid_is_voxel_to_grid_after_inverse_affine():
    affine = make_grid(shape=(8, 8, 8), voxel_size=(1.0, 2.0, 3.0), orientation="PIR",
                       oblique_deg=12.0, centre=(1.0, 2.0, 3.0))
    voxels = np.random.default_rng(0).uniform(0, 7, (50, 3))
    world = nib.affines.apply_affine(affine, voxels)
    via_world = nib.affines.apply_affine(frames.world_to_grid(affine, (8, 8, 8)), world)
    via_voxel = nib.affines.apply_affine(frames.voxel_to_grid((8, 8, 8)), voxels)
    assert np.allclose(via_world, via_voxel, atol=1e-12)


def test_voxel_centres_match_nibabel():
    affine = make_grid(shape=(3, 4, 5), voxel_size=(1.2, 0.9, 2.0), orientation="LPS",
                       oblique_deg=20.0)
    points = frames.voxel_centres((3, 4, 5), affine, dtype=torch.float64).numpy()
    expected = nib.affines.apply_affine(affine, np.argwhere(np.ones((3, 4, 5))))
    assert np.allclose(points, expected, atol=1e-12)
    assert np.array_equal(frames.voxel_centres((2, 3)).numpy(), np.argwhere(np.ones((2, 3))))


def test_apply_homogeneous_is_batched_matrix_product():
    rng = np.random.default_rng(1)
    mats = torch.as_tensor(np.stack([np.vstack([rng.random((3, 4)), [0, 0, 0, 1]]) for _ in range(2)]))
    pts = torch.as_tensor(rng.random((2, 5, 3)))
    out = frames.apply_homogeneous(mats, pts)
    for b in range(2):
        assert np.allclose(out[b].numpy(), nib.affines.apply_affine(mats[b].numpy(), pts[b].numpy()))


def test_inside_grid():
    pts = torch.tensor([[[0.0, 0.0, 0.0], [1.0, -1.0, 1.0], [1.01, 0.0, 0.0]]])
    assert frames.inside_grid(pts).tolist() == [[True, True, False]]
    assert frames.inside_grid(pts, margin=0.02).tolist() == [[True, True, True]]


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_sample_grid_cut_in_pieces_equals_one_grid_sample(padding_mode):
    """One CPU item's points are sampled in pieces (threads): same values and gradients."""
    from niaffine.engine.frames import CPU_PIECES, MIN_PIECE, sample_grid

    gen = torch.Generator().manual_seed(0)
    volume = torch.rand(1, 2, 9, 10, 11, generator=gen, dtype=torch.float64)
    n = CPU_PIECES * MIN_PIECE + 5  # not a multiple of the pieces: the last one is padded
    points = (torch.rand(1, n, 1, 1, 3, generator=gen, dtype=torch.float64) * 2.2 - 1.1)
    ours, ref = points.clone().requires_grad_(True), points.clone().requires_grad_(True)
    out = sample_grid(volume, ours, padding_mode=padding_mode)
    expected = F.grid_sample(volume, ref, mode="bilinear", padding_mode=padding_mode,
                             align_corners=True)
    assert out.shape == expected.shape == (1, 2, n, 1, 1)
    assert torch.equal(out, expected)
    weights = torch.rand(expected.shape, generator=gen, dtype=torch.float64)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(ours.grad, ref.grad, rtol=0, atol=1e-12)

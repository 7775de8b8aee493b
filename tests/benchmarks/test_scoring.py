# SPDX-License-Identifier: Apache-2.0
"""Dice after resampling, determinants and the distance from the peers' median."""

import nibabel as nib
import numpy as np
import pytest

from benchmarks import scoring


def _shift(v):
    m = np.eye(4)
    m[:3, 3] = v
    return m


@pytest.fixture()
def box_masks():
    fixed = np.zeros((30, 30, 30), np.uint8)
    fixed[10:20, 10:20, 10:20] = 1
    fixed_img = nib.Nifti1Image(fixed, np.eye(4))
    # the moving mask is the same box, 4 mm further along x in world space (LPS grid)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [29.0, 29.0, 0.0]
    moving = np.zeros((30, 30, 30), np.uint8)
    world = nib.affines.apply_affine(np.linalg.inv(affine), np.argwhere(fixed) + [4, 0, 0])
    moving[tuple(np.rint(world).astype(int).T)] = 1
    return fixed_img, nib.Nifti1Image(moving, affine)


def test_mask_dice_uses_fixed_to_moving_matrices(box_masks):
    fixed, moving = box_masks
    assert scoring.mask_dice(_shift([4, 0, 0]), moving, fixed) == pytest.approx(1.0)
    assert scoring.mask_dice(_shift([-4, 0, 0]), moving, fixed) == pytest.approx(0.2)
    assert scoring.mask_dice(np.eye(4), moving, fixed) == pytest.approx(0.6)


def test_determinant():
    assert scoring.determinant(np.diag([2.0, 0.5, 0.6, 1.0])) == pytest.approx(0.6)


def test_consensus_leaves_out_niaffine_the_tool_itself_and_failures(box_masks):
    fixed, _ = box_masks
    matrices = {"niaffine": _shift([3, 0, 0]), "ants": _shift([0, 0, 0]),
                "elastix": _shift([1, 0, 0]), "niftyreg": _shift([2, 0, 0]),
                "mrtrix": _shift([50, 0, 0])}
    dices = {"mrtrix": 0.1}
    out = scoring.consensus_distances(matrices, fixed, dices)
    assert out["niaffine"] == pytest.approx(2.0)  # median of ants, elastix, niftyreg: 1
    assert out["ants"] == pytest.approx(1.5)      # median of elastix, niftyreg: 1.5
    assert out["mrtrix"] == pytest.approx(49.0)    # measured against all three
    assert scoring.consensus_distances({"niaffine": np.eye(4), "ants": np.eye(4)},
                                       fixed)["niaffine"] is None

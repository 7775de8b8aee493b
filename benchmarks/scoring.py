# SPDX-License-Identifier: Apache-2.0
"""Scores: displacement error against a truth, Dice, agreement with the peers, determinant.

Every matrix maps fixed world points to moving world points (RAS mm).

- **error** (same anatomy): mean (and max) of ``|M_true x - M x|`` over the fixed brain mask.
- **Dice** (inter-subject): the moving (subject) brain mask resampled onto the fixed (template)
  grid with ``M`` (linear interpolation, kept where >= 0.5) against the template's brain mask.
- **distance from the peers** (inter-subject): at every voxel ``x`` of the template's brain mask,
  the per-coordinate median of ``M_p x`` over the *other* peers ``p`` (every tool but niaffine
  and its variants, and but the tool itself; peers whose Dice is below `CONSENSUS_MIN_DICE`,
  failed registrations, are left out), and the mean distance of ``M x`` from it.
- **determinant** of the linear part: the volume of moving space that one unit of template
  volume maps onto.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from niaffine.data.geometry import max_displacement, mean_displacement, warp_to_grid

from .tools import is_niaffine

CONSENSUS_MIN_DICE = 0.8
"""Peers below this Dice are failures and take no part in the consensus."""

__all__ = ["CONSENSUS_MIN_DICE", "dice", "mask_dice", "determinant", "errors",
           "consensus_distances"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays.

    Examples
    --------
    >>> dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))
    0.6666666666666666
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def mask_dice(matrix, moving_mask, fixed_mask) -> float:
    """Dice of ``moving_mask`` carried onto the grid of ``fixed_mask`` by ``matrix``."""
    # warp_to_grid(img, T) samples img at inverse(T) @ y: T = inverse(matrix) samples at M y
    carried = warp_to_grid(moving_mask, np.linalg.inv(matrix), fixed_mask.affine,
                           fixed_mask.shape[:3], order=1)
    return dice(np.asarray(carried.dataobj) >= 0.5, np.asarray(fixed_mask.dataobj) > 0)


def determinant(matrix) -> float:
    """Determinant of the linear (3 x 3) part."""
    return float(np.linalg.det(np.asarray(matrix, dtype=float)[:3, :3]))


def errors(true_matrix, matrix, mask) -> dict:
    """``mean_error_mm`` and ``max_error_mm`` over ``mask``."""
    return {"mean_error_mm": mean_displacement(true_matrix, matrix, mask),
            "max_error_mm": max_displacement(true_matrix, matrix, mask)}


def _points(mask_img) -> np.ndarray:
    voxels = np.argwhere(np.asarray(mask_img.dataobj) > 0).astype(float)
    return nib.affines.apply_affine(mask_img.affine, voxels)


def consensus_distances(matrices: dict[str, np.ndarray], mask_img,
                        dices: dict[str, float] | None = None) -> dict[str, float | None]:
    """Each tool's mean distance (mm) from the per-point median of the other peers.

    Parameters
    ----------
    matrices : dict
        Tool name -> fixed-to-moving matrix, for one problem.
    mask_img : nibabel image
        Where the distance is measured (the fixed brain mask).
    dices : dict, optional
        Tool name -> Dice; peers below `CONSENSUS_MIN_DICE` are left out of the consensus.

    Returns
    -------
    dict
        Tool name -> distance, or None where fewer than two other peers are left.
    """
    dices = dices or {}
    points = _points(mask_img)
    mapped = {t: nib.affines.apply_affine(np.asarray(m, float), points)
              for t, m in matrices.items()}
    peers = [t for t in matrices if not is_niaffine(t)
             and dices.get(t, 1.0) >= CONSENSUS_MIN_DICE]
    out = {}
    for tool, where in mapped.items():
        others = [mapped[p] for p in peers if p != tool]
        if len(others) < 2:
            out[tool] = None
            continue
        median = np.median(np.stack(others), axis=0)
        out[tool] = float(np.linalg.norm(where - median, axis=1).mean())
    return out

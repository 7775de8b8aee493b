# SPDX-License-Identifier: Apache-2.0
"""Bounds no brain registration leaves: a result outside them fails, it is not written.

The group level flags suspicious registrations (``implausible_scale`` for scale factors
outside 0.67-1.5); the bounds here are wider and absolute. A transform outside them is
nonsense whatever its metric (a header scaled by mistake, an optimiser that ran away): the
sink writes none of that registration's files and fails the subject, naming the numbers.
"""

from __future__ import annotations

import numpy as np

#: Scale factors (singular values of the transform's linear part) a registration may reach.
ZOOM_LIMITS = (0.5, 2.0)
#: How far outside the moving image's field of view, as a fraction of its size on each axis,
#: the fixed image's centre may land.
FOV_MARGIN = 0.5


class ImplausibleRegistrationError(RuntimeError):
    """A registration result outside :data:`ZOOM_LIMITS` or the images' fields of view."""


def _grid(img) -> tuple[np.ndarray, np.ndarray]:
    shape = np.ones(3)
    spatial = [int(n) for n in img.shape[:3]]
    shape[: len(spatial)] = spatial
    return np.asarray(img.affine, dtype=float), shape


def _corners(affine: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """World coordinates of the 8 corners of a grid's field of view (voxel edges)."""
    lows, highs = -0.5 * np.ones(3), shape - 0.5
    ijk = np.array([[(highs if (k >> a) & 1 else lows)[a] for a in range(3)] for k in range(8)])
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def transform_problem(matrix, fixed, moving) -> str | None:
    """Why a fixed-to-moving world matrix is implausible for these images, or ``None``.

    Parameters
    ----------
    matrix : (4, 4) array
        World (RAS mm) matrix mapping fixed points to moving points.
    fixed, moving : nibabel images
        Only their headers (affine, shape) are used.

    Examples
    --------
    >>> import nibabel as nb
    >>> img = nb.Nifti1Image(np.zeros((90, 100, 80), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> shifted = np.eye(4)
    >>> shifted[:3, 3] = 30.0
    >>> transform_problem(shifted, img, img) is None
    True
    >>> shifted[:3, 3] = 1e8
    >>> transform_problem(shifted, img, img)  # doctest: +ELLIPSIS
    "maps the fixed image's centre 1.73e+08 mm outside the moving image's field of view (transl..."
    >>> transform_problem(np.diag([3.0, 1.0, 1.0, 1.0]), img, img)
    'scale factors 1 to 3 (allowed: 0.5 to 2)'
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        return "the transform is not a finite 4x4 matrix"
    zooms = np.linalg.svd(matrix[:3, :3], compute_uv=False)
    low, high = ZOOM_LIMITS
    if zooms.min() < low or zooms.max() > high:
        return f"scale factors {zooms.min():.3g} to {zooms.max():.3g} (allowed: {low:g} to {high:g})"
    f_affine, f_shape = _grid(fixed)
    m_affine, m_shape = _grid(moving)
    centre = f_affine[:3, :3] @ ((f_shape - 1) / 2) + f_affine[:3, 3]
    landed = matrix[:3, :3] @ centre + matrix[:3, 3]
    corners = _corners(m_affine, m_shape)
    lows, highs = corners.min(axis=0), corners.max(axis=0)
    margin = FOV_MARGIN * (highs - lows)
    outside = np.maximum(lows - margin - landed, 0) + np.maximum(landed - highs - margin, 0)
    distance = float(np.linalg.norm(outside))
    if distance > 0:
        shift = " ".join(f"{v:.3g}" for v in matrix[:3, 3])
        return (f"maps the fixed image's centre {distance:.3g} mm outside the moving image's "
                f"field of view (translation {shift} mm)")
    return None

# SPDX-License-Identifier: Apache-2.0
"""World-space geometry for synthetic test data: random affines, grids, resampling, errors.

Everything here is plain numpy/scipy/nibabel and deliberately independent of
`niaffine.engine`, so that it can check the engine. Conventions follow the rest of
niaffine (see ``docs/architecture.md``): world space is RAS+ millimetres, and a transform
``matrix`` maps **fixed (reference) points to moving points**, ``x_moving = matrix @ x_fixed``
(the ITK / ANTs / nitransforms convention).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from niaffine.choices import DOFS

LOGGER = logging.getLogger(__name__)

__all__ = [
    "rotation_matrix",
    "random_affine",
    "direction_matrix",
    "make_grid",
    "warp_to_grid",
    "displacements",
    "mean_displacement",
    "max_displacement",
]

_AXIS_PAIRS = (("L", "R"), ("P", "A"), ("I", "S"))
_CHUNK_VOXELS = 1 << 20
"""Output voxels resampled per `map_coordinates` call (bounds the coordinate arrays' memory)."""


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` from angles about the x, y and z axes.

    Parameters
    ----------
    angles_rad : (3,) sequence of float
        Angles (radians) about the world x (L-R), y (P-A) and z (I-S) axes.

    Returns
    -------
    rotation : (3, 3) array
        Proper rotation (orthogonal, determinant +1).

    Examples
    --------
    >>> r = rotation_matrix([0.0, 0.0, np.pi / 2])
    >>> np.round(r @ [1.0, 0.0, 0.0], 12) + 0.0
    array([0., 1., 0.])
    """
    ax, ay, az = (float(a) for a in angles_rad)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rz @ ry @ rx


def random_affine(
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 30.0,
    max_translation_mm: float = 30.0,
    max_scale: float = 0.10,
    max_shear: float = 0.05,
    dof: int = 12,
    centre: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Random world-space affine with a chosen number of degrees of freedom.

    The matrix is ``T(centre + t) @ R @ Z @ S @ T(-centre)``: rotation ``R`` (three angles,
    each uniform in ``±max_rotation_deg``), zooms ``Z`` (``1 + u``, ``u`` uniform in
    ``±max_scale``), upper-triangular shear ``S`` (uniform in ``±max_shear``) act about
    ``centre``, then the translation ``t`` (uniform in ``±max_translation_mm`` per axis).
    Twelve numbers are always drawn in the same order, so one seed gives the same rotation
    and translation whatever ``dof``; unused groups are then reset.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    max_rotation_deg, max_translation_mm, max_scale, max_shear : float
        Half-widths of the uniform parameter ranges.
    dof : {3, 6, 7, 9, 12}
        3 translation only; 6 rigid; 7 rigid + isotropic scale; 9 rigid + anisotropic
        scales; 12 adds shears.
    centre : (3,) sequence of float
        World point (RAS mm) that rotation, scaling and shear keep fixed.

    Returns
    -------
    matrix : (4, 4) array
        Fixed-to-moving world matrix (RAS mm).

    Examples
    --------
    >>> m = random_affine(np.random.default_rng(0), dof=6)
    >>> bool(np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3)))
    True
    """
    if dof not in DOFS:
        raise ValueError(f"dof must be one of {DOFS}, got {dof}")
    angles = np.deg2rad(max_rotation_deg) * rng.uniform(-1.0, 1.0, 3)
    translation = max_translation_mm * rng.uniform(-1.0, 1.0, 3)
    zooms = 1.0 + max_scale * rng.uniform(-1.0, 1.0, 3)
    shears = max_shear * rng.uniform(-1.0, 1.0, 3)
    if dof < 6:
        angles[:] = 0.0
    if dof < 7:
        zooms[:] = 1.0
    elif dof == 7:
        zooms[:] = zooms[0]
    if dof < 12:
        shears[:] = 0.0
    shear = np.array([[1.0, shears[0], shears[1]], [0.0, 1.0, shears[2]], [0.0, 0.0, 1.0]])
    linear = rotation_matrix(angles) @ np.diag(zooms) @ shear
    c = np.asarray(centre, dtype=float).reshape(3)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = c + translation - linear @ c
    return matrix


def direction_matrix(orientation: str = "RAS", oblique_deg: float | Sequence[float] = 0.0):
    """Unit axis directions of a voxel grid.

    Parameters
    ----------
    orientation : str
        Three nibabel axis codes, one per voxel axis, naming where the axis points
        (``"RAS"``, ``"LPS"``, ``"LIA"``, ...).
    oblique_deg : float or (3,) sequence of float
        Tilt applied after the orientation: a scalar is a rotation about the world x (L-R)
        axis (a typical oblique-axial tilt); three values are angles about x, y and z.

    Returns
    -------
    directions : (3, 3) array
        Orthonormal matrix whose column ``i`` is the world direction of voxel axis ``i``.

    Examples
    --------
    >>> direction_matrix("LPS") @ [1.0, 0.0, 0.0]
    array([-1.,  0.,  0.])
    """
    codes = tuple(str(orientation).upper())
    axes = [k for c in codes for k, pair in enumerate(_AXIS_PAIRS) if c in pair]
    if len(codes) != 3 or sorted(axes) != [0, 1, 2]:
        raise ValueError(f"orientation must be 3 codes covering L/R, P/A and I/S: {orientation!r}")
    ornt = nib.orientations.axcodes2ornt(codes)
    directions = np.zeros((3, 3))
    for axis, (world_axis, flip) in enumerate(ornt):
        directions[int(world_axis), axis] = flip
    angles = np.atleast_1d(np.asarray(oblique_deg, dtype=float))
    if angles.size == 1:
        angles = np.array([angles[0], 0.0, 0.0])
    if angles.size != 3:
        raise ValueError("oblique_deg must be a scalar or three angles")
    return rotation_matrix(np.deg2rad(angles)) @ directions


def make_grid(
    *,
    shape: Sequence[int],
    voxel_size: float | Sequence[float],
    orientation: str = "RAS",
    oblique_deg: float | Sequence[float] = 0.0,
    centre: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Voxel-to-world affine of a grid whose field of view is centred on a world point.

    Parameters
    ----------
    shape : (3,) sequence of int
        Grid size in voxels.
    voxel_size : float or (3,) sequence of float
        Voxel spacing (mm) along each voxel axis.
    orientation : str
        Axis codes, see `direction_matrix`.
    oblique_deg : float or (3,) sequence of float
        Tilt, see `direction_matrix`.
    centre : (3,) sequence of float
        World point (RAS mm) at the centre of the field of view, ``(shape - 1) / 2``.

    Returns
    -------
    affine : (4, 4) array
        Voxel-to-world (RAS mm) affine.

    Examples
    --------
    >>> aff = make_grid(shape=(10, 10, 10), voxel_size=2.0, orientation="LPS")
    >>> nib.aff2axcodes(aff), nib.affines.voxel_sizes(aff).tolist()
    (('L', 'P', 'S'), [2.0, 2.0, 2.0])
    """
    spacing = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    if np.any(spacing <= 0):
        raise ValueError(f"voxel sizes must be positive: {voxel_size}")
    linear = direction_matrix(orientation, oblique_deg) @ np.diag(spacing)
    middle = (np.asarray(shape, dtype=float).reshape(3) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre, dtype=float).reshape(3) - linear @ middle
    return affine


def warp_to_grid(
    img: nib.spatialimages.SpatialImage,
    matrix: np.ndarray,
    grid_affine: np.ndarray,
    grid_shape: Sequence[int],
    order: int = 1,
    *,
    fill: float = 0.0,
) -> nib.Nifti1Image:
    """An image seen through a world transform, sampled on a new grid.

    With ``matrix`` mapping fixed world points to moving world points, the returned
    (moving) image is ``moving(y) = img(inverse(matrix) @ y)`` at the world points ``y`` of
    the grid, so resampling it back with ``matrix`` (ITK / nitransforms convention)
    reproduces ``img``. Interpolation uses `scipy.ndimage.map_coordinates` in chunks, so
    memory stays at the input plus the output plus a few MB.

    Parameters
    ----------
    img : nibabel image
        3D source image (the "fixed" side).
    matrix : (4, 4) array
        Fixed-to-moving world matrix (RAS mm); the identity resamples ``img`` as it is.
    grid_affine : (4, 4) array
        Voxel-to-world affine of the output grid.
    grid_shape : (3,) sequence of int
        Output shape.
    order : {0, 1, 3}
        Nearest, linear or cubic B-spline interpolation.
    fill : float
        Value outside the source field of view.

    Returns
    -------
    img : nibabel.Nifti1Image
        float32 image on ``grid_affine``.
    """
    if order not in (0, 1, 3):
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"warp_to_grid needs a 3D image, got shape {data.shape}")
    if order == 3:
        data = ndi.spline_filter(data, order=3, mode="mirror", output=np.float32)
    shape = tuple(int(s) for s in grid_shape)
    # output voxel -> output world -> source world (inverse matrix) -> source voxel
    to_source = np.linalg.inv(img.affine) @ np.linalg.inv(matrix) @ np.asarray(grid_affine)
    out = np.empty(shape, dtype=np.float32)
    rows = max(1, _CHUNK_VOXELS // max(1, shape[1] * shape[2]))
    j = np.arange(shape[1], dtype=float)[:, None]
    k = np.arange(shape[2], dtype=float)[None, :]
    for start in range(0, shape[0], rows):
        i = np.arange(start, min(start + rows, shape[0]), dtype=float)[:, None, None]
        coords = [to_source[a, 0] * i + (to_source[a, 1] * j + to_source[a, 2] * k
                                         + to_source[a, 3]) for a in range(3)]
        out[start:start + i.shape[0]] = ndi.map_coordinates(
            data, coords, order=order, mode="constant", cval=fill, prefilter=False,
            output=np.float32,
        )
    return _float_image(out, grid_affine)


def _float_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img


def displacements(
    true_matrix: np.ndarray, est_matrix: np.ndarray, mask_img: nib.spatialimages.SpatialImage
) -> np.ndarray:
    """Distances ``|true(x) - est(x)|`` (mm) at the world points of a mask's voxels.

    Parameters
    ----------
    true_matrix, est_matrix : (4, 4) array
        World matrices (same convention for both, e.g. fixed to moving).
    mask_img : nibabel image
        Mask on the grid where the error is measured (normally the fixed brain mask);
        non-zero voxels count.

    Returns
    -------
    distances : (N,) array
        One distance per mask voxel.
    """
    diff = np.asarray(true_matrix, dtype=float) - np.asarray(est_matrix, dtype=float)
    voxels = np.argwhere(np.asarray(mask_img.dataobj) > 0).astype(float)
    if voxels.size == 0:
        raise ValueError("the mask is empty")
    # (T - E) @ A maps mask voxels straight to displacement vectors
    to_disp = diff @ np.asarray(mask_img.affine, dtype=float)
    vectors = voxels @ to_disp[:3, :3].T + to_disp[:3, 3]
    return np.linalg.norm(vectors, axis=1)


def mean_displacement(
    true_matrix: np.ndarray, est_matrix: np.ndarray, mask_img: nib.spatialimages.SpatialImage
) -> float:
    """Mean distance (mm) between two transforms over a mask, see `displacements`.

    Examples
    --------
    >>> mask = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    >>> shifted = np.eye(4); shifted[0, 3] = 2.0
    >>> mean_displacement(shifted, np.eye(4), mask)
    2.0
    """
    return float(displacements(true_matrix, est_matrix, mask_img).mean())


def max_displacement(
    true_matrix: np.ndarray, est_matrix: np.ndarray, mask_img: nib.spatialimages.SpatialImage
) -> float:
    """Largest distance (mm) between two transforms over a mask, see `displacements`."""
    return float(displacements(true_matrix, est_matrix, mask_img).max())

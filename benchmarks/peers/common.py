# SPDX-License-Identifier: Apache-2.0
"""Every tool's answer as one world matrix, and the NIfTI files the tools read.

The common convention is niaffine's (and ITK's, nitransforms'): a 4 x 4 matrix in RAS mm that
maps **fixed (reference) world points to moving world points**, ``x_moving = M @ x_fixed``.
What each tool writes, and how it becomes ``M`` (each checked by identity, translation and
rotated-header tests in ``tests/data/test_benchmark_tools.py``):

- ANTsPy: an ITK ``AffineTransform`` file (LPS, with a centre), fixed to moving; read by
  nitransforms (`ants_transform_to_world`).
- elastix: ``TransformParameters`` ``a11 a12 a13 a21 ... a33 tx ty tz`` and a
  ``CenterOfRotationPoint`` ``c`` in ITK's LPS physical space, mapping fixed points to moving
  points as ``y = A (x - c) + t + c`` (`elastix_parameters_to_world`).
- NiftyReg ``reg_aladin -aff``: a 4 x 4 text matrix from reference world to floating world in
  the NIfTI (RAS) frame (its help: ``Affine*Reference=Floating``): already ``M``.
- MRtrix3 ``mrregister moving fixed -affine``: a 4 x 4 text matrix in scanner (RAS) coordinates
  from the template (second image, fixed) to the moving image: already ``M``.
- torchreg: ``theta`` in PyTorch's normalised coordinates of one common grid
  (`torchreg_theta_to_world`).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""RAS <-> LPS flip of world coordinates (its own inverse)."""


def save_nifti(img, path, dtype=np.float32) -> str:
    """Write ``img`` as an uncompressed NIfTI that every tool reads the same way.

    The data are cast to ``dtype`` and qform and sform both hold ``img.affine`` (code 1), so
    readers that prefer one or the other (ITK, NiftyReg, MRtrix, nibabel) agree.
    """
    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=dtype), np.asarray(img.affine, float))
    out.header.set_xyzt_units("mm")
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    nib.save(out, str(path))
    return str(path)


def save_inputs(tmp, fixed, moving, fixed_mask, moving_mask) -> dict[str, str]:
    """The images (and masks) as NIfTI files in ``tmp``: name -> path."""
    paths = {}
    for name, img, dtype in (("fixed", fixed, np.float32), ("moving", moving, np.float32),
                             ("fixed_mask", fixed_mask, np.uint8),
                             ("moving_mask", moving_mask, np.uint8)):
        if img is not None:
            paths[name] = save_nifti(img, os.path.join(tmp, f"{name}.nii"), dtype)
    return paths


def itk_to_world(linear, translation, centre) -> np.ndarray:
    """RAS matrix of an ITK matrix-offset transform given in LPS.

    Parameters
    ----------
    linear : (3, 3) array
        ``A`` of ``y = A (x - c) + t + c`` (LPS).
    translation, centre : (3,) array
        ``t`` and ``c`` (LPS mm).

    Returns
    -------
    matrix : (4, 4) array
        The same map in RAS.

    Examples
    --------
    >>> m = itk_to_world(np.eye(3), [1.0, 2.0, 3.0], [10.0, 0.0, 0.0])
    >>> m[:3, 3].tolist()
    [-1.0, -2.0, 3.0]
    """
    a = np.asarray(linear, dtype=float).reshape(3, 3)
    t = np.asarray(translation, dtype=float).reshape(3)
    c = np.asarray(centre, dtype=float).reshape(3)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = t + c - a @ c
    return LPS @ lps @ LPS


def elastix_parameters_to_world(parameter_map) -> np.ndarray:
    """RAS fixed-to-moving matrix of one elastix ``AffineTransform`` parameter map.

    Parameters
    ----------
    parameter_map : mapping of str to sequence of str
        A result transform parameter map (``GetParameterMap(0)`` of the transform parameter
        object itk-elastix returns), or a plain dict with the same keys.
    """
    def values(key):
        return [float(v) for v in parameter_map[key]]

    kind = parameter_map["Transform"][0]
    if kind != "AffineTransform":
        raise ValueError(f"expected an elastix AffineTransform, got {kind}")
    initial = parameter_map.get("InitialTransformParameterFileName", ["NoInitialTransform"])[0]
    if initial != "NoInitialTransform":
        raise ValueError(f"chained elastix transforms are not handled (initial: {initial})")
    params = values("TransformParameters")
    if len(params) != 12:
        raise ValueError(f"expected 12 affine parameters, got {len(params)}")
    return itk_to_world(np.reshape(params[:9], (3, 3)), params[9:],
                        values("CenterOfRotationPoint"))


def read_matrix_text(path) -> np.ndarray:
    """A 4 x 4 (or 3 x 4) matrix from a text file, ``#`` comments ignored (NiftyReg, MRtrix)."""
    rows = np.loadtxt(str(path), comments="#", ndmin=2)
    if rows.shape == (3, 4):
        rows = np.vstack([rows, [0.0, 0.0, 0.0, 1.0]])
    if rows.shape != (4, 4):
        raise ValueError(f"{path}: expected a 4 x 4 matrix, got shape {rows.shape}")
    return rows


def ants_transform_to_world(path: str | os.PathLike) -> np.ndarray:
    """RAS fixed-to-moving matrix of an ANTs/ITK affine file (``.mat`` or ``.txt``)."""
    from nitransforms import linear

    xfm = linear.load(str(path), fmt="itk")
    matrix = np.asarray(xfm.matrix, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"expected one affine in {path}, got matrix of shape {matrix.shape}")
    return matrix


# --- torchreg: PyTorch normalised grid coordinates ------------------------------------------

def normalised_to_voxel(shape) -> np.ndarray:
    """``V``: PyTorch normalised grid coordinates ``(x, y, z, 1)`` to voxels ``(i, j, k, 1)``.

    For a tensor ``[B, C, D, H, W]`` made from an array ``a[i, j, k]``, ``x`` runs along ``k``
    (W), ``y`` along ``j`` (H) and ``z`` along ``i`` (D); with ``align_corners=True`` -1 and +1
    are the centres of the first and last voxels.

    Examples
    --------
    >>> v = normalised_to_voxel((5, 7, 9))
    >>> (v @ [-1.0, -1.0, 1.0, 1.0]).tolist()
    [4.0, 0.0, 0.0, 1.0]
    """
    half = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    v = np.zeros((4, 4))
    for voxel_axis, grid_axis in ((0, 2), (1, 1), (2, 0)):
        v[voxel_axis, grid_axis] = half[voxel_axis]
        v[voxel_axis, 3] = half[voxel_axis]
    v[3, 3] = 1.0
    return v


def torchreg_theta_to_world(theta: np.ndarray, grid_affine: np.ndarray, shape) -> np.ndarray:
    """World fixed-to-moving matrix from a torchreg ``theta`` found on a common grid.

    Parameters
    ----------
    theta : (3, 4) array
        torchreg affine (normalised coordinates of the common grid, output to input).
    grid_affine : (4, 4) array
        Voxel-to-world affine of the common grid both tensors were sampled on.
    shape : (3,) sequence of int
        Shape of that grid.

    Returns
    -------
    matrix : (4, 4) array
    """
    t = np.eye(4)
    t[:3, :] = np.asarray(theta, dtype=float).reshape(3, 4)
    gv = np.asarray(grid_affine, dtype=float) @ normalised_to_voxel(shape)
    return gv @ t @ np.linalg.inv(gv)


def world_to_torchreg_theta(matrix: np.ndarray, grid_affine: np.ndarray, shape) -> np.ndarray:
    """Inverse of `torchreg_theta_to_world`: the ``theta`` (3, 4) of a world matrix."""
    gv = np.asarray(grid_affine, dtype=float) @ normalised_to_voxel(shape)
    return (np.linalg.inv(gv) @ np.asarray(matrix, dtype=float) @ gv)[:3, :]


def common_grid(images, spacing: float = 1.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A RAS grid at ``spacing`` mm whose field of view covers every image's field of view."""
    corners = []
    for img in images:
        s = np.asarray(img.shape[:3], dtype=float)
        box = np.array([[a, b, c] for a in (-0.5, s[0] - 0.5) for b in (-0.5, s[1] - 0.5)
                        for c in (-0.5, s[2] - 0.5)])
        corners.append(nib.affines.apply_affine(img.affine, box))
    corners = np.concatenate(corners)
    low, high = corners.min(axis=0), corners.max(axis=0)
    shape = tuple(int(n) for n in np.ceil((high - low) / spacing).astype(int))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = low + spacing / 2.0
    return affine, shape

# SPDX-License-Identifier: Apache-2.0
"""Head-motion summaries of a realigned series, and the rotation of diffusion gradients.

Pure numpy. The per-volume matrices are world (RAS mm) matrices mapping **reference points to
volume points** (``x_volume = M_t @ x_reference``, the ITK convention of everything else).

Motion parameters (:func:`motion_parameters`) follow MCFLIRT, as fMRIPrep reports them
(``trans_x trans_y trans_z`` in mm, ``rot_x rot_y rot_z`` in radians):

- the frame is FSL's "scaled voxel" frame of the reference grid: voxel indices times voxel
  sizes, the first axis flipped when the voxel-to-world determinant is positive (so for an
  axial image the axes point left, anterior, superior whatever the storage order);
- the transform described is the one MCFLIRT estimates, volume to reference:
  ``A_t = W @ inv(M_t) @ inv(W)`` with ``W`` the world-to-FSL-frame matrix of the reference;
- ``A_t`` is split about the centre ``c`` of the reference's field of view (in that frame,
  ``(n - 1) / 2`` voxel sizes): ``A_t x = R (x - c) + c + trans`` with ``trans = A_t c - c``;
- ``R = (Rz(rot_z) @ Ry(rot_y) @ Rx(rot_x))^T`` with right-handed rotations about the frame's
  axes: equivalently, ``rot_x, rot_y, rot_z`` are the x-y-z Euler angles of the rotation of
  the inverse map (reference to volume).

Framewise displacement is Power's (2012): ``FD_t = sum |d trans| + 50 mm * sum |d rot|`` with
backward differences (the first volume has none). RMS displacement is Jenkinson's (1999) RMS
deviation over a sphere of radius 80 mm about the reference's centre, between consecutive
volumes (``rmsd``, as fMRIPrep's column) or against the reference.
"""

from __future__ import annotations

import numpy as np

#: Radius (mm) turning rotations into displacements in Power's framewise displacement.
FD_RADIUS_MM = 50.0
#: Radius (mm) of the sphere of Jenkinson's RMS displacement (MCFLIRT's value).
RMS_RADIUS_MM = 80.0
#: Column names of :func:`motion_parameters`, in fMRIPrep's order.
PARAMETER_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def fsl_frame(affine, shape) -> np.ndarray:
    """World-to-FSL-frame matrix of a grid ("scaled voxel" mm, x flipped if det > 0).

    Parameters
    ----------
    affine : (4, 4) array
        Voxel-to-world matrix.
    shape : sequence of int
        Spatial shape (the flip needs the first axis' length).

    Returns
    -------
    (4, 4) array

    Examples
    --------
    >>> w = fsl_frame(np.diag([2.0, 2.0, 2.0, 1.0]), (10, 10, 10))
    >>> (w @ [0.0, 0.0, 0.0, 1.0])[:3], (w @ [18.0, 0.0, 0.0, 1.0])[:3]
    (array([18.,  0.,  0.]), array([0., 0., 0.]))
    """
    affine = np.asarray(affine, dtype=float)
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    scaled = np.diag(np.r_[voxel, 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, (int(shape[0]) - 1) * voxel[0]
        scaled = flip @ scaled
    return scaled @ np.linalg.inv(affine)


def _centre_fsl(affine, shape) -> np.ndarray:
    voxel = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0 * voxel


def euler_xyz(rotation: np.ndarray) -> np.ndarray:
    """Angles ``(a, b, c)`` (radians) with ``rotation = Rz(c) @ Ry(b) @ Rx(a)``.

    >>> from scipy.spatial.transform import Rotation
    >>> r = Rotation.from_euler("xyz", [0.1, -0.2, 0.3]).as_matrix()
    >>> np.round(euler_xyz(r), 6)
    array([ 0.1, -0.2,  0.3])
    """
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(rotation, dtype=float)).as_euler("xyz")


def _rotation_xyz(angles) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", np.asarray(angles, dtype=float)).as_matrix()


def motion_parameters(matrices, reference_affine, reference_shape) -> np.ndarray:
    """MCFLIRT-style motion parameters of per-volume rigid transforms.

    Parameters
    ----------
    matrices : (T, 4, 4) array
        Reference-world to volume-world matrices (rigid; the rotation of a non-rigid matrix
        is its polar part, see :func:`rigid_part`).
    reference_affine : (4, 4) array
    reference_shape : sequence of int

    Returns
    -------
    (T, 6) array
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad), see the module
        docstring for the exact convention.

    Examples
    --------
    >>> shift = np.eye(4); shift[0, 3] = -1.5   # the head moved 1.5 mm to the left (RAS -x)
    >>> motion_parameters([shift], np.diag([3.0, 3.0, 3.0, 1.0]), (20, 20, 20)).round(6)
    array([[-1.5,  0. ,  0. ,  0. ,  0. ,  0. ]])
    """
    w = fsl_frame(reference_affine, reference_shape)
    w_inv = np.linalg.inv(w)
    centre = _centre_fsl(reference_affine, reference_shape)
    out = np.zeros((len(matrices), 6))
    for t, matrix in enumerate(np.asarray(matrices, dtype=float)):
        a = w @ np.linalg.inv(rigid_part(matrix, centre_world=w_inv[:3, :3] @ centre
                                         + w_inv[:3, 3])) @ w_inv
        out[t, :3] = a[:3, :3] @ centre + a[:3, 3] - centre
        out[t, 3:] = euler_xyz(a[:3, :3].T)
    return out


def matrices_from_parameters(parameters, reference_affine, reference_shape) -> np.ndarray:
    """Reference-to-volume world matrices ``(T, 4, 4)`` of motion parameters (the inverse of
    :func:`motion_parameters`).

    >>> p = np.array([[1.0, -2.0, 0.5, 0.01, -0.02, 0.03]])
    >>> aff = np.diag([-3.0, 3.0, 3.0, 1.0])
    >>> bool(np.allclose(motion_parameters(matrices_from_parameters(p, aff, (9, 9, 9)), aff,
    ...                                    (9, 9, 9)), p))
    True
    """
    w = fsl_frame(reference_affine, reference_shape)
    centre = _centre_fsl(reference_affine, reference_shape)
    out = np.tile(np.eye(4), (len(parameters), 1, 1))
    for t, row in enumerate(np.asarray(parameters, dtype=float)):
        a = np.eye(4)
        a[:3, :3] = _rotation_xyz(row[3:]).T
        a[:3, 3] = centre + row[:3] - a[:3, :3] @ centre
        out[t] = np.linalg.inv(np.linalg.inv(w) @ a @ w)
    return out


def framewise_displacement(parameters, radius_mm: float = FD_RADIUS_MM) -> np.ndarray:
    """Power's framewise displacement (mm): ``sum |d trans| + radius * sum |d rot|``.

    Parameters
    ----------
    parameters : (T, 6) array
        Translations (mm) then rotations (rad), as :func:`motion_parameters` returns them.
    radius_mm : float
        Sphere radius that turns radians into millimetres (50 mm).

    Returns
    -------
    (T,) array
        NaN for the first volume.

    Examples
    --------
    >>> framewise_displacement([[0, 0, 0, 0, 0, 0], [0.1, 0, -0.1, 0, 0.002, 0]]).round(3)
    array([nan, 0.3])
    """
    params = np.asarray(parameters, dtype=float)
    out = np.full(len(params), np.nan)
    if len(params) > 1:
        diff = np.abs(np.diff(params, axis=0))
        out[1:] = diff[:, :3].sum(1) + radius_mm * diff[:, 3:].sum(1)
    return out


def rms_deviation(first, second, centre, radius_mm: float = RMS_RADIUS_MM) -> float:
    """Jenkinson's RMS deviation (mm) between two affine maps over a sphere.

    ``sqrt(radius^2 / 5 * tr(A^T A) + |t + A c|^2)`` with ``[A t] = second @ inv(first) - I``.

    >>> shift = np.eye(4); shift[:3, 3] = [3.0, 4.0, 0.0]
    >>> rms_deviation(np.eye(4), shift, np.zeros(3))
    5.0
    """
    delta = np.asarray(second, dtype=float) @ np.linalg.inv(np.asarray(first, dtype=float))
    delta = delta - np.eye(4)
    linear, offset = delta[:3, :3], delta[:3, 3] + delta[:3, :3] @ np.asarray(centre, float)
    return float(np.sqrt(radius_mm**2 / 5.0 * np.trace(linear.T @ linear) + offset @ offset))


def rms_displacement(matrices, reference_affine, reference_shape, *, relative: bool = True,
                     radius_mm: float = RMS_RADIUS_MM) -> np.ndarray:
    """RMS displacement (mm) of each volume: from the previous volume, or from the reference.

    Parameters
    ----------
    matrices : (T, 4, 4) array
        Reference-to-volume world matrices.
    reference_affine, reference_shape
        The reference grid; the sphere is centred on its field of view.
    relative : bool
        Between consecutive volumes (fMRIPrep's ``rmsd``, NaN for the first volume), or
        against the reference (MCFLIRT's ``abs.rms``).

    Returns
    -------
    (T,) array
    """
    matrices = np.asarray(matrices, dtype=float)
    centre = np.asarray(reference_affine, float) @ np.r_[
        (np.asarray(reference_shape[:3], float) - 1) / 2, 1.0]
    to_reference = np.linalg.inv(matrices)  # volume -> reference, as MCFLIRT's matrices
    out = np.full(len(matrices), np.nan)
    for t in range(len(matrices)):
        if relative and t == 0:
            continue
        first = to_reference[t - 1] if relative else np.eye(4)
        out[t] = rms_deviation(first, to_reference[t], centre[:3], radius_mm)
    return out


def rigid_part(matrix, *, pe_direction=None, centre_world=None) -> np.ndarray:
    """The rigid transform closest to an affine reference-to-volume matrix.

    Parameters
    ----------
    matrix : (4, 4) array
    pe_direction : (3,) array, optional
        World direction of the phase-encoding axis of the *volume*. With it the matrix is
        read as eddy-current distortion along that axis after a rigid motion
        (``M = (I + p k^T) R``, shifts aside): the rows of ``M``'s linear part across ``p``
        are exactly ``R``'s, so ``R`` is recovered from them. Without it, the rotation is the
        polar factor (nearest rotation) of the linear part.
    centre_world : (3,) array, optional
        The rigid map agrees with ``matrix`` at this point (default: the world origin).

    Returns
    -------
    (4, 4) array
        Rotation and translation only.

    Examples
    --------
    >>> shear = np.eye(4); shear[1, 0] = 0.02          # a shear along y (the PE axis)
    >>> r = rigid_part(shear, pe_direction=[0, 1, 0])
    >>> bool(np.allclose(r, np.eye(4)))
    True
    """
    matrix = np.asarray(matrix, dtype=float)
    rotation = rotation_part(matrix[:3, :3], pe_direction=pe_direction)
    c = np.zeros(3) if centre_world is None else np.asarray(centre_world, dtype=float)
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = matrix[:3, :3] @ c + matrix[:3, 3] - rotation @ c
    return out


def rotation_part(linear, *, pe_direction=None) -> np.ndarray:
    """Rotation of a 3x3 linear map (polar factor, or eddy-aware; see :func:`rigid_part`).

    >>> bool(np.allclose(rotation_part(np.diag([1.02, 0.98, 1.0])), np.eye(3)))
    True
    """
    linear = np.asarray(linear, dtype=float)
    if pe_direction is None:
        u, _, vt = np.linalg.svd(linear)
        rotation = u @ vt
        if np.linalg.det(rotation) < 0:  # a reflection is no rotation: flip the weakest axis
            u[:, -1] *= -1
            rotation = u @ vt
        return rotation
    p = np.asarray(pe_direction, dtype=float)
    p = p / np.linalg.norm(p)
    helper = np.eye(3)[int(np.argmin(np.abs(p)))]
    u1 = np.cross(p, helper)
    u1 /= np.linalg.norm(u1)
    u2 = np.cross(p, u1)  # (u1, u2, p) is right-handed
    rows = np.stack([u1, u2]) @ linear  # = rows of Q R across p
    u, _, vt = np.linalg.svd(rows, full_matrices=False)
    across = u @ vt  # nearest orthonormal pair of rows
    basis = np.stack([u1, u2, p])
    return basis.T @ np.vstack([across, np.cross(across[0], across[1])])


def rotate_bvecs(bvecs, matrices, *, series_affine, output_affine, bvals=None,
                 pe_direction=None) -> np.ndarray:
    """Rotate FSL b-vectors by each volume's head rotation, into an output image's frame.

    The gradient of volume ``t`` was applied in the scanner (the series' world frame); relative
    to the anatomy as it lies in the output space its direction is ``R_t^T g_t``, ``R_t`` the
    rotation of the output-to-volume matrix ``matrices[t]``.

    Parameters
    ----------
    bvecs : (3, T) array
        FSL convention in the series' voxel frame (x flipped when its determinant is > 0).
    matrices : (T, 4, 4) array
        Output-world to volume-world matrices (e.g. the head-motion matrices when the output
        is on the reference grid; composed with the coregistration for T1w space).
    series_affine, output_affine : (4, 4) arrays
        Voxel-to-world matrices of the series and of the output image.
    bvals : (T,) array, optional
        Volumes with ``b = 0`` keep a zero vector.
    pe_direction : (3,) array, optional
        World direction of the series' phase-encoding axis (see :func:`rigid_part`).

    Returns
    -------
    (3, T) array
        Unit vectors (zero where the input is zero), FSL convention in the output's frame.
    """
    bvecs = np.asarray(bvecs, dtype=float)
    frame_in, frame_out = _bvec_frame(series_affine), _bvec_frame(output_affine)
    out = np.zeros_like(bvecs)
    for t in range(bvecs.shape[1]):
        norm = np.linalg.norm(bvecs[:, t])
        if norm == 0 or (bvals is not None and float(bvals[t]) <= 0):
            continue
        world = frame_in @ (bvecs[:, t] / norm)
        rotation = rotation_part(np.asarray(matrices[t], dtype=float)[:3, :3],
                                 pe_direction=pe_direction)
        out[:, t] = frame_out.T @ (rotation.T @ world)
    return out


def _bvec_frame(affine) -> np.ndarray:
    """World directions (columns) of the FSL b-vector axes of an image (orthonormal)."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    u, _, vt = np.linalg.svd(linear / np.linalg.norm(linear, axis=0))
    axes = u @ vt  # the nearest orthonormal frame (headers may carry a little shear)
    if np.linalg.det(linear) > 0:
        axes = axes @ np.diag([-1.0, 1.0, 1.0])
    return axes


def dvars(data, mask) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS (Nichols 2013) of a realigned series.

    The series is scaled so that the median of the voxels' temporal means is 1000. DVARS is
    the root mean square over the mask of the backward temporal difference. The standardised
    version divides it by its expected value without artefacts, the mean over voxels of
    ``sqrt(2 (1 - rho)) * sd``, with ``sd`` the robust standard deviation
    (interquartile range / 1.349) and ``rho`` the lag-1 autocorrelation of each voxel.

    Parameters
    ----------
    data : (X, Y, Z, T) array
        Series on the reference grid (head motion corrected).
    mask : (X, Y, Z) bool array
        Brain mask.

    Returns
    -------
    dvars, std_dvars : (T,) arrays
        NaN for the first volume.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> series = 100 + rng.normal(size=(8, 8, 8, 200))
    >>> series[..., 100] += 5.0                  # a spike
    >>> d, s = dvars(series, np.ones((8, 8, 8), bool))
    >>> bool(abs(np.nanmedian(s) - 1.0) < 0.1), bool(s[100] > 3)
    (True, True)
    """
    values = np.asarray(data, dtype=np.float64)[np.asarray(mask, dtype=bool)]  # (V, T)
    n = values.shape[1]
    d, s = np.full(n, np.nan), np.full(n, np.nan)
    if n < 2 or values.shape[0] == 0:
        return d, s
    means = values.mean(axis=1)
    scale = 1000.0 / np.median(means) if np.median(means) > 0 else 1.0
    values = values * scale
    q75, q25 = np.percentile(values, [75, 25], axis=1)
    sd = (q75 - q25) / 1.349
    keep = sd > 0
    values, sd = values[keep], sd[keep]
    if values.shape[0] == 0:
        return d, s
    centred = values - values.mean(axis=1, keepdims=True)
    denom = (centred**2).sum(axis=1)
    rho = np.where(denom > 0, (centred[:, 1:] * centred[:, :-1]).sum(axis=1) / denom, 0.0)
    expected = np.mean(np.sqrt(2.0 * np.clip(1.0 - rho, 0.0, None)) * sd)
    d[1:] = np.sqrt(np.mean(np.diff(values, axis=1) ** 2, axis=0))
    s[1:] = d[1:] / expected if expected > 0 else np.nan
    return d, s


def confound_columns(parameters, *, framewise=None, rmsd=None, dvars_values=None,
                     std_dvars=None) -> dict[str, np.ndarray]:
    """fMRIPrep's motion confounds: the six parameters, their backward differences, squares and
    squared differences (the 24 regressors ``load_confounds(motion="full")`` reads), then
    ``framewise_displacement``, ``rmsd``, ``dvars`` and ``std_dvars`` where given.

    Parameters
    ----------
    parameters : (T, 6) array
    framewise, rmsd, dvars_values, std_dvars : (T,) arrays, optional

    Returns
    -------
    dict
        Column name to ``(T,)`` array, NaN where undefined (the first row of differences).

    Examples
    --------
    >>> cols = confound_columns(np.zeros((3, 6)))
    >>> len(cols), list(cols)[:4], bool(np.isnan(cols["rot_z_derivative1"][0]))
    (24, ['trans_x', 'trans_x_derivative1', 'trans_x_power2', 'trans_x_derivative1_power2'], True)
    """
    params = np.asarray(parameters, dtype=float)
    out: dict[str, np.ndarray] = {}
    for k, name in enumerate(PARAMETER_NAMES):
        value = params[:, k]
        derivative = np.full(len(value), np.nan)
        derivative[1:] = np.diff(value)
        out[name] = value
        out[f"{name}_derivative1"] = derivative
        out[f"{name}_power2"] = value**2
        out[f"{name}_derivative1_power2"] = derivative**2
    for name, column in (("framewise_displacement", framewise), ("rmsd", rmsd),
                         ("dvars", dvars_values), ("std_dvars", std_dvars)):
        if column is not None:
            out[name] = np.asarray(column, dtype=float)
    return out

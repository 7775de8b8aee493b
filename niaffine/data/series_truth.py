# SPDX-License-Identifier: Apache-2.0
"""Ground truth of simulated series: motion paths, gradient directions, and how far an
estimate is from the truth (per-volume displacement errors, b-vector angles).

Plain numpy, scipy and nibabel (never :mod:`niaffine.engine`), so that it can check the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .geometry import rotation_matrix


@dataclass(frozen=True)
class MotionPath:
    """Rigid head motion over a run.

    Attributes
    ----------
    translations : (T, 3) array
        Translation (mm, scanner world axes) of the head at each volume.
    rotations : (T, 3) array
        Rotation angles (radians) about the world x, y and z axes (``Rz @ Ry @ Rx``, see
        :func:`niaffine.data.geometry.rotation_matrix`), about ``centre``.
    centre : (3,) array
        World point (mm) the rotations keep fixed (the head's centre).
    jumps : tuple of int
        Volumes at which a sudden jump starts.
    """

    translations: np.ndarray
    rotations: np.ndarray
    centre: np.ndarray
    jumps: tuple = ()

    def __len__(self) -> int:
        return len(self.translations)

    def matrices(self) -> np.ndarray:
        """World matrices ``(T, 4, 4)`` moving the head from its starting pose to each volume's."""
        out = np.tile(np.eye(4), (len(self), 1, 1))
        for t, (trans, rot) in enumerate(zip(self.translations, self.rotations)):
            r = rotation_matrix(rot)
            out[t, :3, :3] = r
            out[t, :3, 3] = self.centre + trans - r @ self.centre
        return out


def random_motion(
    rng: np.random.Generator,
    n_volumes: int,
    *,
    walk_mm: float = 0.03,
    walk_deg: float = 0.03,
    jumps: int = 2,
    jump_mm: tuple[float, float] = (2.0, 3.0),
    jump_deg: tuple[float, float] = (2.0, 3.0),
    spikes: int = 0,
    centre: Sequence[float] = (0.0, 0.0, 0.0),
) -> MotionPath:
    """A random walk of the six rigid parameters with sudden jumps (and optional spikes).

    Parameters
    ----------
    rng : numpy.random.Generator
    n_volumes : int
    walk_mm, walk_deg : float
        Standard deviation of the per-volume steps of each translation (mm) and angle (degrees).
    jumps : int
        Sudden, lasting changes of pose, each at a random volume (never the first): a
        translation of ``jump_mm`` (uniform in the range, random direction) together with a
        rotation of ``jump_deg`` (uniform, random axis).
    spikes : int
        Single-volume excursions of the same size that return to the path at the next volume.
    centre : (3,) sequence of float
        World centre of the rotations.

    Returns
    -------
    MotionPath
        Starting at zero motion at volume 0.

    Examples
    --------
    >>> path = random_motion(np.random.default_rng(0), 20, jumps=1)
    >>> path.translations.shape, bool(np.allclose(path.matrices()[0], np.eye(4)))
    ((20, 3), True)
    """
    n = int(n_volumes)
    if n < 1:
        raise ValueError("a series needs at least one volume")
    steps_t = rng.normal(0.0, walk_mm, (n, 3))
    steps_r = rng.normal(0.0, np.deg2rad(walk_deg), (n, 3))
    steps_t[0] = steps_r[0] = 0.0
    starts = []
    if n > 1:
        starts = sorted(int(v) for v in rng.choice(np.arange(1, n), size=min(jumps, n - 1),
                                                   replace=False))
    for t in starts:
        steps_t[t] += _random_vector(rng, jump_mm)
        steps_r[t] += np.deg2rad(_random_vector(rng, jump_deg))
    translations, rotations = np.cumsum(steps_t, axis=0), np.cumsum(steps_r, axis=0)
    if spikes and n > 2:
        for t in rng.choice(np.arange(1, n), size=min(spikes, n - 1), replace=False):
            translations[t] += _random_vector(rng, jump_mm)
            rotations[t] += np.deg2rad(_random_vector(rng, jump_deg))
    return MotionPath(translations, rotations, np.asarray(centre, dtype=float), tuple(starts))


def _random_vector(rng: np.random.Generator, size_range) -> np.ndarray:
    direction = rng.normal(size=3)
    return direction / np.linalg.norm(direction) * rng.uniform(*size_range)


def gradient_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over a half sphere (a Fibonacci spiral).

    >>> g = gradient_directions(30)
    >>> g.shape, bool(np.allclose(np.linalg.norm(g, axis=1), 1.0)), bool((g[:, 2] >= 0).all())
    ((30, 3), True, True)
    """
    k = np.arange(n) + 0.5
    z = 1.0 - k / n  # (0, 1]: one hemisphere, as diffusion directions are antipodal
    r = np.sqrt(1.0 - z**2)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _fsl_frame(affine: np.ndarray) -> np.ndarray:
    """World directions (columns) of the FSL b-vector axes of an image."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    axes = linear / np.linalg.norm(linear, axis=0)
    if np.linalg.det(linear) > 0:
        axes = axes @ np.diag([-1.0, 1.0, 1.0])
    return axes


def bvecs_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS) directions ``(T, 3)`` of FSL b-vectors ``(3, T)`` of an image.

    FSL b-vectors are components along the image's voxel axes, with the first axis flipped
    when the voxel-to-world determinant is positive (independently of niaffine.engine).

    >>> bvecs_to_world(np.array([[1.0], [0.0], [0.0]]), np.eye(4)).tolist()
    [[-1.0, 0.0, 0.0]]
    """
    return (_fsl_frame(affine) @ np.asarray(bvecs, dtype=float)).T


def world_to_bvecs(directions: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL b-vectors ``(3, T)`` of world directions ``(T, 3)`` for an image's affine."""
    frame = _fsl_frame(affine)
    return np.linalg.solve(frame, np.asarray(directions, dtype=float).T)


def _mask_points(mask_img, step: int = 1) -> np.ndarray:
    voxels = np.argwhere(np.asarray(mask_img.dataobj) > 0)[::step].astype(float)
    return nib.affines.apply_affine(mask_img.affine, voxels)


def volume_errors(case, matrices: np.ndarray, *, step: int = 1):
    """Per-volume errors (mm) of estimated reference-to-volume matrices, relative to volume 0.

    For each volume ``t`` the estimated map from volume 0's world to volume ``t``'s,
    ``M_t @ inv(M_0)``, is compared with the true one, ``T_t @ inv(T_0)``, at the brain's points
    (at volume 0's pose): the mean and the largest distance.

    Parameters
    ----------
    case : SeriesCase
    matrices : (T, 4, 4) array
        Estimated reference-world to volume-world matrices.
    step : int
        Use every ``step``-th brain voxel (faster; the mean barely changes).

    Returns
    -------
    mean, worst : (T,) arrays
    """
    est = np.asarray(matrices, dtype=float)
    true = case.true_matrices
    points = _mask_points(case.anatomy_mask, step)
    mean, worst = np.zeros(len(est)), np.zeros(len(est))
    est0_inv = np.linalg.inv(est[0])
    for t in range(len(est)):
        diff = true[t] - est[t] @ est0_inv @ true[0]  # both map anatomy points into volume t
        vectors = points @ diff[:3, :3].T + diff[:3, 3]
        dist = np.linalg.norm(vectors, axis=1)
        mean[t], worst[t] = dist.mean(), dist.max()
    return mean, worst


def bvec_errors_deg(case, bvecs: np.ndarray, out_affine: np.ndarray,
                    reference_to_volume0: np.ndarray) -> np.ndarray:
    """Angles (degrees) between rotated b-vectors and the true gradient directions.

    The written b-vectors are read as world directions with the output image's affine (FSL
    convention). The true direction of volume ``t``'s gradient relative to the head, at volume
    0's pose, is ``R(H_0) R(H_t)^-1 g_t`` (``H`` the head matrices, ``g_t`` the gradient in the
    scanner); ``reference_to_volume0`` (the estimated reference-to-volume-0 matrix, the
    identity when volume 0 is the reference) brings it into the output's world.

    Returns
    -------
    (T,) array
        NaN for b=0 volumes.
    """
    world_in = bvecs_to_world(case.bvecs, case.series.affine)
    world_out = bvecs_to_world(bvecs, out_affine)
    rot0 = _rotation(reference_to_volume0)
    out = np.full(len(world_in), np.nan)
    for t in range(len(world_in)):
        if case.bvals[t] <= 0:
            continue
        truth = _rotation(case.head_matrices[0]) @ np.linalg.solve(
            _rotation(case.head_matrices[t]), world_in[t])
        truth = rot0.T @ truth
        cos = float(truth @ world_out[t]) / (np.linalg.norm(truth) * np.linalg.norm(world_out[t]))
        out[t] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return out


def _rotation(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=float)[:3, :3])
    return u @ vt

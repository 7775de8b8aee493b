# SPDX-License-Identifier: Apache-2.0
"""Linking the diffusion-weighted volumes of a DWI to its b=0 frame through head-motion
continuity (in the spirit of FSL eddy's ``--b0_peas``).

Within one contrast the realignment is precise (hundredths of a millimetre); across contrasts
it is not. At b=1000 the CSF is dark where it is bright at b=0, so the brain's outline moves
from the CSF's edge to the grey matter's, and mutual information between a diffusion-weighted
volume and the b=0 reference settles a few tenths of a millimetre off, by the same amount for
every volume of a shell. That common offset is estimated here from the b=0 volumes that the
acquisition intersperses: the head barely moves between a b=0 volume and its neighbours, so the
rigid part of each neighbour's transform should equal the b=0 volume's. The rigid parts are
read across the phase-encoding axis (exact under eddy-current distortion along it); the eddy
shift along that axis, linear in the gradient vector (``s = w . g``), is fitted first from the
steadiness of consecutive diffusion-weighted volumes (a robust regression), then removed.

Where no such link can be made (one b=0 volume, or too few next to a shell),
:func:`reference_link` registers the shell's reference to the b=0 reference once more, rigidly
and without the edge of the brain, which is where the two contrasts disagree.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from ..errors import InputError, RegistrationError
from .initialise import geometric_centre
from .motion import rigid_part
from .register import register
from .resample import resample_array, voxel_map

LOGGER = logging.getLogger(__name__)

#: Fewest b=0 / diffusion-weighted neighbour pairs a link is estimated from.
MIN_PAIRS = 3
#: A link larger than this (mm at the centre, degrees) is not believed and not applied.
MAX_LINK_MM, MAX_LINK_DEG = 2.0, 2.0
#: The reference link samples the b=0 reference's mask eroded by this many voxels (the
#: brain's outer centimetre, where CSF and grey matter trade places, left out; 4 to 6 did
#: about as well on four simulated DWIs, 2 and 3 worse) ...
REFERENCE_LINK_ERODE = 5
#: ... and blurs both references by this fraction of a voxel (the series levels' full voxel
#: of blur moves the optimum of mutual information across contrasts further).
REFERENCE_LINK_SMOOTHING = 0.25
#: ... at this many random points of its finer grid (:func:`reference_link`).
REFERENCE_LINK_SAMPLES = 200_000
#: Pair estimates agree when they differ by less than this (mm: at the centre, plus the
#: rotation as an arc on a 50 mm sphere); a link needs most pairs to agree.
AGREE_MM = 0.3


def _distance(a: np.ndarray, b: np.ndarray, centre: np.ndarray) -> float:
    """Displacement at ``centre`` plus the rotation angle on a 50 mm sphere (mm)."""
    delta = a @ np.linalg.inv(b)
    shift = delta[:3, :3] @ centre + delta[:3, 3] - centre
    return float(np.linalg.norm(shift) + 50.0 * Rotation.from_matrix(delta[:3, :3]).magnitude())


def _plausible(shift, angle_deg: float, what: str) -> bool:
    """Whether a link of ``shift`` (mm at the centre) and ``angle_deg`` is small enough to be
    believed (:data:`MAX_LINK_MM`, :data:`MAX_LINK_DEG`); a warning says when it is not."""
    size = float(np.linalg.norm(shift))
    if size > MAX_LINK_MM or angle_deg > MAX_LINK_DEG:
        LOGGER.warning("%s gives an implausible link (%.2f mm, %.2f deg); not used", what, size,
                       angle_deg)
        return False
    return True


def consensus(estimates: list, centre: np.ndarray) -> list:
    """The largest group of estimates within :data:`AGREE_MM` of one of them.

    Pairs on either side of a sudden head movement give estimates off by the movement; they
    are left out, and a link is only made when the agreeing ones are the majority.

    >>> shift = lambda x: np.r_[np.c_[np.eye(3), [x, 0, 0]], [[0, 0, 0, 1]]]
    >>> len(consensus([shift(0.0), shift(0.05), shift(1.5), shift(0.1)], np.zeros(3)))
    3
    """
    best: list = []
    for anchor in estimates:
        group = [e for e in estimates if _distance(e, anchor, centre) < AGREE_MM]
        if len(group) > len(best):
            best = group
    return best


def _huber_lstsq(a: np.ndarray, y: np.ndarray, rounds: int = 8) -> np.ndarray:
    """Least squares with Huber reweighting (robust to the odd jump between volumes).

    >>> a = np.c_[np.arange(10.0), np.ones(10)]
    >>> y = 2 * a[:, 0] + 1; y[3] += 50
    >>> np.round(_huber_lstsq(a, y), 2).tolist()
    [2.0, 1.0]
    """
    x = np.linalg.lstsq(a, y, rcond=None)[0]
    for _ in range(rounds):
        residual = y - a @ x
        scale = 1.4826 * np.median(np.abs(residual)) + 1e-9
        weight = np.minimum(1.0, 1.5 * scale / np.maximum(np.abs(residual), 1e-12))
        x = np.linalg.lstsq(a * weight[:, None], y * weight, rcond=None)[0]
    return x


def eddy_shift_model(rigid: dict, dw: np.ndarray, gradients, centre, pe_direction=None):
    """The eddy shifts ``s_t = W g_t`` (mm at ``centre``), from the differences of consecutive
    diffusion-weighted volumes (the head barely moves between them; a robust fit passes over
    jumps).

    With ``pe_direction`` the shift is along it only (``W = p w^T``, three unknowns), else a
    full ``(3, 3)`` ``W``. None with fewer than six pairs of consecutive volumes.
    """
    tau = {t: m[:3, :3] @ centre + m[:3, 3] - centre for t, m in rigid.items()}
    rows, values = [], []
    for t in range(len(dw) - 1):
        if dw[t] and dw[t + 1]:
            rows.append(gradients[t] - gradients[t + 1])
            values.append(tau[t] - tau[t + 1])
    if len(rows) < 6:
        return None
    rows, values = np.asarray(rows), np.asarray(values)
    if pe_direction is not None:
        pe = np.asarray(pe_direction, dtype=float)
        return np.outer(pe, _huber_lstsq(rows, values @ pe))
    return np.stack([_huber_lstsq(rows, values[:, k]) for k in range(3)])


def phase_encoding_from_shifts(matrices, dw, gradients, series_affine, centre):
    """The voxel axis the eddy shifts run along (``W``'s dominant direction), or None when the
    shifts are too small or do not point along one voxel axis."""
    centre = np.asarray(centre, dtype=float)
    rigid = {t: rigid_part(matrices[t], centre_world=centre) for t in np.flatnonzero(dw)}
    shifts = eddy_shift_model(rigid, np.asarray(dw), gradients, centre)
    if shifts is None:
        return None
    u, sv, _ = np.linalg.svd(shifts)
    if not sv[0] > 3.0 * sv[1] or sv[0] < 0.05:
        return None
    axes = np.asarray(series_affine, dtype=float)[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0)
    cosines = np.abs(axes.T @ u[:, 0])
    return axes[:, int(np.argmax(cosines))] if cosines.max() > 0.9 else None


def continuity_link(matrices, dw, members, *, gradients=None, pe_direction=None, centre):
    """The correction ``C`` (``M_t <- M_t @ C``) bringing the volumes ``members`` into the b=0
    frame, or None when it cannot be estimated or is implausible.

    Parameters
    ----------
    matrices : (T, 4, 4) array
        Reference-to-volume matrices (b=0 volumes registered among themselves).
    dw : (T,) bool array
        Diffusion-weighted volumes.
    members : list of int
        The volumes of one shell.
    gradients : (T, 3) array, optional
        World gradient directions: enable the eddy-shift model, and with it the correction
        along the phase-encoding axis (without it only across, and only with
        ``pe_direction``).
    pe_direction : (3,) array or None
        World phase-encoding direction: rigid parts are read across it and the shifts run
        along it. None: polar rigid parts and shifts in any direction.
    centre : (3,) array
        World centre of the reference (where translations are compared).

    Returns
    -------
    (4, 4) array or None
    """
    centre = np.asarray(centre, dtype=float)
    pe = None if pe_direction is None else np.asarray(pe_direction, float) / np.linalg.norm(
        pe_direction)
    rigid = {t: rigid_part(matrices[t], pe_direction=pe, centre_world=centre)
             for t in range(len(dw)) if dw[t]}
    shifts = None if gradients is None else eddy_shift_model(rigid, dw, gradients, centre, pe)
    if shifts is None and pe is None:
        return None  # neither the shifts nor the axis they run along are known
    if shifts is not None:
        for t in rigid:
            rigid[t] = rigid[t].copy()
            rigid[t][:3, 3] -= shifts @ gradients[t]
    chosen = set(members)
    estimates = []
    for k in np.flatnonzero(~np.asarray(dw)):
        for t in (k - 1, k + 1):
            if t in chosen:
                estimates.append(np.linalg.inv(rigid[t]) @ matrices[k])
    if shifts is None:  # the eddy shift along p is not modelled: correct across p only
        for e in estimates:
            e[:3, 3] -= pe * float(pe @ (e[:3, :3] @ centre + e[:3, 3] - centre))
    agreeing = consensus(estimates, centre)
    if len(agreeing) < max(MIN_PAIRS, 0.5 * len(estimates) + 1e-9):
        LOGGER.info("b=0 continuity: %d of %d pair estimates agree; no link", len(agreeing),
                    len(estimates))
        return None
    estimates = agreeing
    rotvec = np.median([Rotation.from_matrix(e[:3, :3]).as_rotvec() for e in estimates], axis=0)
    shift = np.median([e[:3, :3] @ centre + e[:3, 3] - centre for e in estimates], axis=0)
    if not _plausible(shift, np.degrees(np.linalg.norm(rotvec)), "b=0 continuity"):
        return None
    link = np.eye(4)
    link[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    link[:3, 3] = centre + shift - link[:3, :3] @ centre
    LOGGER.info("b=0 continuity link from %d pairs: %.3f mm, %.3f deg", len(estimates),
                np.linalg.norm(shift), np.degrees(np.linalg.norm(rotvec)))
    return link


def reference_link(b0_reference, b0_mask, shell_reference, *, device="cpu", seed=0):
    """The correction ``C`` (``M_t <- M_t @ C``) bringing a shell into the b=0 frame by
    registering its reference to the b=0 reference, or None when that fails or is implausible.

    Mutual information between a diffusion-weighted and a b=0 image settles off by the same
    amount for every volume of a shell (the module docstring says why); most of that offset
    comes from the brain's outer centimetre and from blurring the two contrasts alike. Here the
    two references (medians: little noise) are compared rigidly over the b=0 mask eroded by
    :data:`REFERENCE_LINK_ERODE` voxels, blurred by :data:`REFERENCE_LINK_SMOOTHING` of a
    voxel. With that little blur, linear interpolation between two images on one grid pulls
    the answer towards no shift (the moving voxels' centres coincide with the sample points
    there), so the b=0 reference is first resampled (cubic) onto a grid twice as fine whose
    points lie a quarter voxel off the original ones (:func:`_off_grid`). On three simulated
    DWIs with one b=0 volume (2-2.5 mm) this took the mean error from 0.36-0.40 mm to
    0.09-0.11 mm, and on the benchmark's DWI with the continuity link left out from 0.34 to
    0.11 mm (the continuity link: 0.07); without the finer grid 0.14-0.22 and 0.10 mm.

    Parameters
    ----------
    b0_reference, b0_mask : nibabel images
        The b=0 reference and its (head) mask on the reference grid.
    shell_reference : nibabel image
        The shell's reference on the same grid (its volumes realigned as they stand).
    device, seed
        As :func:`~niaffine.engine.register`.

    Returns
    -------
    (4, 4) array or None
        Maps b=0 reference points to shell reference points.
    """
    mask = np.asarray(b0_mask.dataobj) > 0
    eroded = mask
    for _ in range(REFERENCE_LINK_ERODE):  # a small or thin field of view keeps a fifth
        inner = ndi.binary_erosion(eroded)
        if inner.sum() < 0.2 * mask.sum():
            break
        eroded = inner
    voxel = float(np.min(nib.affines.voxel_sizes(b0_reference.affine)))
    fixed, fixed_mask = _off_grid(b0_reference, eroded)
    try:
        found = register(
            fixed, shell_reference, fixed_mask=fixed_mask, dof=6, metric="mi", init="identity",
            rotation_search=False, levels_mm=(2.0 * voxel, voxel / 2.0),
            smoothing_mm=REFERENCE_LINK_SMOOTHING * voxel, edge_mm=0.0,
            max_samples=REFERENCE_LINK_SAMPLES, device=device, seed=seed)
    except (InputError, RegistrationError) as err:
        LOGGER.warning("reference link failed (%s); not used", str(err).splitlines()[0])
        return None
    link = np.asarray(found.matrix, dtype=float)
    centre = geometric_centre(b0_reference.shape[:3], b0_reference.affine)
    shift = link[:3, :3] @ centre + link[:3, 3] - centre
    angle = np.degrees(Rotation.from_matrix(link[:3, :3]).magnitude())
    if not _plausible(shift, angle, "the reference registration"):
        return None
    LOGGER.info("reference link: %.3f mm, %.3f deg", np.linalg.norm(shift), angle)
    return link


def _off_grid(img, mask: np.ndarray):
    """``img`` (cubic) and ``mask`` (nearest) on a grid of half its spacing whose points lie a
    quarter voxel off ``img``'s in every axis (the outermost quarter voxel, outside ``img``'s
    grid, is background).

    >>> import nibabel as nib
    >>> fine, fine_mask = _off_grid(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)),
    ...                             np.ones((4, 4, 4), bool))
    >>> fine.shape, fine.affine[0].tolist(), int(np.asanyarray(fine_mask.dataobj).sum())
    ((8, 8, 8), [0.5, 0.0, 0.0, -0.25], 216)
    """
    affine = np.asarray(img.affine, dtype=float)
    fine = affine @ np.diag([0.5, 0.5, 0.5, 1.0])
    fine[:3, 3] = affine[:3, :3] @ np.full(3, -0.25) + affine[:3, 3]
    shape = tuple(2 * int(n) for n in img.shape[:3])
    to_voxels = voxel_map(np.eye(4), fine, affine)
    values = resample_array(np.asarray(img.dataobj, dtype=np.float32), to_voxels, shape, order=3)
    inside = resample_array(np.asarray(mask, dtype=np.uint8), to_voxels, shape, order=0)
    return nib.Nifti1Image(values, fine), nib.Nifti1Image(inside.astype(np.uint8), fine)


def phase_encoding_from_matrices(matrices, dw, series_affine) -> np.ndarray:
    """The voxel axis of a series along which its diffusion-weighted volumes are distorted.

    Eddy currents distort along the phase-encoding axis ``p`` only: the rows of each 12-dof
    linear part taken across ``p`` are then those of a rotation (orthonormal). The voxel axis
    whose orthogonal rows are closest to orthonormal over all volumes is taken.

    Returns
    -------
    (3,) array or None
        Unit world direction of that voxel axis (its sign is immaterial); None when no axis
        stands out (the best fits less than twice as well as the next: too little distortion
        or too few volumes to tell).

    Examples
    --------
    >>> shear = np.tile(np.eye(4), (3, 1, 1)); shear[:, 1, 0] = [0.02, -0.01, 0.015]
    >>> phase_encoding_from_matrices(shear, np.ones(3, bool), np.eye(4)).tolist()
    [0.0, 1.0, 0.0]
    """
    axes = np.asarray(series_affine, dtype=float)[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0)
    scores = []
    for a in range(3):
        p = axes[:, a]
        basis = np.linalg.svd(np.eye(3) - np.outer(p, p))[0][:, :2].T  # two rows across p
        score = 0.0
        for t in np.flatnonzero(dw):
            rows = basis @ np.asarray(matrices[t], dtype=float)[:3, :3]
            score += float(np.sum((rows @ rows.T - np.eye(2)) ** 2))
        scores.append(score)
    order = np.argsort(scores)
    if not scores[order[0]] < 0.5 * scores[order[1]]:
        return None
    return axes[:, int(order[0])]


#: Fewest diffusion-weighted volumes of a shell whose eddy-current terms are fitted as a
#: linear function of the gradient vector (four unknowns per term).
MIN_EDDY_VOLUMES = 8


def eddy_projection(matrices, members, pe_direction, centre, gradients=None):
    """Project 12-dof matrices onto the eddy-current model ``M = (I + p k^T) R`` (+ shift).

    Each matrix keeps its rotation (read across ``p``), its distortion along ``p`` (``k``) and
    its displacement at ``centre``; the scales and shears across ``p``, which eddy currents
    do not cause, are dropped as estimation noise. With ``gradients`` (and at least
    :data:`MIN_EDDY_VOLUMES` volumes), ``k`` is replaced by ``K g`` from a linear fit
    ``k = K g + k0`` over the volumes: eddy fields scale with the diffusion gradient, so what
    the fit leaves is estimation noise, and ``k0``, the same for every volume, is what the
    registration across contrasts got wrong. The fit is used however little of ``k``'s
    variance it explains: a low R^2 means noisy terms (dark high-b volumes), which is when
    the raw terms, common offset included, are worst. (Gating it at R^2 0.6 left a
    simulated b=2000 shell with gradients over the whole sphere, R^2 0.56, at 0.42 mm mean
    error instead of 0.14 mm.)

    Without a phase-encoding direction (none given, and the distortion too small to tell
    which axis it runs along) the whole deviation ``A = L R^T - I`` of each linear part ``L``
    from its polar rotation ``R`` is fitted the same way, ``A = A(g) + A0`` entry by entry,
    and ``A0`` dropped: what is left of eddy currents too weak to show their axis is kept,
    the common zoom of the cross-contrast registration is not. This needs ``gradients``.

    Parameters
    ----------
    matrices : (T, 4, 4) array
        Modified in place for ``members``.
    members : list of int
        Diffusion-weighted volumes.
    pe_direction : (3,) array or None
    centre : (3,) array
    gradients : (T, 3) array, optional

    Returns
    -------
    float or None
        The R^2 of the linear fit (None without gradients or with fewer than
        :data:`MIN_EDDY_VOLUMES` volumes), for the log.
    """
    from .motion import rotation_part

    p = None if pe_direction is None else np.asarray(pe_direction, dtype=float)
    if p is not None:
        p = p / np.linalg.norm(p)
    elif gradients is None:
        return None
    centre = np.asarray(centre, dtype=float)
    rotations, terms = {}, {}
    for t in members:
        linear = matrices[t][:3, :3]
        rotations[t] = rotation_part(linear, pe_direction=p)
        deviation = linear @ rotations[t].T - np.eye(3)
        terms[t] = deviation.ravel() if p is None else p @ deviation
    r2 = None
    if gradients is not None and len(members) >= MIN_EDDY_VOLUMES:
        design = np.c_[np.asarray(gradients, dtype=float)[members], np.ones(len(members))]
        observed = np.array([terms[t] for t in members])
        coefficients = np.linalg.lstsq(design, observed, rcond=None)[0]
        fitted = design @ coefficients
        spread = float(((observed - observed.mean(0)) ** 2).sum())
        r2 = 1.0 - float(((observed - fitted) ** 2).sum()) / spread if spread > 0 else 0.0
        # no gradient, no eddy current: the intercept is the shell's common offset from the
        # cross-contrast registration, not distortion
        linear = design[:, :3] @ coefficients[:3]
        terms = {t: linear[i] for i, t in enumerate(members)}
    elif p is None:
        return None
    for t in members:
        at_centre = matrices[t][:3, :3] @ centre + matrices[t][:3, 3]
        deviation = terms[t].reshape(3, 3) if p is None else np.outer(p, terms[t])
        linear = (np.eye(3) + deviation) @ rotations[t]
        matrices[t][:3, :3] = linear
        matrices[t][:3, 3] = at_centre - linear @ centre
    return r2

# SPDX-License-Identifier: Apache-2.0
"""DWI helpers on synthetic matrices: the eddy-current model, the phase-encoding axis, and the
b=0 continuity link that removes a shell's common cross-contrast offset."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from niaffine.data.series import gradient_directions
from niaffine.engine import series_dwi as D
from niaffine.engine.initialise import geometric_centre

CENTRE = np.array([0.0, -15.0, 20.0])
PE = np.array([0.0, 1.0, 0.0])


def _rigid(rotvec, translation):
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    out[:3, 3] = CENTRE + np.asarray(translation) - out[:3, :3] @ CENTRE
    return out


def _series(rng, n_b0_every=6, n=37, walk=0.02):
    """Head poses (a slow walk), gradients, and eddy distortions linear in the gradient."""
    dw = np.array([t % n_b0_every != 0 for t in range(n)])
    dirs = rng.permutation(gradient_directions(int(dw.sum())))  # spread in time
    gradients = np.zeros((n, 3))
    gradients[dw] = dirs
    steps = rng.normal(0, walk, (n, 6))
    poses = np.cumsum(steps, axis=0)
    heads = np.stack([_rigid(np.radians(p[3:]), p[:3]) for p in poses])  # 0.02 mm, deg a step
    coupling, shift = rng.uniform(-0.01, 0.01, (3, 3)), rng.uniform(-0.8, 0.8, 3)
    true = heads.copy()
    for t in np.flatnonzero(dw):
        eddy = np.eye(4)
        k = coupling @ gradients[t]
        eddy[:3, :3] += np.outer(PE, k)
        eddy[:3, 3] = PE * (shift @ gradients[t]) - np.outer(PE, k) @ CENTRE
        true[t] = eddy @ heads[t]
    return dw, gradients, heads, true


def test_eddy_projection_is_exact_on_the_model_and_removes_other_shears():
    rng = np.random.default_rng(0)
    dw, gradients, _, true = _series(rng)
    members = list(np.flatnonzero(dw))
    scale = np.eye(4)  # a scale across p about the centre: not an eddy-current distortion
    scale[:3, :3] = np.diag([1.004, 1.0, 0.997])
    scale[:3, 3] = CENTRE - scale[:3, :3] @ CENTRE
    noisy = true.copy()
    noisy[members] = true[members] @ scale
    r2 = D.eddy_projection(noisy, members, PE, CENTRE, gradients)
    assert r2 > 0.99
    exact = true.copy()
    assert D.eddy_projection(exact, members, PE, CENTRE, gradients) > 0.999
    assert np.allclose(exact, true, atol=1e-9)
    assert np.abs(noisy - true)[members].max() < 2e-3  # the scale across p is gone


def _zoom(factors):
    """A scale about the centre (what mutual information across contrasts gives)."""
    out = np.eye(4)
    out[:3, :3] = np.diag(factors)
    out[:3, 3] = CENTRE - out[:3, :3] @ CENTRE
    return out


def _linear_error(matrices, truth, members):
    """Largest deviation of the linear parts from the truth's, over ``members``."""
    return max(float(np.abs(matrices[t][:3, :3] - truth[t][:3, :3]).max()) for t in members)


def _zoomed(truth, members, rng, noise):
    """``truth`` with a common cross-contrast zoom and per-volume zoom noise on ``members``."""
    out = truth.copy()
    for t in members:
        out[t] = truth[t] @ _zoom([1.01, 1.012, 0.99]) @ _zoom(1.0 + rng.normal(0.0, noise, 3))
    return out


def test_eddy_fit_is_used_on_noisy_terms_and_drops_their_common_offset():
    # a dark high-b shell: per-volume noise larger than the eddy terms' own spread, so the
    # linear fit explains little of their variance, and a common zoom from the cross-contrast
    # registration; the fit is still the better estimate by far
    rng = np.random.default_rng(4)
    dw, gradients, _, true = _series(rng)
    members = list(np.flatnonzero(dw))
    noisy = _zoomed(true, members, rng, 0.012)
    raw_error = _linear_error(noisy, true, members)
    r2 = D.eddy_projection(noisy, members, PE, CENTRE, gradients)
    assert r2 < 0.6
    assert _linear_error(noisy, true, members) < 0.2 * raw_error


def test_eddy_fit_without_a_phase_encoding_axis_drops_the_common_zoom():
    # eddy currents too weak to show their axis (none here): every diffusion-weighted
    # volume keeps the zoom that mutual information across contrasts gave, plus noise
    rng = np.random.default_rng(5)
    dw, gradients, heads, _ = _series(rng)
    members = list(np.flatnonzero(dw))
    biased = _zoomed(heads, members, rng, 1e-3)
    raw_error = _linear_error(biased, heads, members)
    D.eddy_projection(biased, members, None, CENTRE, gradients)
    assert _linear_error(biased, heads, members) < 0.15 * raw_error
    # the displacement at the centre is kept
    for t in members:
        assert np.allclose(biased[t][:3, :3] @ CENTRE + biased[t][:3, 3],
                           heads[t][:3, :3] @ CENTRE + heads[t][:3, 3], atol=1e-9)
    # eddy-current distortions along an unknown axis are linear in the gradient: kept
    _, gradients, _, true = _series(np.random.default_rng(6))
    kept = true.copy()
    D.eddy_projection(kept, members, None, CENTRE, gradients)
    assert _linear_error(kept, true, members) < 3e-4  # (the polar rotation: second order)
    # without gradients there is nothing to fit across volumes: left alone
    alone = biased.copy()
    assert D.eddy_projection(alone, members, None, CENTRE) is None
    assert np.array_equal(alone, biased)


def test_phase_encoding_axis_is_found():
    rng = np.random.default_rng(1)
    dw, gradients, _, true = _series(rng)
    affine = np.diag([-2.5, 2.5, 2.5, 1.0])
    assert np.allclose(np.abs(D.phase_encoding_from_matrices(true, dw, affine)), PE)
    assert np.allclose(np.abs(D.phase_encoding_from_shifts(true, dw, gradients, affine,
                                                           CENTRE)), PE)
    heads_only = np.tile(np.eye(4), (len(dw), 1, 1))
    assert D.phase_encoding_from_matrices(heads_only, dw, affine) is None
    assert D.phase_encoding_from_shifts(heads_only, dw, gradients, affine, CENTRE) is None


@pytest.mark.parametrize("with_gradients", [True, False])
def test_continuity_link_removes_a_common_offset(with_gradients):
    rng = np.random.default_rng(2)
    dw, gradients, heads, true = _series(rng)
    offset = _rigid([0.002, -0.001, 0.003], [0.1, -0.4, -0.15])  # what MI got wrong
    biased = true.copy()
    biased[dw] = true[dw] @ offset
    members = list(np.flatnonzero(dw))
    link = D.continuity_link(biased, dw, members, gradients=gradients if with_gradients else None,
                             pe_direction=PE, centre=CENTRE)
    fixed = biased.copy()
    fixed[dw] = biased[dw] @ link
    residual = np.linalg.inv(true[1]) @ fixed[1]
    at_centre = residual[:3, :3] @ CENTRE + residual[:3, 3] - CENTRE
    if with_gradients:
        assert np.linalg.norm(at_centre) < 0.06
    else:  # only across the phase-encoding axis: the 0.4 mm along it stays
        assert abs(at_centre[0]) < 0.06 and abs(at_centre[2]) < 0.06
        assert abs(at_centre[1] + 0.4) < 0.1
    angle = np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude())
    assert angle < 0.05


def test_continuity_link_needs_pairs_and_shifts_or_an_axis():
    rng = np.random.default_rng(3)
    dw, gradients, _, true = _series(rng)
    members = list(np.flatnonzero(dw))
    assert D.continuity_link(true, dw, members, pe_direction=None, centre=CENTRE) is None
    # without the axis, shifts in any direction are fitted: the truth needs no correction
    link = D.continuity_link(true, dw, members, gradients=gradients, pe_direction=None,
                             centre=CENTRE)
    assert link is not None and D._distance(link, np.eye(4), CENTRE) < 0.15
    b0_first = np.r_[np.zeros(3, bool), np.ones(20, bool)]
    only = np.tile(np.eye(4), (23, 1, 1))
    assert D.continuity_link(only, b0_first, list(range(3, 23)), pe_direction=PE,
                             centre=CENTRE) is None  # one pair: b=0 volumes only at the start


def _reference_pair(offset):
    """A b=0-like reference, its head mask, and the same image moved by ``offset``."""
    import nibabel as nib

    from niaffine.engine.series_reference import head_mask, resample_array, voxel_map
    from tests import series_cases as SC

    case = SC.dwi()
    data = np.asarray(case.series.dataobj)[..., 0]
    ref = nib.Nifti1Image(data, case.series.affine)
    moved = resample_array(data, voxel_map(np.linalg.inv(offset), ref.affine, ref.affine),
                           data.shape, order=3)
    return ref, head_mask(ref), nib.Nifti1Image(moved, ref.affine)


def _offset(ref, rotvec, translation):
    centre = geometric_centre(ref.shape, ref.affine)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    out[:3, 3] = centre + np.asarray(translation) - out[:3, :3] @ centre
    return out, centre


def test_reference_link_recovers_a_rigid_offset():
    probe, _, _ = _reference_pair(np.eye(4))
    offset, centre = _offset(probe, np.radians([0.4, -0.3, 0.5]), [0.6, -0.8, 0.4])
    ref, mask, moved = _reference_pair(offset)
    link = D.reference_link(ref, mask, moved)
    assert link is not None
    # 4 mm voxels: 0.11 of 1.69 mm left (on the one grid, without the finer off-grid copy of
    # the b=0 reference, 0.47: linear interpolation pulled it towards no shift)
    assert D._distance(link, offset, centre) < 0.1 * D._distance(np.eye(4), offset, centre)


def test_reference_link_refuses_an_implausible_offset():
    probe, _, _ = _reference_pair(np.eye(4))
    offset, _ = _offset(probe, np.zeros(3), [6.0, 0.0, 0.0])  # beyond MAX_LINK_MM
    ref, mask, moved = _reference_pair(offset)
    assert D.reference_link(ref, mask, moved) is None

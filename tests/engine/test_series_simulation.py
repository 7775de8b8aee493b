# SPDX-License-Identifier: Apache-2.0
"""The simulated series (niaffine.data.series): geometry, motion, contrasts, truth."""

import nibabel as nib
import numpy as np
import pytest
from nitransforms.linear import Affine
from nitransforms.resampling import apply

from niaffine.data import series as S
from tests import series_cases as SC


def _corr(a, b, mask):
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def test_bold_geometry_and_truth():
    case = SC.bold()
    assert case.series.ndim == 4 and case.series.shape[3] == 6 and case.kind == "bold"
    assert nib.aff2axcodes(case.series.affine) == ("L", "A", "S")
    assert np.allclose(nib.affines.voxel_sizes(case.series.affine), 4.0)
    assert case.series.header.get_zooms()[3] == 2.0
    for m in case.true_matrices:
        assert np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3))
    assert len(case.motion.jumps) == 1
    mean, worst = S.volume_errors(case, case.true_matrices @ np.linalg.inv(case.true_matrices[0]))
    assert mean.max() < 1e-9 and worst.max() < 1e-9
    assert case.mask.shape == case.series.shape[:3]


def test_bold_volumes_follow_the_truth():
    """nitransforms, given the true volume-0-to-volume-t map, brings volume t onto volume 0."""
    case = SC.bold()
    data = np.asarray(case.series.dataobj)
    ref = nib.Nifti1Image(data[..., 0], case.series.affine)
    inside = np.asarray(case.mask.dataobj) > 0
    t = case.motion.jumps[0]
    vol = nib.Nifti1Image(data[..., t], case.series.affine)
    truth = case.true_matrices[t] @ np.linalg.inv(case.true_matrices[0])
    back = np.asarray(apply(Affine(truth, reference=ref), vol, reference=ref, order=3).dataobj)
    assert _corr(back, data[..., 0], inside) > 0.97
    assert _corr(data[..., t], data[..., 0], inside) < _corr(back, data[..., 0], inside) - 0.05


def test_motion_path_parameters():
    path = S.random_motion(np.random.default_rng(0), 40, jumps=3, jump_mm=(2, 3),
                           jump_deg=(2, 3), walk_mm=0.0, walk_deg=0.0)
    steps = np.linalg.norm(np.diff(path.translations, axis=0), axis=1)
    assert sorted(np.flatnonzero(steps > 0) + 1) == list(path.jumps)
    assert ((steps[steps > 0] >= 2) & (steps[steps > 0] <= 3)).all()
    angles = np.degrees(np.linalg.norm(np.diff(path.rotations, axis=0), axis=1))
    assert ((angles[angles > 0] >= 2) & (angles[angles > 0] <= 3)).all()
    with pytest.raises(ValueError):
        S.random_motion(np.random.default_rng(0), 0)


def test_dwi_contrast_eddy_and_gradients():
    case = SC.dwi()
    b0 = case.bvals == 0
    assert case.kind == "dwi" and b0.sum() == 2 and (~b0).sum() == 6
    assert np.allclose(np.linalg.norm(case.bvecs[:, ~b0], axis=0), 1.0)
    assert np.array_equal(case.bvecs[:, b0], np.zeros((3, 2)))
    for t in range(len(b0)):  # eddy currents only where gradients were on
        same = np.allclose(case.true_matrices[t], case.head_matrices[t])
        assert same == bool(b0[t])
    data = np.asarray(case.series.dataobj)
    inside = np.asarray(case.mask.dataobj) > 0
    # contrast differs: CSF is bright at b=0 and dark at b=1000
    assert _corr(data[..., 0], data[..., 1], inside) < 0.7
    assert data[..., 1][inside].mean() < 0.6 * data[..., 0][inside].mean()
    # the gradient direction shows in white matter: two b=1000 volumes differ more than noise
    assert _corr(data[..., 1], data[..., 2], inside) < 0.99


def test_series_are_reproducible():
    kwargs = {"n_volumes": 3, "voxel_size": 5.0, "source_mm": 2}
    a = S.make_bold_series(np.random.default_rng(5), **kwargs)
    b = S.make_bold_series(np.random.default_rng(5), **kwargs)
    assert np.array_equal(np.asarray(a.series.dataobj), np.asarray(b.series.dataobj))
    assert np.array_equal(a.true_matrices, b.true_matrices) and a.info == b.info


def test_bvec_world_round_trip():
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS: no flip
    dirs = S.gradient_directions(4)
    assert np.allclose(S.world_to_bvecs(dirs, affine).T, dirs * [-1, 1, 1])
    assert np.allclose(S.bvecs_to_world(S.world_to_bvecs(dirs, affine), affine), dirs)

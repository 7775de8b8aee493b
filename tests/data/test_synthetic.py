# SPDX-License-Identifier: Apache-2.0
"""Synthetic cases: contrasts, scalp, bias, noise, and an independent check with nitransforms."""

import nibabel as nib
import numpy as np
import pytest
from nitransforms.linear import Affine
from nitransforms.resampling import apply

from niaffine.data import synthetic, templates


@pytest.fixture(scope="module")
def clean_case():
    return synthetic.make_case(np.random.default_rng(11), contrast="T1", bias=False,
                               noise=False, orientation="LIA", oblique_deg=12.0)


def _every_other(img):
    """The image at every other voxel: a 2 mm reference grid whose points are exact 1 mm voxels."""
    data = np.asanyarray(img.dataobj)[::2, ::2, ::2]
    return nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ np.diag([2, 2, 2, 1]))


def _corr_in_brain(img, reference, mask):
    inside = np.asanyarray(mask.dataobj) > 0
    a = np.asanyarray(img.dataobj)[inside]
    b = np.asanyarray(reference.dataobj)[inside]
    return float(np.corrcoef(a, b)[0, 1])


def test_case_grid_and_fields(clean_case):
    case = clean_case
    assert nib.aff2axcodes(case.moving.affine) == ("L", "I", "A")
    assert np.allclose(nib.affines.voxel_sizes(case.moving.affine), (1.2, 1.0, 1.5), atol=1e-5)
    assert case.true_matrix.shape == (4, 4)
    assert case.contrast == "T1"
    assert case.fixed.shape == case.fixed_mask.shape == (197, 233, 189)
    assert case.moving_mask.shape == case.moving.shape
    assert np.asanyarray(case.moving_mask.dataobj).dtype == np.uint8
    # cropped: a smaller field of view than the template's ...
    assert np.prod(case.moving.shape) * 1.8 < np.prod(case.fixed.shape)
    # ... that still holds the whole (scaled) brain: mask volume = template volume * |det|
    fixed_ml = np.asanyarray(case.fixed_mask.dataobj).sum() / 1000.0
    moving_ml = np.asanyarray(case.moving_mask.dataobj).sum() * 1.8 / 1000.0
    assert moving_ml == pytest.approx(fixed_ml * abs(np.linalg.det(case.true_matrix)), rel=0.01)
    border = np.asanyarray(case.moving_mask.dataobj).copy()
    border[1:-1, 1:-1, 1:-1] = 0
    assert border.sum() == 0


def test_case_matches_nitransforms_forward(clean_case):
    """nitransforms, given inverse(true_matrix), makes the same moving image from the fixed."""
    case = clean_case
    xfm = Affine(np.linalg.inv(case.true_matrix), reference=case.moving)
    expected = apply(xfm, case.fixed, reference=case.moving, order=3)
    assert _corr_in_brain(case.moving, expected, case.moving_mask) > 0.999
    inside = np.asanyarray(case.moving_mask.dataobj) > 0
    diff = np.asanyarray(case.moving.dataobj)[inside] - np.asanyarray(expected.dataobj)[inside]
    assert np.abs(diff).mean() < 0.01  # intensities 0-255


def test_case_matches_nitransforms_back(clean_case):
    """Resampling the moving image with nitransforms and true_matrix gives back the fixed."""
    case = clean_case
    fixed, mask = _every_other(case.fixed), _every_other(case.fixed_mask)
    back = apply(Affine(case.true_matrix, reference=fixed), case.moving, reference=fixed, order=3)
    assert _corr_in_brain(back, fixed, mask) > 0.99


def test_noisy_t2_case_matches_nitransforms():
    case = synthetic.make_case(np.random.default_rng(5), contrast="T2", order=1)
    assert case.contrast == "T2"
    t2 = synthetic.t2_like(templates.load_mni_t1(), templates.load_mni_gm(),
                           templates.load_mni_wm(), case.fixed_mask)
    fixed, mask, t2 = (_every_other(img) for img in (case.fixed, case.fixed_mask, t2))
    back = apply(Affine(case.true_matrix, reference=fixed), case.moving, reference=fixed, order=1)
    assert _corr_in_brain(back, t2, mask) > 0.9  # bias field + 2 % noise
    assert _corr_in_brain(back, fixed, mask) < 0  # inverted contrast


def test_case_is_reproducible():
    kwargs = {"contrast": "T1", "dof": 9, "bias": True, "noise": True}
    a = synthetic.make_case(np.random.default_rng(3), **kwargs)
    b = synthetic.make_case(np.random.default_rng(3), **kwargs)
    c = synthetic.make_case(np.random.default_rng(4), **kwargs)
    assert np.array_equal(a.true_matrix, b.true_matrix)
    assert np.allclose(a.moving.affine, b.moving.affine)
    assert np.array_equal(np.asanyarray(a.moving.dataobj), np.asanyarray(b.moving.dataobj))
    assert a.info == b.info
    assert not np.allclose(a.true_matrix, c.true_matrix)


def test_t2_like_contrast_order():
    t1, gm, wm = templates.load_mni_t1(), templates.load_mni_gm(), templates.load_mni_wm()
    mask = templates.load_mni_brain_mask()
    t2 = np.asanyarray(synthetic.t2_like(t1, gm, wm, mask).dataobj)
    g, w = np.asanyarray(gm.dataobj), np.asanyarray(wm.dataobj)
    inside = np.asanyarray(mask.dataobj) > 0
    csf = inside & (g + w < 25)
    assert csf.sum() > 10000
    means = [t2[csf].mean(), t2[g > 230].mean(), t2[w > 230].mean()]
    assert means[0] > means[1] > means[2] > 0
    assert np.all(t2[~inside] == 0)


def test_add_scalp_shell():
    img = nib.Nifti1Image(np.zeros((40, 40, 40), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    data = np.asanyarray(img.dataobj)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    brain = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 12**2
    data[brain] = 100.0
    head = synthetic.add_scalp(img, np.random.default_rng(0), margin_mm=30.0)
    hd = np.asanyarray(head.dataobj)
    assert head.shape == (70, 70, 70)
    # world positions are preserved: the brain centre is at the same place
    centre = nib.affines.apply_affine(img.affine, (20, 20, 20))
    assert np.allclose(nib.affines.apply_affine(head.affine, (35, 35, 35)), centre)
    assert np.array_equal(hd[15:55, 15:55, 15:55][brain], data[brain])
    line = hd[35, 35, 35 + 12:]  # from the brain surface outwards (2 mm voxels)
    assert line.max() > 100.0  # bright fat
    assert np.any(line[:6] < 10.0)  # dark skull within 12 mm
    assert np.all(hd[:2] == 0.0)  # air at the edge of the padded grid


def test_bias_field_and_noise():
    rng = np.random.default_rng(0)
    field = synthetic.bias_field((30, 31, 32), rng, strength=0.2)
    assert field.dtype == np.float32 and field.shape == (30, 31, 32)
    assert np.isclose(max(1 - field.min(), field.max() - 1), 0.2, atol=1e-5)
    assert np.abs(np.diff(field, axis=0)).max() < 0.05  # smooth
    img = nib.Nifti1Image(np.zeros((30, 31, 32), np.float32), np.eye(4))
    np.asanyarray(img.dataobj)[10:20] = 100.0
    noisy = np.asanyarray(synthetic.add_noise(img, rng, 0.05).dataobj)
    assert np.all(noisy >= 0)
    # Rician background: mean sigma * sqrt(pi / 2), sigma = 5
    assert noisy[:10].mean() == pytest.approx(5 * np.sqrt(np.pi / 2), rel=0.05)
    assert noisy[10:20].std() == pytest.approx(5.0, rel=0.05)
    gauss = np.asanyarray(synthetic.add_noise(img, rng, 0.05, kind="gaussian").dataobj)
    assert abs(gauss[:10].mean()) < 0.2


def test_case_with_given_moving_shape():
    """Cases on one moving shape (for batching) keep the brain inside the field of view."""
    shape = (190, 250, 170)
    for seed in (0, 1):
        case = synthetic.make_case(np.random.default_rng(seed), moving_shape=shape,
                                   bias=False, noise=False, order=1)
        assert case.moving.shape == shape
        mask = np.asanyarray(case.moving_mask.dataobj)
        fixed_ml = np.asanyarray(case.fixed_mask.dataobj).sum() / 1000.0
        det = abs(np.linalg.det(case.true_matrix))
        assert mask.sum() * 1.8 / 1000.0 == pytest.approx(fixed_ml * det, rel=0.01)

# SPDX-License-Identifier: Apache-2.0
"""Random affines, grids, resampling and displacement errors of niaffine.data."""

import nibabel as nib
import numpy as np
import pytest

from niaffine.data import synthetic, templates


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LIA", "PIR", "ASL"])
@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (1.2, 1.0, 1.5), (0.8, 3.0, 2.0)])
def test_make_grid_orientation_voxel_size_and_centre(orientation, voxel_size):
    shape = (40, 50, 30)
    centre = (3.0, -17.0, 12.5)
    aff = synthetic.make_grid(shape=shape, voxel_size=voxel_size, orientation=orientation,
                              oblique_deg=10.0, centre=centre)
    assert "".join(nib.aff2axcodes(aff)) == orientation
    assert np.allclose(nib.affines.voxel_sizes(aff), voxel_size)
    middle = (np.array(shape) - 1) / 2
    assert np.allclose(nib.affines.apply_affine(aff, middle), centre)


def test_make_grid_oblique_tilts_axes():
    aff = synthetic.make_grid(shape=(8, 8, 8), voxel_size=1.0, orientation="RAS",
                              oblique_deg=20.0)
    k_axis = aff[:3, 2] / np.linalg.norm(aff[:3, 2])
    assert np.isclose(np.degrees(np.arccos(k_axis[2])), 20.0)


@pytest.mark.parametrize("bad", ["RAR", "XYZ", "RA"])
def test_make_grid_rejects_bad_orientation(bad):
    with pytest.raises(ValueError):
        synthetic.make_grid(shape=(4, 4, 4), voxel_size=1.0, orientation=bad)


@pytest.mark.parametrize("seed", range(5))
def test_random_affine_dof(seed):
    centre = np.array([1.0, -18.0, 7.0])
    mats = {d: synthetic.random_affine(np.random.default_rng(seed), dof=d, centre=centre)
            for d in (3, 6, 7, 9, 12)}
    rigid = mats[6][:3, :3]
    assert np.allclose(rigid.T @ rigid, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(rigid), 1.0, atol=1e-12)
    assert np.allclose(mats[3][:3, :3], np.eye(3))
    sv7 = np.linalg.svd(mats[7][:3, :3], compute_uv=False)
    assert np.allclose(sv7, sv7[0]) and not np.isclose(sv7[0], 1.0)
    # dof 9: R @ Z, so A^T A is diagonal; dof 12 adds shear (A^T A not diagonal)
    gram9 = mats[9][:3, :3].T @ mats[9][:3, :3]
    assert np.allclose(gram9, np.diag(np.diag(gram9)))
    gram12 = mats[12][:3, :3].T @ mats[12][:3, :3]
    assert not np.allclose(gram12, np.diag(np.diag(gram12)))
    # same draw for every dof: same translation of the centre, same rotation
    for m in mats.values():
        assert np.allclose(m[:3, :3] @ centre + m[:3, 3], mats[3][:3, 3] + centre)
    assert np.allclose(mats[12][:3, :3] @ np.linalg.inv(mats[12][:3, :3]), np.eye(3))


def test_random_affine_ranges_and_reproducibility():
    a = synthetic.random_affine(np.random.default_rng(7), dof=6, max_rotation_deg=10,
                                max_translation_mm=5)
    b = synthetic.random_affine(np.random.default_rng(7), dof=6, max_rotation_deg=10,
                                max_translation_mm=5)
    assert np.array_equal(a, b)
    assert np.all(np.abs(a[:3, 3]) <= 5.0)
    angle = np.degrees(np.arccos((np.trace(a[:3, :3]) - 1) / 2))
    assert angle <= 10.0 * np.sqrt(3)
    with pytest.raises(ValueError):
        synthetic.random_affine(np.random.default_rng(0), dof=8)


@pytest.mark.parametrize("order", [1, 3])
def test_warp_identity_reproduces_template(order):
    t1 = templates.load_mni_t1()
    out = synthetic.warp_to_grid(t1, np.eye(4), t1.affine, t1.shape, order=order)
    ref = np.asanyarray(t1.dataobj)
    got = np.asanyarray(out.dataobj)
    assert got.dtype == np.float32 and out.shape == t1.shape
    assert np.allclose(out.affine, t1.affine)
    assert np.abs(got - ref).max() < (1e-3 if order == 1 else 0.05)


def test_warp_translation_direction():
    """moving(y) = fixed(M^-1 y): a +3 mm x translation moves the content by +3 mm."""
    data = np.zeros((20, 20, 20), np.float32)
    data[5, 10, 10] = 1.0
    img = nib.Nifti1Image(data, np.eye(4))
    shift = np.eye(4)
    shift[0, 3] = 3.0
    out = np.asanyarray(synthetic.warp_to_grid(img, shift, np.eye(4), (20, 20, 20)).dataobj)
    assert np.unravel_index(np.argmax(out), out.shape) == (8, 10, 10)


def test_displacement_of_translation_and_rotation():
    mask = templates.load_mni_brain_mask()
    shift = np.eye(4)
    shift[:3, 3] = [2.0, 0.0, 0.0]
    assert synthetic.mean_displacement(shift, np.eye(4), mask) == pytest.approx(2.0)
    assert synthetic.max_displacement(shift, np.eye(4), mask) == pytest.approx(2.0)
    shift[:3, 3] = [0.0, 1.2, -1.6]
    assert synthetic.mean_displacement(np.eye(4), shift, mask) == pytest.approx(2.0)
    # a rotation about a point: the displacement grows with the distance from that point
    rot = synthetic.random_affine(np.random.default_rng(0), dof=6, max_translation_mm=0,
                                  centre=(0, -18, 8))
    mean = synthetic.mean_displacement(rot, np.eye(4), mask)
    assert 0 < mean < synthetic.max_displacement(rot, np.eye(4), mask)

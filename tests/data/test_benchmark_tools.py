# SPDX-License-Identifier: Apache-2.0
"""Conversions of tool outputs to world matrices: torchreg theta, ANTs and elastix transforms."""

import nibabel as nib
import numpy as np
import pytest

from benchmarks.peers import common as tools
from niaffine.data import synthetic, templates


@pytest.fixture(scope="module")
def small_pair():
    """The MNI T1 at 4 mm (fixed) and its image through a known affine on an LPS 3-4 mm grid."""
    t1 = templates.load_mni_t1()
    grid = synthetic.make_grid(shape=(50, 58, 48), voxel_size=4.0, centre=(0, -18, 8))
    fixed = synthetic.warp_to_grid(t1, np.eye(4), grid, (50, 58, 48))
    matrix = synthetic.random_affine(np.random.default_rng(3), dof=12, max_rotation_deg=15,
                                     max_translation_mm=10, centre=(0, -18, 8))
    mgrid = synthetic.make_grid(shape=(60, 56, 50), voxel_size=(3.0, 4.0, 3.5),
                                orientation="LPS", oblique_deg=10.0, centre=(0, -18, 8))
    moving = synthetic.warp_to_grid(t1, matrix, mgrid, (60, 56, 50))
    return fixed, moving, matrix


def _corr(a, b):
    inside = (a > 0) | (b > 0)
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def test_normalised_to_voxel_corners():
    v = tools.normalised_to_voxel((5, 7, 9))
    assert np.allclose(v @ [-1, -1, -1, 1], [0, 0, 0, 1])
    assert np.allclose(v @ [1, 1, 1, 1], [4, 6, 8, 1])
    assert np.allclose(v @ [1, -1, -1, 1], [0, 0, 8, 1])  # x runs along the last axis


def test_theta_round_trip(small_pair):
    fixed, moving, matrix = small_pair
    grid, shape = tools.common_grid([fixed, moving])
    theta = tools.world_to_torchreg_theta(matrix, grid, shape)
    assert np.allclose(tools.torchreg_theta_to_world(theta, grid, shape), matrix)


def test_common_grid_covers_both(small_pair):
    fixed, moving, _ = small_pair
    grid, shape = tools.common_grid([fixed, moving], spacing=2.0)
    assert nib.aff2axcodes(grid) == ("R", "A", "S")
    low = nib.affines.apply_affine(grid, [-0.5, -0.5, -0.5])
    high = nib.affines.apply_affine(grid, np.array(shape) - 0.5)
    for img in (fixed, moving):
        corners = nib.affines.apply_affine(img.affine, np.array(
            [[a, b, c] for a in (0, img.shape[0] - 1) for b in (0, img.shape[1] - 1)
             for c in (0, img.shape[2] - 1)]))
        assert np.all(corners >= low - 1e-6) and np.all(corners <= high + 1e-6)


def test_torchreg_theta_resamples_moving_onto_fixed(small_pair):
    """torchreg's own resampler, given the converted theta, maps the moving onto the fixed."""
    torch = pytest.importorskip("torch")
    affine_mod = pytest.importorskip("torchreg.affine")
    fixed, moving, matrix = small_pair
    grid, shape = tools.common_grid([fixed, moving], spacing=2.0)
    f = np.asanyarray(synthetic.warp_to_grid(fixed, np.eye(4), grid, shape).dataobj)
    m = np.asanyarray(synthetic.warp_to_grid(moving, np.eye(4), grid, shape).dataobj)

    def resample(mat):
        theta = torch.from_numpy(tools.world_to_torchreg_theta(mat, grid, shape)).float()
        out = affine_mod.affine_transform(torch.from_numpy(m)[None, None], theta[None],
                                          padding_mode="zeros")
        return out[0, 0].numpy()

    assert _corr(resample(matrix), f) > 0.95
    assert _corr(resample(np.linalg.inv(matrix)), f) < 0.6  # the other direction is wrong


def test_ants_file_to_world_matrix(small_pair, tmp_path):
    """A known ANTs affine: ANTs' resampling equals nitransforms' with the converted matrix."""
    ants = pytest.importorskip("ants")
    from nitransforms.linear import Affine
    from nitransforms.resampling import apply

    fixed, moving, _ = small_pair
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    tx.set_parameters([0.98, 0.1, 0.0, -0.1, 0.99, 0.05, 0.0, -0.04, 1.02, 3.0, -5.0, 7.0])
    tx.set_fixed_parameters([1.0, -18.0, 8.0])
    path = tmp_path / "affine.mat"
    ants.write_transform(tx, str(path))
    matrix = tools.ants_transform_to_world(path)
    # points: ANTs works in LPS, the matrix in RAS
    flip = np.diag([-1.0, -1.0, 1.0])
    point = np.array([12.0, -30.0, 25.0])
    expected = flip @ np.asarray(tx.apply_to_point(list(flip @ point)))
    assert np.allclose(nib.affines.apply_affine(matrix, point), expected, atol=1e-4)
    # images: ANTs resampling with the file equals nitransforms resampling with the matrix
    paths = {}
    for name, img in (("fixed", fixed), ("moving", moving)):
        paths[name] = str(tmp_path / f"{name}.nii")
        nib.save(img, paths[name])
    by_ants = ants.apply_transforms(ants.image_read(paths["fixed"]),
                                    ants.image_read(paths["moving"]), [str(path)]).numpy()
    by_nt = np.asanyarray(apply(Affine(matrix, reference=fixed), moving, reference=fixed,
                                order=1).dataobj)
    assert _corr(by_ants, by_nt) > 0.999


def test_torchreg_theta_of_a_pure_translation():
    """A world translation is a pure translation in normalised units, with axes reversed."""
    grid = np.diag([1.0, 1.0, 1.0, 1.0])
    grid[:3, 3] = [-100.0, -130.0, -70.0]
    shape = (201, 241, 161)  # half-widths 100, 120 and 80 voxels
    shift = np.eye(4)
    shift[:3, 3] = [2.0, -3.0, 4.0]
    theta = tools.world_to_torchreg_theta(shift, grid, shape)
    assert np.allclose(theta[:, :3], np.eye(3))
    # normalised x runs along the last array axis (world z here), z along the first (world x)
    assert np.allclose(theta[:, 3], [4.0 / 80.0, -3.0 / 120.0, 2.0 / 100.0])
    assert np.allclose(tools.torchreg_theta_to_world(theta, grid, shape), shift)


def test_elastix_parameters_become_the_itk_transform_in_ras():
    """elastix's parameters (LPS, centre) equal ITK's own AffineTransform, flipped to RAS."""
    itk = pytest.importorskip("itk")
    linear = [0.98, 0.1, 0.0, -0.1, 0.99, 0.05, 0.0, -0.04, 1.02]
    translation, centre = [3.0, -5.0, 7.0], [1.0, 18.0, 8.0]
    params = {"Transform": ["AffineTransform"], "TransformParameters": list(map(str, linear
              + translation)), "CenterOfRotationPoint": list(map(str, centre))}
    matrix = tools.elastix_parameters_to_world(params)
    tx = itk.AffineTransform[itk.D, 3].New()
    tx.SetCenter(centre)
    p = tx.GetParameters()
    for i, v in enumerate(linear + translation):
        p[i] = v
    tx.SetParameters(p)
    point = np.array([12.0, -30.0, 25.0])  # RAS
    expected = tools.LPS[:3, :3] @ np.asarray(tx.TransformPoint(list(tools.LPS[:3, :3] @ point)))
    assert np.allclose(nib.affines.apply_affine(matrix, point), expected)


def test_elastix_conversion_rejects_other_transforms():
    with pytest.raises(ValueError, match="AffineTransform"):
        tools.elastix_parameters_to_world({"Transform": ["EulerTransform"]})
    params = {"Transform": ["AffineTransform"], "TransformParameters": ["1"] * 12,
              "CenterOfRotationPoint": ["0"] * 3,
              "InitialTransformParameterFileName": ["init.txt"]}
    with pytest.raises(ValueError, match="chained"):
        tools.elastix_parameters_to_world(params)


def test_matrix_text_files(tmp_path):
    """NiftyReg writes 4 x 4 rows; MRtrix adds '#' comment lines; 3 x 4 is completed."""
    path = tmp_path / "a.txt"
    path.write_text("# centre: 1 2 3\n1 0 0 5\n0 1 0 -2\n0 0 1 3\n0 0 0 1\n")
    assert np.allclose(tools.read_matrix_text(path)[:3, 3], [5, -2, 3])
    path.write_text("1 0 0 5\n0 1 0 -2\n0 0 1 3\n")
    assert np.allclose(tools.read_matrix_text(path)[3], [0, 0, 0, 1])
    path.write_text("1 0\n0 1\n")
    with pytest.raises(ValueError, match="4 x 4"):
        tools.read_matrix_text(path)


def test_saved_nifti_has_one_world_for_every_reader(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), np.diag([-2.0, 2.0, 3.0, 1.0]))
    img.set_qform(np.eye(4), code=2)  # a qform that disagrees with the sform
    saved = nib.load(tools.save_nifti(img, tmp_path / "x.nii"))
    assert saved.get_data_dtype() == np.float32
    assert np.allclose(saved.get_qform(), img.affine) and np.allclose(saved.get_sform(), img.affine)

# SPDX-License-Identifier: Apache-2.0
"""Series resampling: one interpolation through each volume's composed transform."""

import nibabel as nib
import numpy as np
import pytest

from niaffine.data.geometry import make_grid, warp_to_grid
from niaffine.engine import resample_image
from niaffine.engine.series_resample import reference_grid, resample_series, volume_matrices
from niaffine.errors import InputError
from tests import series_cases as SC


def _shift(x=0.0, y=0.0, z=0.0):
    out = np.eye(4)
    out[:3, 3] = [x, y, z]
    return out


def test_volume_matrices_compose_in_ants_order():
    motion = np.stack([_shift(1.0), _shift(0, 2.0)])
    coreg, norm = np.diag([1.1, 1.0, 1.0, 1.0]), _shift(z=3.0)
    out = volume_matrices(motion, [norm, coreg])
    point = np.array([1.0, 1.0, 1.0, 1.0])
    for t in range(2):  # template point -> T1w -> reference -> volume t
        assert np.allclose(out[t] @ point, motion[t] @ coreg @ norm @ point)
    assert np.array_equal(volume_matrices(motion), motion)
    with pytest.raises(InputError):
        volume_matrices(np.eye(4))


def test_each_volume_goes_through_its_own_matrix():
    case = SC.bold()
    series = case.series
    matrices = np.stack([_shift(0.3 * t, -0.2 * t) for t in range(series.shape[3])])
    grid = nib.Nifti1Image(np.zeros((30, 34, 28), np.uint8),
                           make_grid(shape=(30, 34, 28), voxel_size=5.0, orientation="RAS",
                                     centre=(0, -18, 20)))
    out = resample_series(series, matrices, grid, order=1)
    assert out.shape == (30, 34, 28, series.shape[3])
    assert out.header.get_zooms()[3] == pytest.approx(series.header.get_zooms()[3])
    for t in (0, 3):
        vol = nib.Nifti1Image(np.asarray(series.dataobj)[..., t], series.affine)
        one = resample_image(vol, matrices[t], grid, order=1)
        assert np.allclose(np.asarray(out.dataobj)[..., t], np.asarray(one.dataobj), atol=1e-4)


def test_composed_resampling_interpolates_once():
    """Through the composed matrix the result equals one cubic warp of the anatomy; going
    through an intermediate grid (two interpolations) is visibly blurrier."""
    case = SC.bold()
    vol = nib.Nifti1Image(np.asarray(case.series.dataobj)[..., 0], case.series.affine)
    series = nib.Nifti1Image(np.stack([np.asarray(vol.dataobj)] * 2, -1), vol.affine)
    a, b = _shift(1.3, 0.0, 0.7), _shift(-0.4, 0.9, 0.0)
    target = nib.Nifti1Image(np.zeros(vol.shape, np.uint8), vol.affine)
    once = resample_series(series, volume_matrices(np.stack([a, a]), [b]), target, order=3)
    middle = resample_image(vol, a, target, order=3)
    twice = resample_image(middle, b, target, order=3)
    direct = warp_to_grid(vol, np.linalg.inv(a @ b), vol.affine, vol.shape, order=3)
    inside = np.asarray(case.mask.dataobj) > 0
    err_once = np.abs(np.asarray(once.dataobj)[..., 0] - np.asarray(direct.dataobj))[inside]
    err_twice = np.abs(np.asarray(twice.dataobj) - np.asarray(direct.dataobj))[inside]
    assert err_once.mean() < 1e-3 * np.abs(np.asarray(direct.dataobj)[inside]).mean()
    assert err_twice.mean() > 10 * err_once.mean()


def test_reference_grid_keeps_the_field_of_view():
    t1 = nib.Nifti1Image(np.zeros((181, 217, 181), np.uint8),
                         make_grid(shape=(181, 217, 181), voxel_size=1.0, orientation="LIA",
                                   oblique_deg=5.0))
    grid = reference_grid(t1, (3.0, 3.0, 3.5))
    assert nib.aff2axcodes(grid.affine) == ("L", "I", "A")
    assert np.allclose(nib.affines.voxel_sizes(grid.affine), (3.0, 3.0, 3.5))
    centre = lambda img: img.affine @ np.r_[(np.array(img.shape[:3]) - 1) / 2, 1]  # noqa: E731
    assert np.allclose(centre(grid), centre(t1))
    assert grid.shape == (61, 73, 52)
    assert reference_grid(t1).shape == t1.shape

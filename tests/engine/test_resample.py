# SPDX-License-Identifier: Apache-2.0
"""Resampling through world matrices: scipy agreement, labels, series, composition, headers."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from niaffine.data.geometry import make_grid, random_affine
from niaffine.engine import resample_image
from niaffine.engine.resample import compose
from niaffine.errors import InputError

REF_SHAPE = (20, 22, 18)
MOV_SHAPE = (24, 20, 22)


def _smooth(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (ndi.gaussian_filter(rng.standard_normal(shape), 1.5) * 100 + 500).astype(np.float32)


@pytest.fixture(scope="module")
def grids():
    ref = make_grid(shape=REF_SHAPE, voxel_size=(2.0, 2.2, 2.5), orientation="LPS",
                    oblique_deg=12.0, centre=(1.0, 2.0, 3.0))
    mov = make_grid(shape=MOV_SHAPE, voxel_size=(1.8, 2.4, 2.0), orientation="RAS",
                    oblique_deg=(5.0, -8.0, 20.0), centre=(-2.0, 1.0, 0.0))
    matrix = random_affine(np.random.default_rng(2), dof=12, max_rotation_deg=10,
                           max_translation_mm=3, centre=(1.0, 2.0, 3.0))
    return ref, mov, matrix


def _scipy(data, vox_map, order, shape=REF_SHAPE):
    return ndi.affine_transform(data, vox_map[:3, :3], offset=vox_map[:3, 3], output_shape=shape,
                                order=order, mode="constant", cval=0.0)


def _vox_map(matrix, ref, mov):
    return np.linalg.inv(mov) @ matrix @ ref


def test_linear_matches_scipy_affine_transform(grids):
    ref, mov, matrix = grids
    data = _smooth(MOV_SHAPE)
    out = resample_image(nib.Nifti1Image(data, mov), matrix, nib.Nifti1Image(np.zeros(REF_SHAPE), ref))
    expected = _scipy(data.astype(np.float64), _vox_map(matrix, ref, mov), order=1)
    got = np.asarray(out.dataobj)
    # Points inside the moving field of view (scipy's "constant" mode also blends in the border).
    inside = _scipy(np.ones(MOV_SHAPE), _vox_map(matrix, ref, mov), order=1) > 0.999
    assert inside.mean() > 0.4
    assert np.allclose(got[inside], expected[inside], rtol=1e-5, atol=1e-3)
    assert np.all(got[_scipy(np.ones(MOV_SHAPE), _vox_map(matrix, ref, mov), order=0) == 0] == 0)


def test_identity_on_the_same_grid_is_exact(grids):
    ref, _, _ = grids
    data = _smooth(REF_SHAPE, 1)
    img = nib.Nifti1Image(data, ref)
    for order in (0, 1):
        assert np.allclose(np.asarray(resample_image(img, np.eye(4), img, order=order).dataobj), data,
                           atol=1e-3)
    cubic = np.asarray(resample_image(img, np.eye(4), img, order=3).dataobj)
    assert np.allclose(cubic, data, atol=1e-2)


def test_nearest_keeps_labels_and_dtype(grids):
    ref, mov, matrix = grids
    labels = np.random.default_rng(3).integers(0, 6, MOV_SHAPE).astype(np.int16) * 7
    labels = ndi.maximum_filter(labels, 3)  # blocks, so nearest is unambiguous almost everywhere
    out = resample_image(nib.Nifti1Image(labels, mov), matrix, nib.Nifti1Image(np.zeros(REF_SHAPE), ref),
                         order=0)
    got = np.asarray(out.dataobj)
    assert got.dtype == np.int16 and out.get_data_dtype() == np.int16
    assert set(np.unique(got)) <= set(np.unique(labels)) | {0}
    expected = _scipy(labels, _vox_map(matrix, ref, mov), order=0)
    assert (got == expected).mean() > 0.98


def test_cubic_matches_scipy(grids):
    ref, mov, matrix = grids
    data = _smooth(MOV_SHAPE, 4)
    out = resample_image(nib.Nifti1Image(data, mov), matrix, nib.Nifti1Image(np.zeros(REF_SHAPE), ref),
                         order=3)
    expected = _scipy(data, _vox_map(matrix, ref, mov), order=3)
    assert np.allclose(np.asarray(out.dataobj), expected, atol=1e-2)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_series_equals_volume_by_volume(grids, order):
    ref, mov, matrix = grids
    series = np.stack([_smooth(MOV_SHAPE, s) for s in range(10)], axis=-1)  # > one chunk of 8
    img = nib.Nifti1Image(series, mov)
    img.header.set_zooms(img.header.get_zooms()[:3] + (2.5,))
    reference = nib.Nifti1Image(np.zeros(REF_SHAPE), ref)
    out = resample_image(img, matrix, reference, order=order)
    assert out.shape == REF_SHAPE + (10,)
    for t in (0, 7, 8, 9):
        one = resample_image(nib.Nifti1Image(series[..., t], mov), matrix, reference, order=order)
        assert np.array_equal(np.asarray(out.dataobj)[..., t], np.asarray(one.dataobj))


def test_list_of_matrices_is_one_composed_interpolation(grids):
    ref, mov, _ = grids
    a = random_affine(np.random.default_rng(5), dof=6, max_rotation_deg=8, max_translation_mm=4)
    b = random_affine(np.random.default_rng(6), dof=12, max_rotation_deg=8, max_translation_mm=4)
    assert np.allclose(compose([a, b]), b @ a) and not np.allclose(b @ a, a @ b, atol=1e-3)
    img = nib.Nifti1Image(_smooth(MOV_SHAPE, 7), mov)
    reference = nib.Nifti1Image(np.zeros(REF_SHAPE), ref)
    chained = np.asarray(resample_image(img, [a, b], reference).dataobj)
    assert np.array_equal(chained, np.asarray(resample_image(img, b @ a, reference).dataobj))
    assert not np.allclose(chained, np.asarray(resample_image(img, a @ b, reference).dataobj))
    # Two interpolations in sequence (reference -> middle -> moving) approximate the same.
    middle = nib.Nifti1Image(np.zeros(MOV_SHAPE), mov)
    step = resample_image(img, b, middle, order=3)
    twice = np.asarray(resample_image(step, a, reference, order=3).dataobj)
    # Both inside their fields of view, away from the edges that blend with the fill value.
    once = np.asarray(resample_image(img, [a, b], reference, order=3).dataobj)
    # Away from the field-of-view edges, where the cubic prefilter blends in the fill value.
    inside = ndi.binary_erosion((once > 0) & (twice > 0), iterations=4)
    assert inside.sum() > 500
    assert np.corrcoef(twice[inside], once[inside])[0, 1] > 0.99  # measured 0.9994
    assert np.array_equal(compose(np.eye(4)), np.eye(4))
    with pytest.raises(InputError):
        compose([])


def test_output_header_has_reference_geometry_and_moving_tr(grids):
    ref, mov, matrix = grids
    series = np.stack([_smooth(MOV_SHAPE, s) for s in range(3)], axis=-1)
    img = nib.Nifti1Image(series, mov)
    img.header.set_zooms(img.header.get_zooms()[:3] + (2.0,))
    img.header.set_xyzt_units("mm", "sec")
    reference = nib.Nifti1Image(np.zeros(REF_SHAPE + (1,), np.float32), ref)
    reference.set_sform(ref, 4)
    reference.set_qform(ref, 2)
    out = resample_image(img, matrix, reference)
    assert np.allclose(out.affine, ref)
    assert np.allclose(out.header.get_zooms()[:3], nib.affines.voxel_sizes(ref))
    assert out.header.get_zooms()[3] == 2.0
    assert int(out.header["sform_code"]) == 4 and int(out.header["qform_code"]) == 2
    assert out.header.get_xyzt_units() == ("mm", "sec")
    assert np.allclose(out.header.get_sform(), ref) and np.allclose(out.header.get_qform(), ref, atol=1e-5)


def test_fill_value_outside_the_moving_field_of_view(grids):
    ref, mov, _ = grids
    far = np.eye(4)
    far[0, 3] = 500.0
    img = nib.Nifti1Image(_smooth(MOV_SHAPE), mov)
    out = resample_image(img, far, nib.Nifti1Image(np.zeros(REF_SHAPE), ref), fill=-7.0)
    assert np.all(np.asarray(out.dataobj) == -7.0)


def test_bad_inputs(grids):
    ref, mov, _ = grids
    reference = nib.Nifti1Image(np.zeros(REF_SHAPE), ref)
    with pytest.raises(InputError, match="order 2"):
        resample_image(nib.Nifti1Image(_smooth(MOV_SHAPE), mov), np.eye(4), reference, order=2)
    with pytest.raises(InputError, match="3D or 4D"):
        resample_image(nib.Nifti1Image(np.ones((5, 5), np.float32), np.eye(4)), np.eye(4), reference)


def test_resampling_with_the_true_matrix_restores_the_fixed_image():
    """The convention end to end: ``warp_to_grid`` makes moving from fixed through ``true``;
    ``resample_image(moving, true, fixed)`` brings it back (correlation in the brain)."""
    from . import cases as C

    fixed, mask = C.fixed_3mm()
    true = C.true_affine(9, 12)
    back = resample_image(C.moving_image(true, voxel_size=2.5, orientation="LPS"), true, fixed)
    inside = np.asarray(mask.dataobj) > 0
    a, b = np.asarray(back.dataobj)[inside], np.asarray(fixed.dataobj)[inside]
    assert np.corrcoef(a, b)[0, 1] > 0.97
    wrong = resample_image(C.moving_image(true, voxel_size=2.5, orientation="LPS"),
                           np.linalg.inv(true), fixed)
    assert np.corrcoef(np.asarray(wrong.dataobj)[inside], b)[0, 1] < 0.9

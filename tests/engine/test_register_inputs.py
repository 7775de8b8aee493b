# SPDX-License-Identifier: Apache-2.0
"""Bad inputs to :func:`register` are one-line InputErrors naming the image or the option."""

import nibabel as nib
import numpy as np
import pytest

from niaffine.engine import register
from niaffine.errors import InputError

from . import cases as C

FAST = {"levels_mm": (6.0,), "max_samples": 2000}


@pytest.fixture(scope="module")
def pair():
    fixed, _ = C.fixed_3mm()
    return fixed, C.moving_image(C.true_affine(1, 6))


def _like(img, data, affine=None):
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine if affine is None else affine)


def _check(err: pytest.ExceptionInfo, *words):
    text = str(err.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("side", ["fixed", "moving"])
def test_all_zero_image(pair, side):
    fixed, moving = pair
    if side == "fixed":
        fixed = _like(fixed, np.zeros(fixed.shape))
    else:
        moving = _like(moving, np.zeros(moving.shape))
    with pytest.raises(InputError) as err:
        register(fixed, moving, **FAST)
    _check(err, f"{side} image", "all zero")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("side", ["fixed", "moving"])
def test_non_finite_image(pair, side, bad):
    fixed, moving = pair
    img = fixed if side == "fixed" else moving
    data = np.asarray(img.dataobj).copy()
    data[10, 10, 10] = bad
    img = _like(img, data)
    args = (img, moving) if side == "fixed" else (fixed, img)
    with pytest.raises(InputError) as err:
        register(*args, **FAST)
    _check(err, f"{side} image", "NaN")


def test_file_name_is_used_when_the_image_has_one(pair, tmp_path):
    fixed, moving = pair
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(_like(moving, np.zeros(moving.shape)), path)
    with pytest.raises(InputError) as err:
        register(fixed, nib.load(path), **FAST)
    _check(err, str(path), "all zero")


@pytest.mark.parametrize("shape", [(8, 8, 8, 2), (8,), (4, 4, 4, 3, 2)])
def test_wrong_dimensionality(pair, shape):
    fixed, _ = pair
    bad = nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4))
    with pytest.raises(InputError) as err:
        register(fixed, bad, **FAST)
    _check(err, "moving image", "2D or 3D")
    with pytest.raises(InputError) as err:
        register(bad, fixed, **FAST)
    _check(err, "fixed image", "2D or 3D")


def test_singular_affine(pair, tmp_path):
    fixed, moving = pair
    header = nib.Nifti1Header()
    header.set_data_shape(moving.shape)
    header.set_data_dtype(np.float32)
    header["sform_code"] = 1
    header["srow_x"], header["srow_y"], header["srow_z"] = [3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0]
    nib.Nifti1Image(np.asarray(moving.dataobj), None, header).to_filename(tmp_path / "flat.nii")
    flat = nib.load(tmp_path / "flat.nii")
    assert abs(np.linalg.det(flat.affine[:3, :3])) == 0
    with pytest.raises(InputError) as err:
        register(fixed, flat, **FAST)
    _check(err, str(tmp_path / "flat.nii"), "singular")


def test_images_that_do_not_overlap(pair):
    fixed, moving = pair
    far = moving.affine.copy()
    far[:3, 3] += (1000.0, 0.0, 0.0)  # one metre away
    away = _like(moving, moving.dataobj, far)
    with pytest.raises(InputError) as err:
        register(fixed, away, init="identity", **FAST)
    _check(err, "moving image", "does not overlap", "fixed image")
    # The centre-of-mass start brings it back.
    true = C.true_affine(1, 6).copy()
    true[:3, 3] += (1000.0, 0.0, 0.0)
    res = register(fixed, away, dof=6, levels_mm=(6.0, 3.0), max_samples=20_000)
    assert C.error_mm(true, res.matrix) < 0.35


@pytest.mark.parametrize(("option", "value", "words"), [
    ("metric", "foo", ("metric='foo'", "mi", "lncc")),
    ("metric", "", ("metric=''",)),
    ("init", "centre", ("init='centre'", "identity", "com")),
    ("dof", 5, ("dof=5", "12")),
    ("dof", 4, ("dof=4",)),
    ("frozen", ("rotations",), ("rotations",)),
    ("max_iterations", (10, 10, 10), ("max_iterations", "3 values")),
    ("levels_mm", (), ("levels_mm",)),
])
def test_unknown_options(pair, option, value, words):
    fixed, moving = pair
    with pytest.raises(InputError) as err:
        register(fixed, moving, **{"levels_mm": (6.0,), "max_samples": 2000, option: value})
    _check(err, *words)


def test_register_accepts_every_named_metric(pair):
    fixed, moving = pair
    for metric in ("auto", "mi", "nmi", "cr", "ncc", "mse", "lncc", "MI"):
        res = register(fixed, moving, metric=metric, dof=3, levels_mm=(6.0,), max_samples=2000,
                       max_iterations=3)
        assert res.metric == ("mi" if metric in ("auto", "MI") else metric)
        assert np.isfinite(res.final_metric)

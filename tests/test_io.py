# SPDX-License-Identifier: Apache-2.0
"""niaffine.io: validated image loading, atomic writes, ITK/FSL/LTA transforms that other
readers (nitransforms, ANTsPy) apply the same way as niaffine."""

import gzip
import os
import stat

import nibabel as nib
import numpy as np
import pytest
import torch

from niaffine.data.geometry import make_grid, random_affine
from niaffine.engine import register, resample_image
from niaffine.errors import InputError
from niaffine.io import (
    as_3d_matrix,
    atomic_path,
    load_image,
    load_transform,
    save_image,
    save_transform,
    transform_format,
)
from tests.engine import cases as C


def _image(shape=(10, 11, 12), affine=None, value=None, dtype=np.float32):
    data = np.random.default_rng(0).random(shape).astype(dtype) + 1 if value is None else \
        np.full(shape, value, dtype=dtype)
    return nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)


def _load_error(path, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        load_image(path, role="fixed image", **kwargs)
    text = str(err.value)
    assert str(path) in text and "\n" not in text
    return text



@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for the registrations here (small, shared test machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# -- load_image -----------------------------------------------------------------------------

def test_load_image_reads_a_valid_file(tmp_path):
    path = tmp_path / "t1.nii.gz"
    img = _image()
    nib.save(img, path)
    out = load_image(path)
    assert out.get_filename() == str(path)
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(img.dataobj))
    assert np.allclose(out.affine, img.affine)
    # A trailing singleton dimension is dropped; 4D series load where asked for.
    nib.save(_image((10, 11, 12, 1)), tmp_path / "single.nii.gz")
    assert load_image(tmp_path / "single.nii.gz", ndim=(3,)).shape == (10, 11, 12)
    nib.save(_image((10, 11, 12, 3)), tmp_path / "bold.nii.gz")
    assert load_image(tmp_path / "bold.nii.gz", ndim=(3, 4)).shape == (10, 11, 12, 3)


def test_missing_file_and_folder(tmp_path):
    assert "not found" in _load_error(tmp_path / "nope.nii.gz")
    assert "not a readable file" in _load_error(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not a NIfTI file\n")
    assert "fixed image" in _load_error(path)
    plain = tmp_path / "notes.nii"
    plain.write_bytes(b"\0" * 10)
    _load_error(plain)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_file(tmp_path, suffix):
    path = tmp_path / f"t1{suffix}"
    nib.save(_image((30, 30, 30)), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    text = _load_error(path)
    assert "truncated" in text or "not a readable" in text


def test_gzip_stream_cut_inside_the_header(tmp_path):
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gzip.compress(b"\x5c\x01\0\0" + b"\0" * 100))
    _load_error(path)


def test_wrong_dimensionality_nan_zero_and_singular(tmp_path):
    nib.save(_image((8, 8, 8, 2)), tmp_path / "four.nii.gz")
    assert "3D" in _load_error(tmp_path / "four.nii.gz", ndim=(3,))
    nib.save(_image((8,)), tmp_path / "one.nii.gz")
    _load_error(tmp_path / "one.nii.gz")
    nan = _image()
    nan.get_fdata()  # keep float data
    data = np.asarray(nan.dataobj)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, nan.affine), tmp_path / "nan.nii.gz")
    assert "NaN" in _load_error(tmp_path / "nan.nii.gz")
    nib.save(_image(value=0, dtype=np.int16), tmp_path / "zero.nii.gz")
    assert "all zero" in _load_error(tmp_path / "zero.nii.gz")
    # Masks may be all zero on purpose only when values are not checked.
    assert load_image(tmp_path / "zero.nii.gz", check_values=False).shape == (10, 11, 12)


# -- transforms -----------------------------------------------------------------------------

GRIDS = {
    "oblique": {"orientation": "RAS", "oblique_deg": (12.0, -7.0, 20.0), "voxel_size": 1.5},
    "LPS": {"orientation": "LPS", "oblique_deg": 0.0, "voxel_size": 2.0},
    "anisotropic LIA": {"orientation": "LIA", "oblique_deg": 9.0, "voxel_size": (0.9, 3.0, 1.7)},
}


def _grid_image(name, shape=(20, 24, 18), centre=(3.0, -10.0, 8.0)):
    return _image(shape, make_grid(shape=shape, centre=centre, **GRIDS[name]))


@pytest.mark.parametrize("suffix", [".txt", ".tfm", ".mat", ".lta"])
@pytest.mark.parametrize("name", sorted(GRIDS))
def test_transform_round_trip(tmp_path, suffix, name):
    fixed = _grid_image(name)
    moving = _grid_image("oblique" if name != "oblique" else "LPS", shape=(16, 20, 22),
                         centre=(-5.0, 4.0, 0.0))
    matrix = random_affine(np.random.default_rng(len(name)), dof=12, centre=(3.0, -10.0, 8.0))
    path = save_transform(matrix, tmp_path / f"xfm{suffix}", reference=fixed, moving=moving)
    assert path.is_file() and transform_format(path) == {".txt": "itk", ".tfm": "itk",
                                                         ".mat": "fsl", ".lta": "lta"}[suffix]
    back = load_transform(path, reference=fixed, moving=moving)
    assert np.allclose(back, matrix, atol=1e-5)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


def test_itk_file_holds_the_lps_flip(tmp_path):
    matrix = np.eye(4)
    matrix[:3, 3] = (1.0, 2.0, 3.0)
    save_transform(matrix, tmp_path / "shift.txt")
    text = (tmp_path / "shift.txt").read_text()
    params = next(line for line in text.splitlines() if line.startswith("Parameters:"))
    values = [float(v) for v in params.split(":")[1].split()]
    assert np.allclose(values[-3:], (-1.0, -2.0, 3.0))  # RAS -> LPS
    assert np.allclose(values[:9], np.eye(3).ravel())


def test_itk_files_are_double_precision(tmp_path):
    """The file says ``double`` and its text reads back to the float64 matrix, bit for bit
    (nitransforms' own writer says ``float`` and keeps 6 digits)."""
    rng = np.random.default_rng(3)
    matrix = np.eye(4)
    matrix[:3, :3] += rng.normal(scale=0.05, size=(3, 3))
    matrix[:3, 3] = rng.normal(scale=40.0, size=3)
    save_transform(matrix, tmp_path / "xfm.txt")
    lines = (tmp_path / "xfm.txt").read_text().splitlines()
    assert lines[:3] == ["#Insight Transform File V1.0", "#Transform 0",
                         "Transform: AffineTransform_double_3_3"]
    values = np.array([float(v) for v in lines[3].split(":")[1].split()])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    expected = lps @ matrix @ lps
    assert np.array_equal(values, np.r_[expected[:3, :3].ravel(), expected[:3, 3]])
    assert lines[4] == "FixedParameters: 0 0 0"
    assert np.allclose(load_transform(tmp_path / "xfm.txt"), matrix, atol=1e-5)  # nitransforms


def test_2d_matrices_embed_in_3d(tmp_path):
    m2 = np.array([[0.0, -1.0, 5.0], [1.0, 0.0, -2.0], [0.0, 0.0, 1.0]])
    m3 = as_3d_matrix(m2)
    assert np.allclose(m3, [[0, -1, 0, 5], [1, 0, 0, -2], [0, 0, 1, 0], [0, 0, 0, 1]])
    save_transform(m2, tmp_path / "slice.txt")
    assert np.allclose(load_transform(tmp_path / "slice.txt"), m3)
    with pytest.raises(InputError):
        as_3d_matrix(np.eye(2))


def test_transform_errors_name_the_file(tmp_path):
    img = _image()
    for path, kwargs, words in [
        (tmp_path / "x.mat", {}, "both"),
        (tmp_path / "x.xfm", {"reference": img, "moving": img}, "extension"),
    ]:
        with pytest.raises(InputError) as err:
            save_transform(np.eye(4), path, **kwargs)
        assert str(path) in str(err.value) and words in str(err.value)
        assert not path.exists()
    with pytest.raises(InputError, match="unknown transform format"):
        save_transform(np.eye(4), tmp_path / "x.txt", fmt="afni")
    with pytest.raises(InputError, match="not found"):
        load_transform(tmp_path / "missing.txt")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("#Insight Transform File V1.0\nnonsense\n")
    with pytest.raises(InputError, match=str(garbage)):
        load_transform(garbage)
    save_transform(np.eye(4), tmp_path / "ok.mat", reference=img, moving=img)
    with pytest.raises(InputError, match="both"):
        load_transform(tmp_path / "ok.mat")


# -- atomic writes --------------------------------------------------------------------------

def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "img.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    save_image(_image(), target)
    assert nib.load(target).shape == (10, 11, 12)
    assert [p.name for p in target.parent.iterdir()] == ["img.nii.gz"]


def test_full_disk_names_the_destination_not_the_temporary_file(tmp_path):
    import errno

    target = tmp_path / "sub-01_T1w.nii.gz"
    with pytest.raises(OSError) as err:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", "/work/src.nii.gz", None,
                          str(tmp))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_temporary_names_are_recognisable(tmp_path):
    from niaffine.io import TEMP_NAME

    with atomic_path(tmp_path / "x.json") as tmp:
        assert TEMP_NAME.match(tmp.name) and tmp.name.endswith("-x.json")
        tmp.write_text("{}")
    assert not TEMP_NAME.match(".tmp-notes") and not TEMP_NAME.match("x.tmp-0123456789ab-y")


@pytest.mark.parametrize("shape, ndim", [((10, 10, 10, 2), (3,)), ((10, 10), (3,)),
                                         ((10, 10, 10, 2, 2), (3, 4))])
def test_wrong_dimensions_name_the_file(tmp_path, shape, ndim):
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), path)
    assert "must be" in _load_error(path, ndim=ndim)


def test_implausible_voxel_sizes_name_the_file(tmp_path):
    path = tmp_path / "t2.nii.gz"
    nib.save(_image(affine=np.diag([2e6, 2e6, 2e6, 1.0])), path)
    assert "implausible voxel sizes 2e+06 x 2e+06 x 2e+06 mm" in _load_error(path)


def test_written_files_follow_the_umask(tmp_path):
    """Known bug: ``atomic_path`` writes through ``tempfile.mkstemp`` (mode 0600) and renames,
    so images and transforms are unreadable to the group and others whatever the umask
    (measured 0o600 with umask 022; an ordinary ``open`` gives 0o644)."""
    old = os.umask(0o022)
    try:
        save_image(_image(), tmp_path / "img.nii.gz")
        save_transform(np.eye(4), tmp_path / "xfm.txt")
    finally:
        os.umask(old)
    for name in ("img.nii.gz", "xfm.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# -- independent readers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A 12-dof registration of a moving image on an oblique LPS grid, written as ITK text."""
    folder = tmp_path_factory.mktemp("readers")
    fixed, mask = C.fixed_3mm()
    true = C.true_affine(31, 12)
    moving = C.moving_image(true, voxel_size=(2.5, 3.0, 2.0), orientation="LPS", oblique_deg=14.0)
    fixed_path, moving_path = C.save(fixed, folder / "fixed.nii.gz"), C.save(moving, folder / "moving.nii.gz")
    result = register(fixed, moving, dof=12, **C.FAST)
    xfm = save_transform(result.matrix, folder / "moving2fixed.txt", reference=fixed, moving=moving)
    return {"fixed": fixed_path, "moving": moving_path, "mask": mask, "xfm": str(xfm),
            "matrix": result.matrix, "true": true}


def _corr(a, b, mask) -> float:
    inside = np.asarray(mask.dataobj) > 0
    return float(np.corrcoef(np.asarray(a)[inside], np.asarray(b)[inside])[0, 1])


def test_nitransforms_applies_the_itk_file_like_niaffine(registered):
    import nitransforms.linear as ntl
    from nitransforms.resampling import apply

    fixed, moving = nib.load(registered["fixed"]), nib.load(registered["moving"])
    ours = resample_image(moving, registered["matrix"], fixed)
    xfm = ntl.load(registered["xfm"], fmt="itk")
    theirs = apply(xfm, moving, reference=fixed, order=1)
    assert _corr(ours.dataobj, theirs.dataobj, registered["mask"]) > 0.999
    assert _corr(ours.dataobj, fixed.dataobj, registered["mask"]) > 0.95


def test_antspy_applies_the_itk_file_like_niaffine(registered):
    try:
        import ants
    except Exception as err:  # noqa: BLE001 - any import failure means ANTsPy cannot run here
        pytest.skip(f"ANTsPy cannot be imported: {err}")
    fixed, moving = nib.load(registered["fixed"]), nib.load(registered["moving"])
    ours = np.asarray(resample_image(moving, registered["matrix"], fixed).dataobj)
    warped = ants.apply_transforms(fixed=ants.image_read(registered["fixed"]),
                                   moving=ants.image_read(registered["moving"]),
                                   transformlist=[registered["xfm"]], interpolator="linear")
    assert warped.shape == fixed.shape
    assert _corr(ours, warped.numpy(), registered["mask"]) > 0.999


def test_rigid_result_stays_rigid_through_a_file(tmp_path):
    fixed, _ = C.fixed_3mm()
    true = C.true_affine(32, 6)
    moving = C.moving_image(true, orientation="LPS", oblique_deg=-10.0)
    result = register(fixed, moving, dof=6, **C.FAST)
    for suffix in (".txt", ".mat", ".lta"):
        path = save_transform(result.matrix, tmp_path / f"rigid{suffix}", reference=fixed, moving=moving)
        lin = load_transform(path, reference=fixed, moving=moving)[:3, :3]
        assert np.allclose(lin.T @ lin, np.eye(3), atol=1e-4), suffix
        assert np.isclose(np.linalg.det(lin), 1.0, atol=1e-4)

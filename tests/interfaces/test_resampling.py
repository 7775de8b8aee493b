# SPDX-License-Identifier: Apache-2.0
"""ApplyAffine: 4D series, composition of transforms, label images."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from niaffine.data.synthetic import random_affine, warp_to_grid
from niaffine.interfaces.resampling import ApplyAffine


@pytest.fixture(scope="module")
def transforms(mni_files, tmp_path_factory):
    """Two ITK transform files (a rigid and a 12-dof one) and their matrices."""
    from niaffine.io import save_transform

    folder = tmp_path_factory.mktemp("xfms")
    img = nb.load(mni_files["t1"])
    centre = nb.affines.apply_affine(img.affine, np.array(img.shape) / 2.0)
    rng = np.random.default_rng(3)
    first = random_affine(rng, max_rotation_deg=8, max_translation_mm=6, dof=6, centre=centre)
    second = random_affine(rng, max_rotation_deg=5, max_translation_mm=4, dof=12, centre=centre)
    files = []
    for name, matrix in (("first", first), ("second", second)):
        path = folder / f"{name}_xfm.txt"
        save_transform(matrix, str(path), reference=img, moving=img)
        files.append(str(path))
    composed = folder / "composed_xfm.txt"
    save_transform(second @ first, str(composed), reference=img, moving=img)
    return {"files": files, "matrices": [first, second], "composed": str(composed)}


@pytest.fixture(scope="module")
def series_file(mni_files, tmp_path_factory):
    """A short 4D series (3 volumes, 4 mm) of the MNI T2-like image with changing intensity."""
    folder = tmp_path_factory.mktemp("series")
    t2 = nb.load(mni_files["t2"])
    data = np.asarray(t2.dataobj, dtype=np.float32)[::2, ::2, ::2]
    affine = t2.affine.copy()
    affine[:3, :3] *= 2
    volumes = np.stack([data * (1.0 + 0.1 * k) + k for k in range(3)], axis=-1)
    img = nb.Nifti1Image(volumes, affine)
    img.header.set_zooms((4.0, 4.0, 4.0, 2.0))
    img.header.set_xyzt_units("mm", "sec")
    img.to_filename(folder / "bold.nii.gz")
    return str(folder / "bold.nii.gz")


def test_4d_equals_volume_by_volume(series_file, mni_files, transforms, tmp_path):
    series = nb.load(series_file)
    whole = ApplyAffine(input_image=series_file, reference_image=mni_files["t1"],
                        transforms=transforms["files"]).run(cwd=str(tmp_path))
    out = nb.load(whole.outputs.output_image)
    reference = nb.load(mni_files["t1"])
    assert out.shape == reference.shape + (3,)
    assert np.allclose(out.affine, reference.affine)
    assert out.header.get_zooms()[3] == pytest.approx(2.0)
    for k in range(3):
        folder = tmp_path / f"vol{k}"
        folder.mkdir()
        series.slicer[..., k].to_filename(folder / "vol.nii.gz")
        single = ApplyAffine(input_image=str(folder / "vol.nii.gz"),
                             reference_image=mni_files["t1"],
                             transforms=transforms["files"]).run(cwd=str(folder))
        expected = nb.load(single.outputs.output_image).get_fdata()
        assert np.allclose(out.dataobj[..., k], expected, atol=1e-4)


def test_chain_is_one_interpolation(mni_files, transforms, tmp_path):
    """[A, B] resamples exactly like the single matrix B @ A, and like scipy."""
    chain = ApplyAffine(input_image=mni_files["t2"], reference_image=mni_files["t1"],
                        transforms=transforms["files"], out_postfix="_chain").run(
        cwd=str(tmp_path))
    single = ApplyAffine(input_image=mni_files["t2"], reference_image=mni_files["t1"],
                         transforms=[transforms["composed"]], out_postfix="_single").run(
        cwd=str(tmp_path))
    a = nb.load(chain.outputs.output_image).get_fdata()
    b = nb.load(single.outputs.output_image).get_fdata()
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()
    # independent reference: scipy's map_coordinates through the same world matrix
    reference = nb.load(mni_files["t1"])
    first, second = transforms["matrices"]
    expected = warp_to_grid(nb.load(mni_files["t2"]), np.linalg.inv(second @ first),
                            reference.affine, reference.shape, order=1).get_fdata()
    inside = np.asarray(nb.load(mni_files["mask"]).dataobj) > 0
    assert np.abs(a - expected)[inside].mean() < 0.01 * np.abs(expected[inside]).mean()


def test_invert_flags_give_identity(mni_files, transforms, tmp_path):
    first = transforms["files"][0]
    out = ApplyAffine(input_image=mni_files["t2"], reference_image=mni_files["t2"],
                      transforms=[first, first], invert_transform_flags=[False, True]).run(
        cwd=str(tmp_path))
    assert np.allclose(nb.load(out.outputs.output_image).get_fdata(),
                       nb.load(mni_files["t2"]).get_fdata(), atol=1e-2)


def test_labels_nearest_neighbour(mni_files, transforms, tmp_path):
    labels = (np.asarray(nb.load(mni_files["mask"]).dataobj) * 3).astype(np.int16)
    labels[:40] = np.where(labels[:40] > 0, 7, 0)
    img = nb.Nifti1Image(labels, nb.load(mni_files["mask"]).affine)
    img.set_data_dtype(np.int16)
    img.to_filename(tmp_path / "labels.nii.gz")
    out = ApplyAffine(input_image=str(tmp_path / "labels.nii.gz"),
                      reference_image=mni_files["t1"], transforms=transforms["files"],
                      interpolation="NearestNeighbor").run(cwd=str(tmp_path))
    result = nb.load(out.outputs.output_image)
    assert result.get_data_dtype() == np.int16
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, 3, 7}


def test_no_transform_is_identity(mni_files, tmp_path):
    out = ApplyAffine(input_image=mni_files["t2"], reference_image=mni_files["t2"]).run(
        cwd=str(tmp_path))
    assert np.allclose(nb.load(out.outputs.output_image).get_fdata(),
                       nb.load(mni_files["t2"]).get_fdata(), atol=1e-2)


def test_bad_transform_names_it(mni_files, tmp_path):
    bad = tmp_path / "bad_xfm.txt"
    bad.write_text("this is not a transform\n")
    with pytest.raises(Exception, match=r"ApplyAffine failed on .*bad_xfm\.txt"):
        ApplyAffine(input_image=mni_files["t2"], reference_image=mni_files["t1"],
                    transforms=[str(bad)]).run(cwd=str(tmp_path))

# SPDX-License-Identifier: Apache-2.0
"""ReferenceVolume on a real EPI series (nibabel's example4d) and on DWI-like series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from niaffine.interfaces.reference import ReferenceVolume


@pytest.fixture
def epi_file():
    import nibabel.tests

    path = Path(nibabel.tests.__file__).parent / "data" / "example4d.nii.gz"
    if not path.is_file():
        pytest.skip("nibabel's example4d.nii.gz is not installed")
    return str(path)


def test_bold_reference_is_median(epi_file, tmp_path):
    result = ReferenceVolume(in_file=epi_file).run(cwd=str(tmp_path))
    series = nb.load(epi_file)
    ref = nb.load(result.outputs.out_file)
    assert ref.shape == series.shape[:3]
    assert np.allclose(ref.affine, series.affine)
    assert result.outputs.volumes == list(range(series.shape[3]))
    expected = np.median(np.asanyarray(series.dataobj).astype(np.float32), axis=3)
    assert np.allclose(ref.get_fdata(), expected)


def test_median_resists_one_outlier_volume(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 200, size=(8, 9, 10)).astype(np.float32)
    series = np.repeat(base[..., None], 6, axis=3)
    series[..., 0] *= 3.0  # a non-steady-state volume
    nb.Nifti1Image(series, np.eye(4)).to_filename(tmp_path / "bold.nii.gz")
    out = ReferenceVolume(in_file=str(tmp_path / "bold.nii.gz"), n_volumes=5).run(
        cwd=str(tmp_path)
    )
    assert out.outputs.volumes == [0, 1, 2, 3, 4]
    assert np.allclose(nb.load(out.outputs.out_file).get_fdata(), base, rtol=1e-6)


def test_dwi_reference_is_mean_b0(tmp_path):
    rng = np.random.default_rng(1)
    bvals = np.array([0, 1000, 1000, 5, 2000, 0])
    data = rng.uniform(10, 20, size=(6, 7, 8, bvals.size)).astype(np.float32)
    nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(tmp_path / "dwi.nii.gz")
    np.savetxt(tmp_path / "dwi.bval", bvals[None], fmt="%d")
    out = ReferenceVolume(
        in_file=str(tmp_path / "dwi.nii.gz"), in_bval=str(tmp_path / "dwi.bval")
    ).run(cwd=str(tmp_path))
    assert out.outputs.volumes == [0, 3, 5]
    expected = data[..., [0, 3, 5]].mean(axis=3)
    assert np.allclose(nb.load(out.outputs.out_file).get_fdata(), expected, atol=1e-5)


def test_3d_passes_through(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5) + 1
    nb.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "vol.nii.gz")
    out = ReferenceVolume(in_file=str(tmp_path / "vol.nii.gz")).run(cwd=str(tmp_path))
    assert np.array_equal(nb.load(out.outputs.out_file).get_fdata(), data)


def test_bval_mismatch_names_files(tmp_path):
    nb.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)).to_filename(
        tmp_path / "dwi.nii.gz"
    )
    np.savetxt(tmp_path / "dwi.bval", [[0, 1000]], fmt="%d")
    with pytest.raises(Exception, match="ReferenceVolume failed on in_file=.*dwi.nii.gz.*"
                                        "2 b-values for 3 volumes"):
        ReferenceVolume(
            in_file=str(tmp_path / "dwi.nii.gz"), in_bval=str(tmp_path / "dwi.bval")
        ).run(cwd=str(tmp_path))

# SPDX-License-Identifier: Apache-2.0
"""TemplateSource: the packaged MNI152NLin2009aSym and user-given templates."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from niaffine.interfaces.templates import TemplateSource


def test_packaged_mni(tmp_path):
    from niaffine.data.templates import load_mni_brain_mask, template_path

    out = TemplateSource().run(cwd=str(tmp_path)).outputs
    assert out.template_file == str(template_path("t1")) == out.brain_file
    mask = nb.load(out.mask_file)
    assert mask.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(mask.dataobj), np.asarray(load_mni_brain_mask().dataobj))


def test_user_template_with_mask(mni_files, tmp_path):
    from niaffine.data.synthetic import add_scalp

    head = add_scalp(nb.load(mni_files["t1"]), np.random.default_rng(0), margin_mm=0.0,
                     mask=nb.load(mni_files["mask"]))
    head.to_filename(tmp_path / "head.nii.gz")
    out = TemplateSource(template=str(tmp_path / "head.nii.gz"),
                         template_mask=mni_files["mask"]).run(cwd=str(tmp_path)).outputs
    brain = np.asarray(nb.load(out.brain_file).dataobj)
    mask = np.asarray(nb.load(mni_files["mask"]).dataobj) > 0
    assert out.mask_file == mni_files["mask"]
    assert not brain[~mask].any() and brain[mask].any()


def test_user_template_without_mask(mni_files, tmp_path):
    out = TemplateSource(template=mni_files["t1"]).run(cwd=str(tmp_path)).outputs
    assert out.brain_file == mni_files["t1"]
    mask = np.asarray(nb.load(out.mask_file).dataobj) > 0
    reference = np.asarray(nb.load(mni_files["mask"]).dataobj) > 0
    assert 2 * (mask & reference).sum() / (mask.sum() + reference.sum()) > 0.97


def test_mask_on_other_grid_is_refused(mni_files, tmp_path):
    with pytest.raises(Exception, match=r"TemplateSource failed on template=.*mni_T1w\.nii\.gz"
                                        r".*not on the grid"):
        TemplateSource(template=mni_files["t1"], template_mask=mni_files["mask_1mm"]).run(
            cwd=str(tmp_path))


@pytest.fixture
def tf_home(tmp_path, monkeypatch):
    """A local TemplateFlow home with MNI152NLin6Asym at res-1 and res-2 (never downloaded)."""
    from tests.templateflow_home import block_network, make_templateflow_home

    block_network(monkeypatch)
    home = make_templateflow_home(tmp_path / "tf", resolutions=((1, 1.0), (2, 2.0)))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home / "tpl-MNI152NLin6Asym"


def test_templateflow_target_res1_outputs_on_res2(tf_home, tmp_path):
    out = TemplateSource(template="MNI152NLin6Asym:res-2").run(cwd=str(tmp_path)).outputs
    assert out.template_file == str(tf_home / "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz")
    assert out.mask_file == str(tf_home / "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz")
    assert out.grid_file == str(tf_home / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz")
    assert out.grid_mask_file == str(tf_home / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz")
    brain, mask = nb.load(out.brain_file), nb.load(out.mask_file)
    assert brain.shape == mask.shape and np.allclose(brain.affine, mask.affine)
    assert not np.asarray(brain.dataobj)[np.asarray(mask.dataobj) == 0].any()


def test_templateflow_res_given_by_input(tf_home, tmp_path):
    out = TemplateSource(template="MNI152NLin6Asym", output_resolution="1").run(
        cwd=str(tmp_path)).outputs
    assert out.grid_file == out.template_file
    assert out.template_file.endswith("_res-01_T1w.nii.gz")


def test_builtin_res2_is_on_the_templateflow_res2_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "none"))
    from niaffine.data.templates import template_path

    out = TemplateSource(template="MNI152NLin2009aSym:res-2").run(cwd=str(tmp_path)).outputs
    assert out.template_file == str(template_path("t1"))  # registration target: res-1
    fine, grid, mask = nb.load(out.template_file), nb.load(out.grid_file), nb.load(
        out.grid_mask_file)
    assert grid.shape == mask.shape == (99, 117, 95)
    assert np.allclose(grid.header.get_zooms(), 2.0)
    assert np.allclose(grid.affine[:3, 3], fine.affine[:3, 3])  # the first voxel centre
    assert mask.get_data_dtype() == np.uint8
    volume_ml = np.asarray(mask.dataobj).sum() * 8 / 1000
    assert 1700 < volume_ml < 2100  # the 1 mm mask is about 1890 ml
    assert out.grid_file.endswith("tpl-MNI152NLin2009aSym_res-02_T1w.nii.gz")


def test_absent_template_fails_naming_templateflow_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "none"))
    with pytest.raises(Exception, match=r"MNI152NLin6Asym at res-2 is not available in "
                                        r"TEMPLATEFLOW_HOME="):
        TemplateSource(template="MNI152NLin6Asym:res-2").run(cwd=str(tmp_path))


def test_native_grid_keeps_the_series_voxel_size(tf_home, tmp_path):
    from niaffine.interfaces.templates import TemplateGrid

    series = tmp_path / "bold.nii.gz"
    nb.Nifti1Image(np.zeros((8, 8, 6, 3), np.float32), np.diag([3.0, 3.0, 4.0, 1.0])).to_filename(
        series)
    template = tf_home / "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"
    out = TemplateGrid(template_file=str(template), in_file=str(series)).run(
        cwd=str(tmp_path)).outputs
    grid, tpl = nb.load(out.out_file), nb.load(template)
    assert np.allclose(grid.header.get_zooms()[:3], (3.0, 3.0, 4.0))
    assert np.allclose(grid.affine[:3, 3], tpl.affine[:3, 3])
    extent = (np.array(grid.shape) - 1) * (3.0, 3.0, 4.0)
    assert np.all(extent <= (np.array(tpl.shape) - 1) + 1e-6)
    assert np.all(extent > (np.array(tpl.shape) - 1) - (3.0, 3.0, 4.0))

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

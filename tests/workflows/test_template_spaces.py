# SPDX-License-Identifier: Apache-2.0
"""The template workflow on a TemplateFlow space: register to res-1, outputs on the res-N grid."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from niaffine.workflows.template import init_template_wf
from tests.templateflow_home import TPL, block_network, make_templateflow_home

from .conftest import run_collecting

FIELDS = ("t1w2template_xfm", "template2t1w_xfm", "t1w_template", "template", "template_mask",
          "out_report", "run_facts")


@pytest.fixture
def tf_home(tmp_path, monkeypatch):
    block_network(monkeypatch)
    home = make_templateflow_home(tmp_path / "tf", resolutions=((1, 1.0), (2, 2.0)))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home / f"tpl-{TPL}"


@pytest.mark.parametrize(("space", "grid_node"), [(f"{TPL}:res-2", True), (TPL, False),
                                                  ("MNI152NLin2009aSym", False)])
def test_build(space, grid_node):
    wf = init_template_wf(space=space)
    assert (wf.get_node("to_grid") is not None) == grid_node
    assert wf.get_node("template_source").inputs.template == space
    assert wf.get_node("template_source").inputs.output_resolution == ("2" if grid_node else "1")


def test_file_space_keeps_its_mask(tmp_path):
    from niaffine.spaces import Space

    space = Space("Mine", kind="file", path=tmp_path / "tpl-Mine_T1w.nii.gz",
                  mask=tmp_path / "mask.nii.gz")
    (tmp_path / "mask.nii.gz").write_bytes(b"")  # File(exists=True) is checked at build time
    source = init_template_wf(space=space).get_node("template_source")
    assert source.inputs.template == str(space.path)
    assert source.inputs.template_mask == str(space.mask)


def test_outputs_lie_on_the_res2_grid(tf_home, tmp_path):
    """A given (precomputed) registration: the T1w brain lands on the template's res-2 grid."""
    from niaffine.io import save_transform

    brain = tmp_path / "t1w_brain.nii.gz"
    nb.load(tf_home / f"tpl-{TPL}_res-01_T1w.nii.gz").to_filename(brain)
    xfm = save_transform(np.eye(4), tmp_path / "xfm.txt")
    wf = init_template_wf(space=f"{TPL}:res-2", precomputed=True)
    wf.inputs.inputnode.t1w_brain = str(brain)
    wf.inputs.inputnode.t1w_mask = str(brain)
    wf.inputs.inputnode.t1w2template_xfm = str(xfm)
    wf.inputs.inputnode.template2t1w_xfm = str(xfm)
    wf.inputs.inputnode.t1w_template = str(brain)
    wf.inputs.inputnode.run_facts = str(xfm)
    out = run_collecting(wf, tmp_path / "work", FIELDS, plugin="Linear")
    res2 = nb.load(tf_home / f"tpl-{TPL}_res-02_T1w.nii.gz")
    assert out["template"] == str(tf_home / f"tpl-{TPL}_res-02_T1w.nii.gz")
    assert out["template_mask"].endswith("_res-02_desc-brain_mask.nii.gz")
    moved = nb.load(out["t1w_template"])
    assert moved.shape == res2.shape and np.allclose(moved.affine, res2.affine)
    # identity transform, template resampled onto its own coarser grid: the same image
    inside = np.asarray(res2.dataobj) > 0
    assert np.abs(np.asarray(moved.dataobj)[inside] - 100).mean() < 20

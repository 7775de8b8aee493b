# SPDX-License-Identifier: Apache-2.0
"""Head-motion workflows: build over their options, and run hmc -> coreg -> resample on a
simulated BOLD run whose anatomy is the MNI template (so the T1w-space result can be checked)."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest
from nipype.pipeline import engine as pe

from niaffine.data import series as S
from niaffine.interfaces.series_reports import read_confounds
from niaffine.series_io import load_transform_array
from niaffine.workflows.coreg import init_coreg_wf
from niaffine.workflows.hmc import (
    HMC_OUTPUTS,
    init_bold_hmc_wf,
    init_dwi_hmc_wf,
    init_series_resample_wf,
)
from tests import series_cases as SC


@pytest.mark.parametrize("factory, extra", [(init_bold_hmc_wf, []),
                                            (init_dwi_hmc_wf, ["out_bvec"])])
@pytest.mark.parametrize("device, threads", [("cpu", 1), ("cpu", 4), ("cuda", 4)])
def test_hmc_wf_builds(factory, extra, device, threads):
    wf = factory(device=device, omp_nthreads=threads, passes=1)
    wf._create_flat_graph()
    outputs = set(wf.get_node("outputnode").outputs.copyable_trait_names())
    assert outputs == set(HMC_OUTPUTS + extra)
    realign = wf.get_node("realign")
    assert realign.inputs.use_gpu == device.startswith("cuda")
    assert realign.n_procs == (1 if device == "cuda" else threads)
    assert realign.inputs.write_realigned and realign.inputs.passes == 1


@pytest.mark.parametrize("with_template", [True, False])
def test_series_resample_wf_builds(with_template):
    wf = init_series_resample_wf(with_template=with_template, interpolation="BSpline")
    wf._create_flat_graph()
    nodes = set(wf.list_node_names())
    assert {"series_t1w", "reference_t1w", "mask_t1w"} <= nodes
    assert ("template_wf.series" in nodes) == with_template
    assert wf.get_node("series_t1w").inputs.interpolation == "BSpline"
    if with_template:
        assert wf.get_node("template_wf.series").inputs.interpolation == "BSpline"


@pytest.fixture(scope="module")
def bold_run(tmp_path_factory, template_2mm):
    """bold_hmc_wf -> coreg_wf (boldref to the MNI T1 at 2 mm) -> series_resample_wf."""
    folder = tmp_path_factory.mktemp("hmc_run")
    case = SC.bold()
    paths = SC.save_case(case, folder, "sub-01_task-rest_bold")
    top = pe.Workflow(name="series")
    hmc = init_bold_hmc_wf(passes=1)
    hmc.inputs.inputnode.in_file = paths["series"]
    coreg = init_coreg_wf(dof=6)
    coreg.inputs.inputnode.t1w_brain = template_2mm["t1"]
    coreg.inputs.inputnode.t1w_mask = template_2mm["mask"]
    resample = init_series_resample_wf(with_template=False)
    resample.inputs.inputnode.in_file = paths["series"]
    resample.inputs.inputnode.t1w_reference = template_2mm["t1"]
    resample.inputs.inputnode.voxel_size = 4.0
    # fmt: off
    top.connect([
        (hmc, coreg, [("outputnode.reference", "inputnode.in_file")]),
        (hmc, resample, [("outputnode.hmc_xfm", "inputnode.hmc_xfm"),
                         ("outputnode.reference", "inputnode.reference"),
                         ("outputnode.reference_mask", "inputnode.reference_mask")]),
        (coreg, resample, [("outputnode.xfm", "inputnode.coreg_xfm")]),
    ])
    # fmt: on
    return {"case": case, "out": _run(top, folder, hmc, resample), "paths": paths}


def _run(top, folder, hmc, resample) -> dict:
    """Run ``top`` with a node that records the outputs of ``hmc`` and ``resample``."""
    import json

    from nipype.interfaces.utility import Function

    from .conftest import _collect

    fields = {"hmc_xfm": hmc, "confounds_file": hmc, "motion_report": hmc,
              "realignment_report": hmc, "series_t1w": resample, "reference_t1w": resample,
              "mask_t1w": resample}
    collect = pe.Node(Function(input_names=list(fields), output_names=["out"],
                               function=_collect), name="collect")
    top.connect([(wf, collect, [(f"outputnode.{name}", name)]) for name, wf in fields.items()])
    top.base_dir = str(folder)
    top.config["execution"].update({"crashdump_dir": str(folder), "crashfile_format": "txt",
                                    "poll_sleep_duration": 0.2})
    top.run(plugin="Linear")
    return json.loads((folder / "series" / "collect" / "outputs.json").read_text())


def test_hmc_outputs(bold_run):
    out, case = bold_run["out"], bold_run["case"]
    matrices = load_transform_array(out["hmc_xfm"], 6)
    mean, _ = S.volume_errors(case, matrices, step=2)
    assert mean.mean() < 0.1
    columns = read_confounds(out["confounds_file"])
    assert {"trans_x", "rot_z", "framewise_displacement", "dvars", "std_dvars"} <= set(columns)
    for key in ("motion_report", "realignment_report"):
        assert open(out[key]).read().count("<svg") >= 1


def test_t1w_space_series_is_steady_and_on_the_anatomy(bold_run, template_2mm):
    """Every volume lands on the same place of the T1w (MNI) at 4 mm: motion is gone, and the
    series' brain sits on the template's brain mask."""
    series = nb.load(bold_run["out"]["series_t1w"])
    assert series.shape[3] == 6
    assert np.allclose(nb.affines.voxel_sizes(series.affine), 4.0)
    data = np.asanyarray(series.dataobj)
    mask_t1w = np.asanyarray(nb.load(bold_run["out"]["mask_t1w"]).dataobj) > 0
    assert mask_t1w.shape == data.shape[:3]
    brain = data.mean(-1) > np.percentile(data.mean(-1)[mask_t1w], 20)
    jump = bold_run["case"].motion.jumps[0]
    assert np.corrcoef(data[brain][:, 0], data[brain][:, jump])[0, 1] > 0.97
    from niaffine.engine import resample_image
    from niaffine.engine.series_resample import reference_grid

    grid = reference_grid(nb.load(template_2mm["t1"]), 4.0)
    template_mask = np.asanyarray(resample_image(nb.load(template_2mm["mask"]), np.eye(4), grid,
                                                 order=0).dataobj) > 0
    overlap = (brain & template_mask).sum() / brain.sum()
    assert overlap > 0.9

# SPDX-License-Identifier: Apache-2.0
"""SeriesRealignment, SeriesConfounds, ApplySeriesTransforms and the series reportlets."""

import json

import nibabel as nib
import numpy as np
import pytest

from niaffine.data import series as S
from niaffine.interfaces.common import NodeInputError
from niaffine.interfaces.series import (
    ApplySeriesTransforms,
    SeriesConfounds,
    SeriesRealignment,
    apply_series_transforms,
)
from niaffine.interfaces.series_reports import MotionReport, RealignmentReport, read_confounds
from niaffine.series_io import load_transform_array, read_bvecs, save_transform_array
from tests import series_cases as SC
from tests.engine.conftest import _one_thread  # noqa: F401  (one torch thread, autouse)

from .conftest import check_spec


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    return {"bold": SC.save_case(SC.bold(), folder, "sub-01_task-rest_bold"),
            "dwi": SC.save_case(SC.dwi(), folder, "sub-01_dwi"), "folder": folder}


@pytest.fixture(scope="module")
def realigned(files, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("realign_node")
    node = SeriesRealignment(in_file=files["bold"]["series"], write_realigned=True)
    import os

    here = os.getcwd()
    os.chdir(cwd)
    try:
        return node.run().outputs
    finally:
        os.chdir(here)


def test_specs():
    check_spec(SeriesRealignment.input_spec, {"in_file": {"mandatory": True},
                                              "reference_image": {"xor": ["ref_volume"]},
                                              "in_bvec": {"requires": ["in_bval"]}})
    check_spec(ApplySeriesTransforms.input_spec, {"input_image": {"mandatory": True},
                                                  "hmc_transforms": {"mandatory": True}})


def test_realignment_node_outputs(realigned):
    matrices = load_transform_array(realigned.out_transforms, 6)
    mean, _ = S.volume_errors(SC.bold(), matrices, step=2)
    assert mean.mean() < 0.1
    assert realigned.out_transforms.endswith("_bold_hmc_xfm.txt")
    assert nib.load(realigned.out_file).shape == SC.bold().series.shape
    assert nib.load(realigned.out_reference).shape == SC.bold().series.shape[:3]
    facts = json.loads(open(realigned.run_facts).read())
    assert facts["volumes"] == 6 and facts["mean_fd_mm"] == pytest.approx(realigned.mean_fd)
    assert realigned.max_fd > 1.0 and realigned.failed_volumes == []


def test_confounds_node(files, realigned, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = SeriesConfounds(in_file=files["bold"]["series"], transforms=realigned.out_transforms,
                          reference_image=realigned.out_reference,
                          realigned=realigned.out_file).run().outputs
    assert out.confounds_file.endswith("_bold_desc-confounds_timeseries.tsv")
    columns = read_confounds(out.confounds_file)
    assert len(columns) == 28 and len(columns["std_dvars"]) == 6
    assert np.isnan(columns["framewise_displacement"][0])
    meta = json.loads(open(out.confounds_metadata).read())
    assert set(meta) == set(columns)


def test_reportlets(files, realigned, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = SeriesConfounds(in_file=files["bold"]["series"], transforms=realigned.out_transforms,
                          reference_image=realigned.out_reference).run().outputs
    motion = MotionReport(confounds_file=out.confounds_file, repetition_time=2.0).run().outputs
    text = open(motion.out_report).read()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "mean FD" in text
    view = RealignmentReport(before=files["bold"]["series"], after=realigned.out_file,
                             mask_file=realigned.out_mask).run().outputs
    svg = open(view.out_report).read()
    assert svg.count("<image") == 2 and "niaffine-moved" in svg


def test_apply_series_transforms_composes_once(files, realigned, tmp_path):
    """Through [coreg] + hmc onto a 3 mm RAS grid: volume t equals niaffine's resampling of
    the raw volume through hmc_t @ coreg, and the series is steady over time."""
    from niaffine.engine import resample_image
    from niaffine.io import save_transform

    shift = np.eye(4)
    shift[:3, 3] = [2.0, -1.0, 0.5]
    coreg = save_transform(shift, tmp_path / "coreg_xfm.txt")
    from niaffine.data.geometry import make_grid

    grid = nib.Nifti1Image(np.zeros((60, 70, 60), np.uint8),
                           make_grid(shape=(60, 70, 60), voxel_size=3.0, orientation="RAS",
                                     centre=(0, -18, 20)))
    grid.to_filename(tmp_path / "grid.nii.gz")
    out = apply_series_transforms(files["bold"]["series"], str(tmp_path / "grid.nii.gz"),
                                  realigned.out_transforms, [str(coreg)],
                                  out_file=str(tmp_path / "bold_space-T1w.nii.gz"))
    moved = nib.load(out["out_file"])
    assert moved.shape == (60, 70, 60, 6)
    hmc = load_transform_array(realigned.out_transforms)
    series = nib.load(files["bold"]["series"])
    t = SC.bold().motion.jumps[0]
    vol = nib.Nifti1Image(np.asanyarray(series.dataobj)[..., t], series.affine)
    expected = resample_image(vol, hmc[t] @ shift, grid, order=1)
    assert np.allclose(np.asanyarray(moved.dataobj)[..., t], np.asanyarray(expected.dataobj),
                       atol=1e-3)
    data = np.asanyarray(moved.dataobj)
    inside = data.mean(-1) > np.percentile(data.mean(-1), 70)
    assert np.corrcoef(data[inside][:, 0], data[inside][:, t])[0, 1] > 0.97


def test_dwi_bvecs_follow_into_the_output_frame(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = SC.dwi()
    out = SeriesRealignment(in_file=files["dwi"]["series"], in_bval=files["dwi"]["bval"],
                            in_bvec=files["dwi"]["bvec"], pe_dir="j").run().outputs
    rotated = read_bvecs(out.out_bvec, 8)
    matrices = load_transform_array(out.out_transforms)
    ref = nib.load(out.out_reference)
    assert np.nanmax(S.bvec_errors_deg(case, rotated, ref.affine, matrices[0])) < 0.75
    assert out.pe_direction is not None
    # into an LPS 3 mm grid through a 10-degree coregistration: rotated with the whole chain
    from niaffine.data.geometry import make_grid, rotation_matrix
    from niaffine.io import save_transform

    turn = np.eye(4)
    turn[:3, :3] = rotation_matrix(np.deg2rad([10.0, 0.0, 0.0]))
    coreg = save_transform(turn, tmp_path / "coreg.txt")
    grid = nib.Nifti1Image(np.zeros((50, 60, 50), np.uint8),
                           make_grid(shape=(50, 60, 50), voxel_size=3.0, orientation="LPS",
                                     centre=(0, -18, 20)))
    grid.to_filename(tmp_path / "lps.nii.gz")
    moved = ApplySeriesTransforms(input_image=files["dwi"]["series"],
                                  reference_image=str(tmp_path / "lps.nii.gz"),
                                  hmc_transforms=out.out_transforms, transforms=[str(coreg)],
                                  in_bvec=files["dwi"]["bvec"], in_bval=files["dwi"]["bval"],
                                  pe_direction=out.pe_direction).run().outputs
    in_t1w = read_bvecs(moved.out_bvec, 8)
    world = S.bvecs_to_world(in_t1w, grid.affine)
    reference_world = S.bvecs_to_world(rotated, ref.affine)
    dw = case.bvals > 0
    assert np.allclose(world[dw], reference_world[dw] @ turn[:3, :3], atol=1e-6)


def test_errors_name_the_input(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    img = nib.load(files["bold"]["series"])
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine),
             tmp_path / "vol.nii.gz")
    with pytest.raises(Exception) as err:
        SeriesRealignment(in_file=str(tmp_path / "vol.nii.gz")).run()
    assert "SeriesRealignment failed on in_file=" in str(err.value) and "must be 4D" in str(err.value)
    save_transform_array(np.tile(np.eye(4), (3, 1, 1)), tmp_path / "three.txt")
    with pytest.raises(NodeInputError, match="3 transforms for a series of 6 volumes"):
        ApplySeriesTransforms(input_image=files["bold"]["series"],
                              reference_image=files["bold"]["series"],
                              hmc_transforms=str(tmp_path / "three.txt")).run()


def test_motion_plot_is_byte_identical_across_runs(tmp_path):
    """Reruns and SLURM jobs write the same reportlet: no date, fixed element ids."""
    import pandas as pd

    from niaffine.interfaces.series_reports import motion_plot_svg

    rng = np.random.default_rng(0)
    columns = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    table = pd.DataFrame(rng.normal(0, 0.1, (12, 6)), columns=columns)
    table["framewise_displacement"] = [np.nan, *rng.uniform(0, 0.6, 11)]
    confounds = tmp_path / "confounds.tsv"
    table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    first = motion_plot_svg(str(confounds), str(tmp_path / "a.svg"))
    second = motion_plot_svg(str(confounds), str(tmp_path / "b.svg"))
    text = open(first).read()
    assert text == open(second).read()
    assert "<dc:date>" not in text

# SPDX-License-Identifier: Apache-2.0
"""Workflows run on real anatomy (MNI152 2009a) and on a synthetic subject with ground truth."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from niaffine.data.synthetic import mean_displacement, random_affine, warp_to_grid
from niaffine.workflows.base import init_single_subject_wf
from niaffine.workflows.coreg import init_coreg_wf
from niaffine.workflows.resample import init_resample_wf

from .conftest import run_collecting, subject_from_truth

FACT_KEYS = {"source", "target", "metric", "final_metric", "dof", "iterations_total", "iterations_per_level",
             "converged", "seed", "versions", "schema", "elapsed_s",
             "mask_volume_ml"}


def _same_grid(path, reference, n_volumes=None):
    img, ref = nb.load(path), nb.load(reference)
    assert img.shape[:3] == ref.shape[:3], (path, img.shape, ref.shape)
    assert np.allclose(img.affine, ref.affine, atol=1e-4), path
    assert nb.aff2axcodes(img.affine) == nb.aff2axcodes(ref.affine)
    assert img.ndim == (3 if n_volumes is None else 4)
    if n_volumes is not None:
        assert img.shape[3] == n_volumes


def _coreg_case(resolution: int, folder: Path) -> dict:
    """MNI T1 brain + mask (fixed) and a T2-like image through a known rigid transform."""
    from niaffine.data.geometry import make_grid
    from niaffine.data.synthetic import t2_like
    from niaffine.data.templates import load_mni_brain_mask, load_mni_gm, load_mni_t1, load_mni_wm
    from tests.interfaces.conftest import downsample

    t1, mask = load_mni_t1(), load_mni_brain_mask()
    t2 = t2_like(t1, load_mni_gm(), load_mni_wm(), mask)
    if resolution > 1:
        t1, t2 = downsample(t1, resolution), downsample(t2, resolution)
        small = downsample(mask, resolution)
        mask = nb.Nifti1Image((np.asarray(small.dataobj) >= 0.5).astype(np.uint8), small.affine)
    centre = nb.affines.apply_affine(mask.affine, np.argwhere(np.asarray(mask.dataobj)).mean(0))
    truth = random_affine(np.random.default_rng(11), max_rotation_deg=10.0,
                          max_translation_mm=12.0, dof=6, centre=centre)
    voxel = np.array([1.1, 1.1, 1.4]) * resolution
    shape = tuple(int(n) for n in np.ceil(np.array([180, 210, 170]) / voxel))
    grid = make_grid(shape=shape, voxel_size=voxel, orientation="LIA", oblique_deg=10.0,
                     centre=nb.affines.apply_affine(truth, centre))
    files = {"t1w": folder / "T1w_brain.nii.gz", "mask": folder / "T1w_mask.nii.gz",
             "t2w": folder / "T2w.nii.gz"}
    t1.to_filename(files["t1w"])
    mask.to_filename(files["mask"])
    warp_to_grid(t2, truth, grid, shape, order=3).to_filename(files["t2w"])
    return {**{k: str(v) for k, v in files.items()}, "truth": truth}


@pytest.mark.parametrize("resolution", [2, pytest.param(1, marks=pytest.mark.slow)])
def test_coreg_wf_recovers_rigid_t2(resolution, tmp_path):
    """A T2-like image moved by a known rigid transform comes back to < 0.3 mm mean error."""
    case = _coreg_case(resolution, tmp_path)
    wf = init_coreg_wf(dof=6, metric="mi")
    wf.inputs.inputnode.in_file = case["t2w"]
    wf.inputs.inputnode.t1w_brain = case["t1w"]
    wf.inputs.inputnode.t1w_mask = case["mask"]
    out = run_collecting(wf, tmp_path / "work", ["xfm", "inv_xfm", "out_t1w", "out_report",
                                                 "run_facts"], plugin="Linear")
    from niaffine.io import load_transform

    error = mean_displacement(case["truth"], load_transform(out["xfm"]), nb.load(case["mask"]))
    assert error < 0.3, error
    _same_grid(out["out_t1w"], case["t1w"])
    ET.parse(out["out_report"])
    facts = json.loads(Path(out["run_facts"]).read_text())
    assert FACT_KEYS <= set(facts) and facts["dof"] == 6 and facts["mask_volume_ml"] > 1000


def _native_grid(path, template, series, n_volumes=None):
    img, tpl, raw = nb.load(path), nb.load(template), nb.load(series)
    assert np.allclose(img.header.get_zooms()[:3], raw.header.get_zooms()[:3]), path
    assert np.allclose(img.affine[:3, 3], tpl.affine[:3, 3], atol=1e-4), path
    assert nb.aff2axcodes(img.affine) == nb.aff2axcodes(tpl.affine)
    assert img.ndim == (3 if n_volumes is None else 4)


def test_resample_wf_single_interpolation(tmp_path, template_2mm):
    """Template-space output equals one resampling through the composed matrix."""
    from niaffine.engine import resample_image
    from niaffine.io import save_transform

    t1 = nb.load(template_2mm["t1"])
    centre = nb.affines.apply_affine(t1.affine, np.array(t1.shape) / 2.0)
    rng = np.random.default_rng(5)
    coreg = random_affine(rng, max_rotation_deg=6, max_translation_mm=5, dof=6, centre=centre)
    norm = random_affine(rng, max_rotation_deg=6, max_translation_mm=5, dof=12, centre=centre)
    save_transform(coreg, str(tmp_path / "coreg_xfm.txt"), reference=t1, moving=t1)
    save_transform(norm, str(tmp_path / "norm_xfm.txt"), reference=t1, moving=t1)
    wf = init_resample_wf()
    wf.inputs.inputnode.in_file = template_2mm["t1"]
    wf.inputs.inputnode.coreg_xfm = str(tmp_path / "coreg_xfm.txt")
    wf.inputs.inputnode.t1w_reference = template_2mm["t1"]
    wf.inputs.inputnode.t1w2template_xfm = str(tmp_path / "norm_xfm.txt")
    wf.inputs.inputnode.template = template_2mm["t1"]
    out = run_collecting(wf, tmp_path / "work", ["out_t1w", "out_template"], plugin="Linear")
    expected = resample_image(t1, coreg @ norm, t1).get_fdata()
    got = nb.load(out["out_template"]).get_fdata()
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()
    assert Path(out["out_template"]).name.endswith("_space-template.nii.gz")


def _check_subject_outputs(out, subject, truth_entry, root, template, template_mask,
                           n_volumes, max_error_mm):
    from niaffine.io import load_transform

    for field in ("t1w_mask", "t1w_brain", "t1w2template_xfm", "template2t1w_xfm",
                  "t1w_template"):
        assert Path(out[field]).is_file(), field
    assert out["t1w_preproc"] == subject["t1w"]
    assert out["template"] == template
    _same_grid(out["t1w_mask"], subject["t1w"])
    _same_grid(out["t1w_brain"], subject["t1w"])
    _same_grid(out["t1w_template"], template)
    mask = nb.load(out["t1w_mask"])
    assert set(np.unique(np.asarray(mask.dataobj))) == {0, 1}
    true_mask = np.asarray(nb.load(root / truth_entry["brain_mask"]).dataobj) > 0
    ours = np.asarray(mask.dataobj) > 0
    assert 2 * (true_mask & ours).sum() / (true_mask.sum() + ours.sum()) > 0.93

    # transforms against the ground truth (template mask / T1w mask points)
    forward = load_transform(out["t1w2template_xfm"])
    assert np.allclose(load_transform(out["template2t1w_xfm"]) @ forward, np.eye(4), atol=1e-4)
    error = mean_displacement(np.array(truth_entry["t1w_to_template"]), forward, template_mask)
    assert error < max_error_mm, ("template", error)
    images = subject["images"]
    for key in ("coreg_xfms", "t1w2image_xfms", "images_t1w", "images_template"):
        assert len(out[key]) == len(images), key
    for index, image in enumerate(images):
        relative = str(Path(image["path"]).relative_to(root))
        true = np.array(truth_entry["images"][relative]["to_t1w"])
        error = mean_displacement(true, load_transform(out["coreg_xfms"][index]), mask)
        assert error < max_error_mm, (image["suffix"], error)
        series = n_volumes if image["suffix"] == "bold" else None
        _same_grid(out["images_t1w"][index], subject["t1w"], series)
        if image["suffix"] == "bold":  # the template's field of view at the series' voxels
            _native_grid(out["images_template"][index], template, image["path"], series)
        else:
            _same_grid(out["images_template"][index], template, series)
        assert out["images_t1w"][index].endswith("_space-T1w.nii.gz")
        assert Path(out["images_t1w"][index]).name.startswith(Path(image["path"]).name[:6])

    assert len(out["reportlets"]) == 2 + len(images)
    for svg in out["reportlets"]:
        root_element = ET.parse(svg).getroot()
        assert root_element.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(out["metrics"]) == 1 + len(images)
    facts = [json.loads(Path(path).read_text()) for path in out["metrics"]]
    assert all(FACT_KEYS <= set(f) for f in facts)
    assert [f["dof"] for f in facts] == [12] + [6] * len(images)


def test_single_subject_end_to_end(tiny_dataset, template_2mm, tmp_path):
    """2 mm synthetic subject, MultiProc on 2 processes, every output checked."""
    root, truth = tiny_dataset
    entry = truth["sub-01"]
    subject = subject_from_truth(root, "sub-01", entry)
    assert [image["suffix"] for image in subject["images"]] == ["T2w", "bold"]
    wf = init_single_subject_wf(subject_data=subject, template=template_2mm["t1"],
                                template_mask=template_2mm["mask"], resample_bold=True,
                                hmc=False)  # the static path; series: test_hmc.py
    out = run_collecting(wf, tmp_path)
    _check_subject_outputs(out, subject, entry, root, template_2mm["t1"],
                           nb.load(template_2mm["mask"]), n_volumes=3, max_error_mm=1.0)


@pytest.mark.slow
def test_single_subject_full_resolution(tmp_path_factory, tmp_path):
    """1.2 mm subject against the 1 mm MNI152NLin2009aSym template, as the BIDS-App runs it."""
    from niaffine.data.bids_demo import DEMO_SUBJECTS, generate_demo_dataset
    from niaffine.data.templates import template_path

    root = tmp_path_factory.mktemp("bids_full")
    truth = generate_demo_dataset(root, subjects=DEMO_SUBJECTS[:1], seed=1, resolution=1.0,
                                  bold_volumes=4)
    subject = subject_from_truth(root, "sub-01", truth["sub-01"])
    wf = init_single_subject_wf(subject_data=subject, resample_bold=False, hmc=False)
    out = run_collecting(wf, tmp_path)
    assert out["template"] == str(template_path("t1"))
    from niaffine.data.templates import load_mni_brain_mask

    _check_subject_outputs(out, subject, truth["sub-01"], root, out["template"],
                           load_mni_brain_mask(), n_volumes=None, max_error_mm=0.5)


def test_node_error_names_the_file(tmp_path, template_2mm):
    """A corrupt image fails its node with one line naming the file, in the crash report."""
    bad = tmp_path / "sub-01_FLAIR.nii.gz"
    bad.write_bytes(b"\x00" * 512)
    wf = init_coreg_wf()
    wf.inputs.inputnode.in_file = str(bad)
    wf.inputs.inputnode.t1w_brain = template_2mm["t1"]
    wf.inputs.inputnode.t1w_mask = template_2mm["mask"]
    with pytest.raises(RuntimeError):
        run_collecting(wf, tmp_path, ["xfm"], plugin="Linear")
    crashes = list(tmp_path.glob("crash-*registration*.txt"))
    assert crashes, list(tmp_path.iterdir())
    text = crashes[0].read_text()
    assert f"AffineRegistration failed on moving_image={bad}" in text


@pytest.mark.slow
def test_single_subject_t1w_space_only(tiny_dataset, tmp_path):
    """Without a template space: no normalisation, template fields None or empty."""
    root, truth = tiny_dataset
    subject = subject_from_truth(root, "sub-01", truth["sub-01"])
    wf = init_single_subject_wf(subject_data=subject, spaces=["T1w"], hmc=False)
    out = run_collecting(wf, tmp_path)
    assert out["template"] is None and out["t1w2template_xfm"] is None
    assert out["images_template"] == []
    assert len(out["reportlets"]) == 1 + len(subject["images"])
    assert len(out["metrics"]) == len(subject["images"])
    assert len(out["images_t1w"]) == len(subject["images"])
    for path in out["images_t1w"]:
        _same_grid(path, subject["t1w"])

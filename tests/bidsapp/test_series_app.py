# SPDX-License-Identifier: Apache-2.0
"""The real app on a tiny dataset with a moving BOLD run and a moving DWI run (head motion
known per volume): fMRIPrep 23 names, what pybids, nilearn and nitransforms read from them,
the rotated b-vectors, sidecars, units, reports, and bad series inputs (exit 65, nothing
written)."""

import json
import shutil
import subprocess

import nibabel as nb
import numpy as np
import pytest

from niaffine.bidsapp import queries
from niaffine.bidsapp.run import main
from niaffine.data.bids_demo import TINY_SUBJECTS, generate_demo_dataset, load_ground_truth

TEMPLATE = "MNI152NLin2009aSym"
#: Per-volume head motion of the generated runs (deg and mm).
MOTION = 0.8
FUNC = "sub-01/func/sub-01_task-rest"
DWI = "sub-01/dwi/sub-01"
EXPECTED = [
    f"{FUNC}_desc-hmc_boldref.nii.gz",
    f"{FUNC}_from-orig_to-boldref_mode-image_desc-hmc_xfm.txt",
    f"{FUNC}_desc-coreg_boldref.nii.gz",
    f"{FUNC}_from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt",
    f"{FUNC}_desc-confounds_timeseries.tsv", f"{FUNC}_desc-confounds_timeseries.json",
    *(f"{FUNC}_space-{space}_{name}" for space in ("T1w", TEMPLATE) for name in (
        "desc-preproc_bold.nii.gz", "desc-preproc_bold.json", "boldref.nii.gz",
        "desc-brain_mask.nii.gz")),
    f"{DWI}_desc-hmc_dwiref.nii.gz", f"{DWI}_from-orig_to-dwiref_mode-image_desc-hmc_xfm.txt",
    f"{DWI}_from-dwiref_to-T1w_mode-image_desc-coreg_xfm.txt",
    f"{DWI}_space-T1w_desc-preproc_dwi.nii.gz", f"{DWI}_space-T1w_desc-preproc_dwi.bvec",
    f"{DWI}_space-T1w_desc-preproc_dwi.bval", f"{DWI}_space-T1w_dwiref.nii.gz",
    f"{DWI}_desc-confounds_timeseries.tsv",
    "sub-01/figures/sub-01_task-rest_desc-motion_bold.svg",
    "sub-01/figures/sub-01_task-rest_desc-realignment_bold.svg",
    "sub-01/figures/sub-01_desc-motion_dwi.svg",
    "group/motion_qc.tsv",
]


@pytest.fixture(scope="module")
def series_bids(tmp_path_factory):
    """One 2 mm subject: T1w, a 6-volume BOLD and an 8-volume DWI, both moving (no T2w:
    its names are checked with the stand-in workflow, ``test_app_mechanics.py``)."""
    root = tmp_path_factory.mktemp("series") / "bids"
    generate_demo_dataset(root, subjects=TINY_SUBJECTS, seed=3, bold_volumes=6,
                          bold_motion=MOTION, dwi=True, t2w=False)
    return root


@pytest.fixture(scope="module")
def series_run(series_bids, tmp_path_factory):
    base = tmp_path_factory.mktemp("series_run")
    out = base / "out"
    codes = (main([str(series_bids), str(out), "participant", "-w", str(base / "work"),
                   "--nprocs", "2", "--omp-nthreads", "1", "--device", "cpu"]),
             main([str(series_bids), str(out), "group"]))
    return {"out": out, "codes": codes, "truth": load_ground_truth(series_bids)["sub-01"]}


def test_series_names(series_run):
    assert series_run["codes"] == (0, 0)
    out = series_run["out"]
    missing = [name for name in EXPECTED if not (out / name).is_file()]
    assert missing == []
    # the static-image names of --no-hmc are not written
    assert not list(out.rglob("*from-bold_to-T1w*")) and not list(out.rglob("*from-dwi_*"))


def test_pybids_finds_fmriprep_entities(series_run):
    from bids import BIDSLayout

    layout = BIDSLayout(series_run["out"], validate=False, config=["bids", "derivatives"])
    for suffix in ("bold", "dwi"):
        found = layout.get(desc="preproc", space="T1w", suffix=suffix, extension=".nii.gz")
        assert len(found) == 1, suffix
    assert len(layout.get(desc="confounds", suffix="timeseries", extension=".tsv")) == 2
    assert len(layout.get(space=TEMPLATE, desc="preproc", suffix="bold",
                          extension=".nii.gz")) == 1


def _confounds(out):
    import pandas as pd

    return pd.read_csv(out / f"{FUNC}_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")


def test_nilearn_load_confounds(series_run):
    from nilearn.interfaces.fmriprep import load_confounds

    out = series_run["out"]
    table = _confounds(out)
    fd = table["framewise_displacement"].to_numpy()
    threshold = float(np.nanmedian(fd))
    confounds, sample_mask = load_confounds(
        str(out / f"{FUNC}_space-T1w_desc-preproc_bold.nii.gz"), strategy=("motion", "scrub"),
        motion="full", fd_threshold=threshold, std_dvars_threshold=100.0, scrub=0)
    assert confounds.shape == (6, 24)
    kept = [t for t in range(6) if not fd[t] > threshold]  # n/a (first volume) is kept
    assert sample_mask is not None and list(sample_mask) == kept
    for column in ("rmsd", "dvars", "std_dvars", "rot_z_derivative1_power2"):
        assert column in table
    meta = json.loads((out / f"{FUNC}_desc-confounds_timeseries.json").read_text())
    assert meta["framewise_displacement"]["Units"] == "mm"


def _mean_error(true, est, mask_img):
    from niaffine.data.geometry import mean_displacement

    return mean_displacement(np.asarray(true), np.asarray(est), mask_img)


@pytest.mark.parametrize(("stem", "ref"), [(FUNC, "boldref"), (DWI, "dwiref")])
def test_per_volume_transforms_match_truth(series_run, series_bids, stem, ref):
    """hmc_t @ coreg (nitransforms reads both files) against each volume's true T1w map."""
    from nitransforms.io.itk import ITKLinearTransformArray

    from niaffine.io import load_transform

    out, truth = series_run["out"], series_run["truth"]
    suffix = "bold" if ref == "boldref" else "dwi"
    image = next(v for k, v in truth["images"].items() if k.endswith(f"_{suffix}.nii.gz"))
    hmc_file = out / f"{stem}_from-orig_to-{ref}_mode-image_desc-hmc_xfm.txt"
    volumes = ITKLinearTransformArray.from_filename(str(hmc_file))["xforms"]
    assert len(volumes) == len(image["volumes_to_t1w"])
    coreg = load_transform(out / f"{stem}_from-{ref}_to-T1w_mode-image_desc-coreg_xfm.txt")
    mask = nb.load(series_bids / truth["brain_mask"])
    errors = [_mean_error(true, volume.to_ras() @ coreg, mask)
              for true, volume in zip(image["volumes_to_t1w"], volumes)]
    print(stem, [round(e, 3) for e in errors])
    assert max(errors) < 1.0


def _fsl_frame(affine):
    """World directions of FSL b-vector axes (written here again, independently)."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    linear = linear / np.linalg.norm(linear, axis=0)
    return linear @ np.diag([-1.0, 1, 1]) if np.linalg.det(linear) > 0 else linear


def test_bvecs_rotated_into_output_frame(series_run, series_bids):
    """Read with the output image's affine, each b-vector is the scanner's gradient seen
    from the anatomy: R_t^T g_t, R_t the true T1w-to-volume rotation of volume t."""
    out, truth = series_run["out"], series_run["truth"]
    rel, image = next((k, v) for k, v in truth["images"].items() if v["suffix"] == "dwi")
    raw = nb.load(series_bids / rel)
    raw_bvecs = np.loadtxt(str(series_bids / rel).replace(".nii.gz", ".bvec"))
    written = np.loadtxt(out / f"{DWI}_space-T1w_desc-preproc_dwi.bvec")
    output = nb.load(out / f"{DWI}_space-T1w_desc-preproc_dwi.nii.gz")
    assert written.shape == raw_bvecs.shape and output.shape[3] == raw_bvecs.shape[1]
    bvals = np.loadtxt(out / f"{DWI}_space-T1w_desc-preproc_dwi.bval")
    angles = []
    for t in np.flatnonzero(bvals > 0):
        rotation = image["volumes_to_t1w"][t][:3, :3]
        expected = rotation.T @ (_fsl_frame(raw.affine) @ raw_bvecs[:, t])
        got = _fsl_frame(output.affine) @ written[:, t]
        angles.append(np.degrees(np.arccos(np.clip(abs(expected @ got), -1, 1))))
        assert np.isclose(np.linalg.norm(got), 1.0, atol=1e-4)
    print("b-vector errors (deg)", np.round(angles, 2))
    assert max(angles) < 2.0
    assert np.all(written[:, bvals == 0] == 0)


def test_sidecars_and_units(series_run):
    out = series_run["out"]
    for image in sorted(out.rglob("sub-*/**/*.nii.gz")):
        img = nb.load(image)
        units = img.header.get_xyzt_units()
        assert units[0] == "mm", image.name
        if img.ndim == 4:
            assert units[1] == "sec" and np.isclose(img.header.get_zooms()[3], 2.0), image.name
        sidecar = json.loads((image.parent / image.name.replace(".nii.gz", ".json"))
                             .read_text())
        assert sidecar.get("Description"), image.name
        if "_space-" in image.name:
            assert sidecar.get("SpatialReference"), image.name
    bold = json.loads((out / f"{FUNC}_space-T1w_desc-preproc_bold.json").read_text())
    assert bold["RepetitionTime"] == 2.0 and bold["TaskName"] == "rest"
    assert bold["SpatialReference"] == "bids::sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"
    hmc = json.loads((out / f"{FUNC}_from-orig_to-boldref_mode-image_desc-hmc_xfm.json")
                     .read_text())
    assert hmc["MeanFramewiseDisplacement"] > 0
    t1w_grid = nb.load(out / "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz")
    series = nb.load(out / f"{FUNC}_space-T1w_desc-preproc_bold.nii.gz")
    assert np.allclose(series.header.get_zooms()[:3], 3.5)  # native resolution, T1w's frame
    corner = nb.affines.apply_affine(t1w_grid.affine, [0, 0, 0])
    assert np.allclose(series.affine[:3, 3], corner, atol=2.0)
    for space in ("T1w", TEMPLATE):  # the series, its reference and its mask share one grid
        grids = [nb.load(out / f"{FUNC}_space-{space}_{name}.nii.gz") for name in
                 ("desc-preproc_bold", "boldref", "desc-brain_mask")]
        assert all(g.shape[:3] == grids[0].shape[:3] and np.allclose(g.affine, grids[0].affine)
                   for g in grids)
        assert np.asanyarray(grids[2].dataobj).any()


def test_reports_show_motion(series_run):
    out = series_run["out"]
    page = (out / "sub-01.html").read_text()
    for name in ("desc-motion_bold.svg", "desc-realignment_bold.svg", "desc-motion_dwi.svg",
                 "Head motion", "Reading the figures"):
        assert name in page
    rows = (out / "group/motion_qc.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert len(rows) == 3 and {"mean_fd", "max_fd", "flags"} <= set(header)
    assert "motion_qc.tsv" in (out / "group/index.html").read_text()
    qc = (out / "group/registration_qc.tsv").read_text()
    assert "task-rest:bold" in qc and "\tdwi\t" in qc
    assert max(len(cell) for line in qc.splitlines() for cell in line.split("\t")
               if cell[:1].isdigit() or cell[:1] == "-") < 12  # rounded, not 17 digits


@pytest.mark.skipif(queries.find_validator() is None, reason="bids-validator-deno missing")
def test_series_derivatives_validate(series_run):
    proc = subprocess.run([queries.find_validator(), "--ignoreWarnings", str(series_run["out"])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def _break_3d(bold, dwi):
    img = nb.load(bold)
    nb.save(img.slicer[..., 0], bold)
    return bold, "must be 4D"


def _break_nan(bold, dwi):
    img = nb.load(bold)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[..., 2] = np.nan
    out = nb.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(np.float32)
    nb.save(out, bold)
    return bold, "volume"


def _break_bval_count(bold, dwi):
    bval = dwi.with_name(dwi.name.replace(".nii.gz", ".bval"))
    bval.write_text("0 1000 1000\n")
    return bval, "3 b-values for a series of 8 volumes"


def _break_zero_bvec(bold, dwi):
    bvec = dwi.with_name(dwi.name.replace(".nii.gz", ".bvec"))
    rows = np.loadtxt(bvec)
    rows[:, 1] = 0.0
    np.savetxt(bvec, rows, fmt="%.6f")
    return bvec, "zero"


@pytest.mark.parametrize("breaker", [_break_3d, _break_nan, _break_bval_count,
                                     _break_zero_bvec])
def test_bad_series_inputs(series_bids, tmp_path, capsys, breaker):
    """A bad series: exit 65 before any work, one line naming the file, no derivative."""
    bids = shutil.copytree(series_bids, tmp_path / "bids")
    bad, words = breaker(bids / "sub-01/func/sub-01_task-rest_bold.nii.gz",
                         bids / "sub-01/dwi/sub-01_dwi.nii.gz")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--nprocs", "1"])
    text = capsys.readouterr()
    lines = [line for line in (text.out + text.err).splitlines() if str(bad) in line]
    assert code == 65
    assert lines and words in lines[0], text.err[-2000:]
    assert not [p for p in (out / "sub-01").rglob("*") if p.is_file()]
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").rglob("*.pklz"))


@pytest.mark.parametrize("space", ["T1w", TEMPLATE])
def test_bold_brain_mask_is_the_brain(series_run, space):
    """``space-<space>_desc-brain_mask`` of the BOLD is a brain mask (the T1w's, carried through
    the coregistration), not the whole head the realignment samples: against the T1w brain
    mask in that space, resampled onto the BOLD output grid."""
    from niaffine.engine import resample_image
    from niaffine.io import load_transform

    out = series_run["out"]
    mask_img = nb.load(out / f"{FUNC}_space-{space}_desc-brain_mask.nii.gz")
    mask = np.asanyarray(mask_img.dataobj) > 0
    to_space = np.eye(4) if space == "T1w" else load_transform(
        out / f"sub-01/anat/sub-01_from-T1w_to-{TEMPLATE}_mode-image_xfm.txt")
    brain = np.asanyarray(resample_image(nb.load(out / "sub-01/anat/sub-01_desc-brain_mask.nii.gz"),
                                         to_space, mask_img, order=0).dataobj) > 0
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.9, dice

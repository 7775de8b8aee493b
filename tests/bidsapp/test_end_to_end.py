# SPDX-License-Identifier: Apache-2.0
"""The real app (engine, workflows) on generated datasets, against the known ground truth.

The default suite runs one tiny dataset (one 2 mm subject: T1w, T2w, a 5-volume BOLD)
twice with the same work directory, with ``--no-hmc`` (the BOLD run treated as a static
image, as before series realignment: ``test_series_app.py`` runs the default); the
3-subject demo (series realigned) is ``@pytest.mark.slow``.
"""

import importlib.util
import subprocess
import time

import nibabel as nb
import numpy as np
import pytest

from niaffine.bidsapp import queries
from niaffine.bidsapp.run import main
from niaffine.data.bids_demo import load_ground_truth

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("niaffine.io") is None
    or importlib.util.find_spec("niaffine.workflows.base") is None,
    reason="engine I/O or workflows not available yet")
MAX_MEAN_ERROR_MM = 0.5
TEMPLATE = "MNI152NLin2009aSym"


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name.endswith((".nii.gz", ".txt", ".json"))
            and "logs" not in p.parts and "group" not in p.parts}


@pytest.fixture(scope="module")
def real_run(tiny_bids, tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    out, work = base / "out", base / "work"
    argv = [str(tiny_bids), str(out), "participant", "-w", str(work), "--nprocs", "2",
            "--omp-nthreads", "1", "--device", "cpu", "--no-hmc"]
    start = time.monotonic()
    first = main(argv)
    first_s = time.monotonic() - start
    snapshot = _snapshot(out)
    start = time.monotonic()
    second = main(argv)
    second_s = time.monotonic() - start
    group = main([str(tiny_bids), str(out), "group"])
    return {"out": out, "codes": (first, second, group), "times": (first_s, second_s),
            "first": snapshot, "truth": load_ground_truth(tiny_bids)}


def test_runs_cleanly(real_run):
    assert real_run["codes"] == (0, 0, 0)


def _load_xfm(path):
    from niaffine.io import load_transform

    return load_transform(path)


def _mean_error(true, est, mask_img):
    from niaffine.data.geometry import mean_displacement

    return mean_displacement(np.asarray(true), np.asarray(est), mask_img)


def check_subject(out, bids, key, entry):
    """Check one subject/session's outputs against the generator's ground truth."""
    from niaffine.data.templates import load_mni_brain_mask, load_mni_t1

    sub, _, ses = key.partition("_")
    anat = out / sub / (ses or "") / "anat"
    t1w = nb.load(bids / entry["t1w"])
    mni = load_mni_t1()
    errors = {}
    for name, grid in ((f"{key}_desc-preproc_T1w.nii.gz", t1w),
                       (f"{key}_desc-brain_T1w.nii.gz", t1w),
                       (f"{key}_desc-brain_mask.nii.gz", t1w),
                       (f"{key}_space-{TEMPLATE}_desc-preproc_T1w.nii.gz", mni)):
        img = nb.load(anat / name)
        assert img.shape[:3] == grid.shape[:3], name
        assert np.allclose(img.affine, grid.affine, atol=1e-4), name
    xfm = _load_xfm(anat / f"{key}_from-T1w_to-{TEMPLATE}_mode-image_xfm.txt")
    errors["T1w->MNI"] = _mean_error(entry["t1w_to_template"], xfm, load_mni_brain_mask())
    inv = _load_xfm(anat / f"{key}_from-{TEMPLATE}_to-T1w_mode-image_xfm.txt")
    assert np.allclose(inv @ xfm, np.eye(4), atol=1e-2)  # ITK files may hold float32
    t1w_brain = nb.load(bids / entry["brain_mask"])
    for rel, image in entry["images"].items():
        suffix = image["suffix"]
        folder = anat.parent / {"T2w": "anat", "bold": "func", "dwi": "dwi"}[suffix]
        stem = rel.split("/")[-1].replace(f"_{suffix}.nii.gz", "")
        realigned = folder / f"{stem}_from-{suffix}ref_to-T1w_mode-image_desc-coreg_xfm.txt"
        if realigned.exists():  # a realigned series: volume 0 is hmc[0] @ coreg
            from niaffine.series_io import load_transform_array

            hmc = folder / f"{stem}_from-orig_to-{suffix}ref_mode-image_desc-hmc_xfm.txt"
            xfm = load_transform_array(hmc)[0] @ _load_xfm(realigned)
        else:
            xfm = _load_xfm(folder / f"{stem}_from-{suffix}_to-T1w_mode-image_xfm.txt")
        errors[f"{suffix}->T1w"] = _mean_error(image["to_t1w"], xfm, t1w_brain)
        if suffix == "T2w":
            names = {"T1w": f"{stem}_desc-preproc_T2w",
                     TEMPLATE: f"{stem}_space-{TEMPLATE}_desc-preproc_T2w"}
        else:
            names = {space: f"{stem}_space-{space}_{suffix}ref" for space in ("T1w", TEMPLATE)
                     if space == "T1w" or suffix == "bold" or not realigned.exists()}
        for space, grid in (("T1w", t1w), (TEMPLATE, mni)):
            if space not in names:
                continue
            img = nb.load(folder / f"{names[space]}.nii.gz")
            # series (and, with --no-hmc, their references) in a template space: native
            # resolution on the space's field of view
            if realigned.exists() or (space != "T1w" and suffix != "T2w"):
                corner = nb.affines.apply_affine(grid.affine, [0, 0, 0])
                assert np.allclose(img.affine[:3, 3], corner, atol=3.0)
                continue
            assert img.shape[:3] == grid.shape[:3] and np.allclose(img.affine, grid.affine,
                                                                   atol=1e-4)
    return errors


def test_transforms_match_ground_truth(real_run, tiny_bids):
    for key, entry in real_run["truth"].items():
        errors = check_subject(real_run["out"], tiny_bids, key, entry)
        print(key, {k: round(v, 3) for k, v in errors.items()})
        assert max(errors.values()) < MAX_MEAN_ERROR_MM, errors


def test_reports_exist(real_run):
    out = real_run["out"]
    html = (out / "sub-01.html").read_text()
    assert html.count("<object ") >= 4
    for figure in (out / "sub-01" / "figures").glob("*.svg"):
        assert figure.stat().st_size > 1000
    assert (out / "group" / "registration_qc.tsv").read_text().count("\n") == 4


def test_rerun_is_faster_and_identical(real_run):
    first_s, second_s = real_run["times"]
    print(f"first run {first_s:.1f} s, rerun {second_s:.1f} s")
    assert second_s < 0.5 * first_s
    again = _snapshot(real_run["out"])
    assert again.keys() == real_run["first"].keys()
    assert [k for k in again if again[k] != real_run["first"][k]] == []


@pytest.mark.skipif(queries.find_validator() is None, reason="bids-validator-deno missing")
def test_real_derivatives_validate(real_run):
    proc = subprocess.run([queries.find_validator(), "--ignoreWarnings", str(real_run["out"])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.slow
def test_full_demo(tmp_path):
    """``make demo``: 3 subjects (one with two sessions), every transform within 0.5 mm."""
    from niaffine.demo import main as demo

    assert demo([str(tmp_path), "--nprocs", "2"]) == 0
    bids, out = tmp_path / "bids", tmp_path / "derivatives"
    truth = load_ground_truth(bids)
    assert len(truth) == 4
    for key, entry in truth.items():
        errors = check_subject(out, bids, key, entry)
        assert max(errors.values()) < MAX_MEAN_ERROR_MM, (key, errors)
    rows = (out / "group" / "registration_qc.tsv").read_text().splitlines()[1:]
    assert len(rows) == 16  # 4 subject-sessions: T1w, T2w, BOLD, DWI
    if queries.find_validator():
        for root in (bids, out):
            proc = subprocess.run([queries.find_validator(), "--ignoreWarnings", str(root)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout[-3000:]

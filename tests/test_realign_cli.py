# SPDX-License-Identifier: Apache-2.0
"""``niaffine-realign``: parser, outputs read by real clients, exit codes, nothing on failure."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from niaffine.data import series as S
from niaffine.realign import build_parser, main
from niaffine.series_io import load_transform_array, read_bvecs, split_transform_array
from tests import series_cases as SC
from tests.engine.conftest import _one_thread  # noqa: F401  (one torch thread, autouse)

FAST = ["--levels", "2 1", "-q"]


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def bold_run(tmp_path_factory):
    """One full BOLD run with every output."""
    folder = tmp_path_factory.mktemp("realign")
    case = SC.bold()
    paths = SC.save_case(case, folder, "sub-01_task-rest_bold")
    out = {name: folder / "out" / name for name in (
        "hmc_xfm.txt", "sub-01_task-rest_desc-confounds_timeseries.tsv", "realigned.nii.gz",
        "boldref.nii.gz", "run.json")}
    code = main([paths["series"], "-o", str(out["hmc_xfm.txt"]), "--confounds",
                 str(out["sub-01_task-rest_desc-confounds_timeseries.tsv"]), "--out-image",
                 str(out["realigned.nii.gz"]), "--out-reference", str(out["boldref.nii.gz"]),
                 "--out-json", str(out["run.json"]), *FAST])
    return {"code": code, "case": case, "out": out, "folder": folder, **paths}


# -- parser -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    ["--dof", "5"], ["--metric", "lncc"], ["--interpolation", "sinc"], ["--passes", "3"],
    ["--levels", "4 x"], ["--samples", "0"], ["--threads", "0"], ["--bogus"],
    ["--ref-volume", "x"], ["--pe-dir", "x"],
])
def test_parser_rejects_bad_values(bad, capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["s.nii.gz", "-o", "x.txt", *bad])
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (["--bvec", "x.bvec"], "--bvec needs --bval"),
    (["--bval", "x.bval", "--out-bvec", "y.bvec"], "--out-bvec needs"),
    (["--ref-volume", "-1"], "0 or more"),
    (["--reference", "r.nii", "--ref-volume", "1"], "not allowed with"),
    (["--confounds", "c.csv"], "a .tsv file"),
    (["--out-json", "x.txt"], "same path"),
])
def test_combinations_are_usage_errors(bad, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(["s.nii.gz", "-o", "x.txt", *bad])
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_transform_must_be_itk_text(capsys):
    with pytest.raises(SystemExit) as err:
        main(["s.nii.gz", "-o", "x.mat"])
    assert err.value.code == 2 and "ITK text" in capsys.readouterr().err


def test_parser_defaults():
    args = build_parser().parse_args(["s.nii.gz", "-o", "x.txt"])
    assert (args.dof, args.metric, args.passes, args.levels, args.samples, args.device,
            args.interpolation) == (None, "auto", 2, (4.0, 2.0, 1.0), 15000, "auto", "linear")


# -- a full run -----------------------------------------------------------------------------

def test_run_writes_every_output(bold_run):
    assert bold_run["code"] == 0
    for path in bold_run["out"].values():
        assert path.is_file(), path
    confounds = bold_run["out"]["sub-01_task-rest_desc-confounds_timeseries.tsv"]
    assert confounds.with_suffix(".json").is_file()
    facts = json.loads(bold_run["out"]["run.json"].read_text())
    assert facts["volumes"] == 6 and facts["series"].endswith("_bold.nii.gz")
    leftovers = [p for p in (bold_run["folder"] / "out").iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_transforms_are_accurate_and_read_by_nitransforms(bold_run):
    from nitransforms.io.itk import ITKLinearTransformArray

    path = bold_run["out"]["hmc_xfm.txt"]
    assert path.read_text().startswith("#Insight Transform File V1.0")
    matrices = ITKLinearTransformArray.from_filename(str(path)).to_ras()
    assert matrices.shape == (6, 4, 4)
    assert np.allclose(matrices, load_transform_array(path, 6))
    mean, worst = S.volume_errors(bold_run["case"], matrices, step=2)
    assert mean.mean() < 0.08 and worst.max() < 0.25


def test_nitransforms_resamples_as_niaffine(bold_run):
    """Volume t through transform t with nitransforms = volume t of niaffine's output."""
    import nitransforms as nt
    from nitransforms.resampling import apply

    xfms = nt.linear.load(str(bold_run["out"]["hmc_xfm.txt"]), fmt="itk")
    series = nib.load(bold_run["series"])
    ours = np.asanyarray(nib.load(bold_run["out"]["realigned.nii.gz"]).dataobj)
    reference = nib.load(bold_run["out"]["boldref.nii.gz"])
    inside = np.asanyarray(bold_run["case"].mask.dataobj) > 0
    for t in (0, 4):
        vol = nib.Nifti1Image(np.asanyarray(series.dataobj)[..., t], series.affine)
        theirs = np.asanyarray(apply(xfms[t], vol, reference=reference, order=1).dataobj)
        scale = np.abs(ours[..., t][inside]).mean()
        assert np.abs(theirs[inside] - ours[..., t][inside]).mean() < 1e-3 * scale


def test_ants_reads_each_volume_s_transform(bold_run, tmp_path):
    ants = pytest.importorskip("ants")
    matrices = load_transform_array(bold_run["out"]["hmc_xfm.txt"])
    files = split_transform_array(matrices, tmp_path)
    assert len(files) == 6
    series = nib.load(bold_run["series"])
    t = 4
    vol_path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(series.dataobj)[..., t], series.affine), vol_path)
    moved = ants.apply_transforms(
        fixed=ants.image_read(str(bold_run["out"]["boldref.nii.gz"])),
        moving=ants.image_read(str(vol_path)), transformlist=[str(files[t])],
        interpolator="linear")
    theirs = moved.numpy()
    ours = np.asanyarray(nib.load(bold_run["out"]["realigned.nii.gz"]).dataobj)[..., t]
    inside = np.asanyarray(bold_run["case"].mask.dataobj) > 0
    assert np.abs(theirs[inside] - ours[inside]).mean() < 1e-3 * np.abs(ours[inside]).mean()


def test_nilearn_loads_the_confounds(bold_run, tmp_path):
    """A real client: nilearn finds the confounds beside a space-T1w preproc BOLD."""
    from nilearn.interfaces.fmriprep import load_confounds

    confounds = bold_run["out"]["sub-01_task-rest_desc-confounds_timeseries.tsv"]
    func = tmp_path / "func"
    func.mkdir()
    shutil.copy(confounds, func / confounds.name)
    shutil.copy(confounds.with_suffix(".json"), func / confounds.with_suffix(".json").name)
    bold = func / "sub-01_task-rest_space-T1w_desc-preproc_bold.nii.gz"
    shutil.copy(bold_run["out"]["realigned.nii.gz"], bold)
    table, sample_mask = load_confounds(str(bold), strategy=("motion", "scrub"), motion="full",
                                        scrub=0, fd_threshold=0.5, std_dvars_threshold=3)
    assert table.shape == (6, 24)
    assert {"trans_x", "rot_z_derivative1_power2"} <= set(table.columns)
    case = bold_run["case"]
    jump = case.motion.jumps[0]  # the jump's volume is scrubbed, the others kept
    assert sample_mask is not None and jump not in sample_mask and len(sample_mask) >= 4


def test_confound_table_columns(bold_run):
    confounds = bold_run["out"]["sub-01_task-rest_desc-confounds_timeseries.tsv"]
    rows = [line.split("\t") for line in confounds.read_text().splitlines()]
    header = rows[0]
    for name in ("trans_x", "rot_z", "trans_y_derivative1", "rot_x_power2", "framewise_displacement",
                 "rmsd", "dvars", "std_dvars"):
        assert name in header
    first = dict(zip(header, rows[1]))
    assert first["framewise_displacement"] == "n/a" and first["trans_x_derivative1"] == "n/a"
    meta = json.loads(confounds.with_suffix(".json").read_text())
    assert meta["rot_x"]["Units"] == "rad" and meta["framewise_displacement"]["Units"] == "mm"


# -- DWI ------------------------------------------------------------------------------------

def test_dwi_rotates_bvecs(tmp_path, capsys):
    case = SC.dwi()
    paths = SC.save_case(case, tmp_path, "dwi")
    out_bvec, out_image = tmp_path / "out.bvec", tmp_path / "dwi_hmc.nii.gz"
    code, stdout, _ = _run(capsys, [paths["series"], "-o", tmp_path / "xfm.txt", "--bval",
                                    paths["bval"], "--bvec", paths["bvec"], "--out-bvec", out_bvec,
                                    "--out-image", out_image, "--pe-dir", "j", "--confounds",
                                    tmp_path / "dwi_confounds.tsv", "--levels", "2 1"])
    assert code == 0 and "8 volumes, dof 12" in stdout
    rotated = read_bvecs(out_bvec, 8)
    matrices = load_transform_array(tmp_path / "xfm.txt")
    angles = S.bvec_errors_deg(case, rotated, nib.load(out_image).affine, matrices[0])
    assert np.nanmax(angles) < 0.75
    header = (tmp_path / "dwi_confounds.tsv").read_text().splitlines()[0].split("\t")
    assert "framewise_displacement" in header and "dvars" not in header


@pytest.mark.parametrize("code", ["i", "j-"])
def test_dwi_phase_encoding_from_the_bids_sidecar(tmp_path, capsys, code):
    """``--pe-dir auto`` reads a BIDS sidecar's PhaseEncodingDirection; the flag overrides it."""
    case = SC.dwi()
    paths = SC.save_case(case, tmp_path, "sub-01_dwi")
    (tmp_path / "sub-01_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": code}))
    axis = case.series.affine[:3, {"i": 0, "j-": 1}[code]]
    for extra, expected in (([], code), (["--pe-dir", "k"], "k")):
        run_json = tmp_path / f"run{len(extra)}.json"
        status, _, err = _run(capsys, [paths["series"], "-o", tmp_path / "xfm.txt", "--bval",
                                       paths["bval"], "--bvec", paths["bvec"], "--out-json",
                                       run_json, *extra, *FAST])
        assert status == 0, err
        facts = json.loads(run_json.read_text())
        assert facts["pe_direction"] == expected
    # the sidecar's axis is the one the eddy-current model used
    status, _, _ = _run(capsys, [paths["series"], "-o", tmp_path / "xfm.txt", "--bval",
                                 paths["bval"], "--bvec", paths["bvec"], *FAST])
    matrices = load_transform_array(tmp_path / "xfm.txt", 8)
    p = axis / np.linalg.norm(axis)
    dw = np.flatnonzero(case.bvals > 0)
    across = np.linalg.svd(np.eye(3) - np.outer(p, p))[0][:, :2].T
    for t in dw:  # rows across the phase-encoding axis are those of a rotation
        rows = across @ matrices[t][:3, :3]
        assert np.allclose(rows @ rows.T, np.eye(2), atol=1e-6)


@pytest.mark.skipif(shutil.which("mrinfo") is None, reason="MRtrix3 not installed")
def test_rotated_bvecs_as_mrtrix_reads_them(tmp_path):
    """MRtrix3 reads the written b-vectors with the output image: the same world directions."""
    case = SC.dwi()
    directions = S.gradient_directions(6)
    out = nib.Nifti1Image(np.zeros((10, 10, 10, 8), np.float32), case.series.affine)
    out.to_filename(tmp_path / "out.nii")
    bvecs = np.zeros((3, 8))
    bvecs[:, case.bvals > 0] = S.world_to_bvecs(directions, out.affine)
    from niaffine.series_io import write_bvals, write_bvecs

    write_bvecs(bvecs, tmp_path / "out.bvec")
    write_bvals(case.bvals, tmp_path / "out.bval")
    grad = subprocess.run(["mrinfo", str(tmp_path / "out.nii"), "-fslgrad",
                           str(tmp_path / "out.bvec"), str(tmp_path / "out.bval"), "-dwgrad",
                           "-quiet"], check=True, capture_output=True, text=True).stdout
    scanner = np.array([[float(v) for v in line.split()] for line in grad.splitlines()])
    assert np.allclose(scanner[case.bvals > 0, :3], directions, atol=1e-5)


# -- bad input: one line, exit 65, nothing written -------------------------------------------

@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    case = SC.dwi()
    paths = SC.save_case(case, folder, "dwi")
    data = np.asarray(case.series.dataobj)
    nib.save(nib.Nifti1Image(data[..., 0], case.series.affine), folder / "vol3d.nii.gz")
    nan = data.copy()
    nan[5, 5, 5, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, case.series.affine), folder / "nan.nii.gz")
    (folder / "short.bval").write_text("0 1000 1000\n")
    (folder / "short.bvec").write_text("1 0 0\n0 1 0\n0 0 1\n")
    zero = case.bvecs.copy()
    zero[:, 2] = 0.0
    (folder / "zero.bvec").write_text("\n".join(" ".join(str(v) for v in r) for r in zero))
    (folder / "words.bval").write_text("zero thousand\n")
    for name, sidecar in (("broken", "{not json"), ("odd", '{"PhaseEncodingDirection": "y"}')):
        (folder / name).mkdir()
        shutil.copy(paths["series"], folder / name / "dwi.nii.gz")
        (folder / name / "dwi.json").write_text(sidecar)
    return {"folder": folder, **paths}


@pytest.mark.parametrize("make_args, message", [
    (lambda f: [f["folder"] / "vol3d.nii.gz"], "must be 4D"),
    (lambda f: [f["folder"] / "nan.nii.gz"], r"volume\(s\) contain NaN .*volumes 3\)"),
    (lambda f: [f["folder"] / "missing.nii.gz"], "not found"),
    (lambda f: [f["series"], "--bval", f["folder"] / "short.bval"], "3 b-values for a series of 8"),
    (lambda f: [f["series"], "--bval", f["bval"], "--bvec", f["folder"] / "short.bvec"],
     "expected 3 rows of 8 numbers"),
    (lambda f: [f["series"], "--bval", f["bval"], "--bvec", f["folder"] / "zero.bvec"],
     "zero-norm b-vector on diffusion-weighted volume"),
    (lambda f: [f["series"], "--bval", f["folder"] / "words.bval"], "not a b-values file"),
    (lambda f: [f["series"], "--ref-volume", "8"], "outside the series' 8 volumes"),
    (lambda f: [f["folder"] / "broken" / "dwi.nii.gz", "--bval", f["bval"], "--bvec", f["bvec"]],
     "dwi.json: the series' JSON sidecar cannot be read"),
    (lambda f: [f["folder"] / "odd" / "dwi.nii.gz", "--bval", f["bval"], "--bvec", f["bvec"]],
     "PhaseEncodingDirection 'y' is not one of"),
    (lambda f: [f["series"], "--reference", f["folder"] / "nan.nii.gz"], "must be 3D"),
    (lambda f: [f["series"], "--mask", f["folder"] / "vol3d.nii.gz", "--reference",
                f["folder"] / "vol3d.nii.gz", "--mask", f["folder"] / "missing.nii"], "not found"),
])
def test_bad_input_exits_65_and_writes_nothing(small_files, make_args, message, capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, [*make_args(small_files), "-o", out / "x.txt",
                                      "--confounds", out / "c.tsv", *FAST])
    assert code == 65, err
    assert err.count("\n") == 1 and err.startswith("niaffine-realign: error:")
    assert __import__("re").search(message, err), err
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_exits_73_and_writes_nothing(small_files, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    good = tmp_path / "good.txt"
    code, _, err = _run(capsys, [small_files["series"], "-o", good, "--out-reference",
                                 blocker / "ref.nii.gz", "--ref-volume", "0", "--levels", "1",
                                 "-q"])
    assert code == 73 and "cannot write output" in err
    assert not good.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_exits_69(small_files, tmp_path, capsys):
    code, _, err = _run(capsys, [small_files["series"], "-o", tmp_path / "x.txt", "--device",
                                 "cuda", "-q"])
    assert code == 69 and "CUDA is not available" in err


def test_example4d_smoke(tmp_path):
    """The real EPI run that nibabel ships, end to end through the installed entry point."""
    import nibabel.tests

    example = Path(nibabel.tests.__file__).parent / "data" / "example4d.nii.gz"
    exe = Path(sys.executable).with_name("niaffine-realign")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "niaffine.realign"]
    result = subprocess.run(
        [*command, str(example), "-o", str(tmp_path / "xfm.txt"), "--confounds",
         str(tmp_path / "confounds.tsv"), "--out-image", str(tmp_path / "hmc.nii.gz"),
         "--threads", "1"],
        capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 volumes, dof 6" in result.stdout
    matrices = load_transform_array(tmp_path / "xfm.txt", 2)
    assert np.abs(matrices[:, :3, 3]).max() < 5.0  # a still subject: small motion
    assert nib.load(tmp_path / "hmc.nii.gz").shape == (128, 96, 24, 2)

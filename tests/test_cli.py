# SPDX-License-Identifier: Apache-2.0
"""``niaffine-register``: parser, outputs, exit codes, and nothing written on failure."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from niaffine import __version__
from niaffine.cli import build_parser, main
from niaffine.io import load_transform
from tests.engine import cases as C

FAST = ["--levels", "6 3", "--samples", "20000", "-q"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Fixed (3 mm RAS) and moving (LPS, oblique, anisotropic) files with a known 6-dof truth."""
    folder = tmp_path_factory.mktemp("cli")
    fixed, mask = C.fixed_3mm()
    true = C.true_affine(41, 6)
    moving = C.moving_image(true, voxel_size=(2.5, 3.0, 3.5), orientation="LPS", oblique_deg=12.0)
    out = {"true": true, "mask": mask, "dir": folder}
    for name, img in (("fixed", fixed), ("moving", moving), ("fixed_mask", mask)):
        out[name] = C.save(img, folder / f"{name}.nii")
    return out


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err



@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for the registrations here (small, shared test machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# -- parser ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    ["--dof", "5"], ["--dof", "six"], ["--metric", "foo"], ["--interpolation", "sinc"],
    ["--freeze", "skew"], ["--levels", "8 x 2"], ["--levels", "4 -2"], ["--samples", "0"],
    ["--threads", "-1"], ["--seed", "1.5"], ["--bogus"],
])
def test_parser_rejects_bad_values(bad, capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["f.nii", "m.nii", "-o", "x.txt", *bad])
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err


def test_parser_requires_the_output_and_both_images(capsys):
    for argv in (["f.nii", "m.nii"], ["f.nii", "-o", "x.txt"]):
        with pytest.raises(SystemExit) as err:
            build_parser().parse_args(argv)
        assert err.value.code == 2


def test_parser_defaults_and_values():
    args = build_parser().parse_args(["f.nii", "m.nii", "-o", "x.txt"])
    assert (args.dof, args.metric, args.init, args.levels, args.samples, args.device, args.seed,
            args.preset, args.rotation_search) == \
        (12, "auto", "com", None, None, "auto", 0, "default", "auto")
    args = build_parser().parse_args(["f.nii", "m.nii", "-o", "x.txt", "--rotation-search",
                                      "--preset", "template"])
    assert (args.rotation_search, args.preset) == ("always", "template")
    args = build_parser().parse_args(["f.nii", "m.nii", "-o", "x.txt", "--dof", "7", "--levels", "6,3",
                                      "--freeze", "zoom", "shear", "--metric", "ncc"])
    assert args.dof == 7 and args.levels == (6.0, 3.0) and args.freeze == ["zoom", "shear"]
    assert args.fixed == Path("f.nii") and args.metric == "ncc"


def test_documented_2d_dofs_are_accepted():
    """Known bug: ``--help`` documents 2, 3, 4, 6 for 2D images but ``--dof`` only accepts
    3, 6, 7, 9, 12, so 2D translation-only (2) and similarity (4) cannot be asked for."""
    for dof in ("2", "4"):
        assert build_parser().parse_args(["f.nii", "m.nii", "-o", "x.txt", "--dof", dof]).dof == int(dof)


def test_help_lists_every_option(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as err:
        parser.parse_args(["--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    options = [s for action in parser._actions for s in action.option_strings]
    assert len(options) > 20
    for option in options:
        assert option in text, option
    for code in ("65", "69", "70", "73"):
        assert code in text


def test_version(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--version"])
    assert err.value.code == 0
    assert capsys.readouterr().out.strip() == f"niaffine {__version__}"


def test_installed_console_script_reports_its_version():
    script = Path(sys.executable).parent / "niaffine-register"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert done.stdout.strip() == f"niaffine {__version__}"


# -- a successful run -----------------------------------------------------------------------

def test_run_writes_every_output_consistently(files, capsys, tmp_path):
    out = tmp_path / "out"
    paths = {
        "xfm": out / "moving2fixed.txt", "image": out / "moving_in_fixed.nii.gz",
        "inverse": out / "fixed2moving.txt", "fsl": out / "moving2fixed.mat",
        "lta": out / "moving2fixed.lta", "json": out / "run.json",
    }
    code, stdout, stderr = _run(capsys, [
        files["fixed"], files["moving"], "-o", paths["xfm"], "--dof", "6",
        "--out-image", paths["image"], "--out-inverse", paths["inverse"], "--out-fsl", paths["fsl"],
        "--out-lta", paths["lta"], "--out-json", paths["json"], "--levels", "6 3",
        "--samples", "20000", "--threads", "1",
    ])
    assert code == 0, stderr
    assert str(paths["xfm"]) in stdout and "dof 6" in stdout
    fixed, moving = nib.load(files["fixed"]), nib.load(files["moving"])
    matrix = load_transform(paths["xfm"])
    assert C.error_mm(files["true"], matrix) < 0.35
    # ITK text holds 6 significant digits (nitransforms writes floats): 1e-4 mm level.
    assert np.allclose(load_transform(paths["inverse"]) @ matrix, np.eye(4), atol=2e-4)
    assert np.allclose(load_transform(paths["fsl"], reference=fixed, moving=moving), matrix, atol=1e-4)
    assert np.allclose(load_transform(paths["lta"]), matrix, atol=1e-4)
    facts = json.loads(paths["json"].read_text())
    assert np.allclose(facts["matrix"], matrix, atol=1e-6)
    assert facts["dof"] == 6 and facts["versions"]["niaffine"] == __version__
    assert facts["target"] == str(files["fixed"]) and facts["source"] == str(files["moving"])
    assert len(facts["levels"]) == len(facts["iterations_per_level"]) == 2
    assert facts["iterations_total"] == sum(facts["iterations_per_level"])
    assert facts["outputs"]["transform"] == str(paths["xfm"])
    assert facts["outputs"]["transform_fsl"] == str(paths["fsl"])
    moved = nib.load(paths["image"])
    assert moved.shape == fixed.shape and np.allclose(moved.affine, fixed.affine, atol=1e-5)
    inside = np.asarray(files["mask"].dataobj) > 0
    r = np.corrcoef(np.asarray(moved.dataobj)[inside], np.asarray(fixed.dataobj)[inside])[0, 1]
    assert r > 0.9  # measured 0.966 (coarser, anisotropic moving voxels)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())


def test_init_from_a_transform_file(files, capsys, tmp_path):
    start = files["true"].copy()
    start[:3, 3] += (2.0, -1.0, 1.0)
    from niaffine.io import save_transform

    init = save_transform(start, tmp_path / "init.txt")
    out = tmp_path / "xfm.tfm"
    code, _, stderr = _run(capsys, [files["fixed"], files["moving"], "-o", out, "--dof", "6",
                                    "--init", init, "--fixed-mask", files["fixed_mask"], *FAST])
    assert code == 0, stderr
    assert C.error_mm(files["true"], load_transform(out)) < 0.35


# -- failures: exit codes, one-line messages naming the file, nothing written ----------------

def _bad_file(files, name, data=None, affine=None):
    src = nib.load(files["moving"])
    path = files["dir"] / name
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj) if data is None else data,
                             src.affine if affine is None else affine), path)
    return path


def _fails(capsys, tmp_path, argv, code, *words):
    outputs = [tmp_path / "x.txt", tmp_path / "x.nii.gz", tmp_path / "x.json"]
    got, stdout, stderr = _run(capsys, [*argv, "-o", outputs[0], "--out-image", outputs[1],
                                        "--out-json", outputs[2], *FAST])
    assert got == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("niaffine-register: error:"), stderr
    for word in words:
        assert str(word) in lines[0], lines[0]
    assert not any(p.exists() for p in outputs)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_exits_65(files, capsys, tmp_path):
    missing = files["dir"] / "missing.nii.gz"
    _fails(capsys, tmp_path, [files["fixed"], missing], 65, missing, "not found")


def test_nan_image_exits_65(files, capsys, tmp_path):
    data = np.asarray(nib.load(files["moving"]).dataobj).copy()
    data[5, 5, 5] = np.nan
    path = _bad_file(files, "nan.nii", data)
    _fails(capsys, tmp_path, [path, files["moving"]], 65, path, "NaN")


def test_all_zero_image_exits_65(files, capsys, tmp_path):
    path = _bad_file(files, "zero.nii", np.zeros((10, 10, 10), np.float32))
    _fails(capsys, tmp_path, [files["fixed"], path], 65, path, "all zero")


def test_4d_image_exits_65(files, capsys, tmp_path):
    path = _bad_file(files, "series.nii", np.ones((10, 10, 10, 3), np.float32))
    _fails(capsys, tmp_path, [files["fixed"], path], 65, path, "3D")


def test_mask_on_another_grid_exits_65(files, capsys, tmp_path):
    _fails(capsys, tmp_path, [files["fixed"], files["moving"], "--moving-mask", files["fixed_mask"]],
           65, files["fixed_mask"], "not on the grid")


def test_images_that_do_not_overlap_exit_65(files, capsys, tmp_path):
    far = nib.load(files["moving"]).affine.copy()
    far[0, 3] += 1000.0
    path = _bad_file(files, "far.nii", affine=far)
    _fails(capsys, tmp_path, [files["fixed"], path, "--init", "identity"], 65, path,
           "does not overlap")


def test_empty_mask_exits_65(files, capsys, tmp_path):
    path = _bad_file(files, "empty_mask.nii", np.zeros(nib.load(files["moving"]).shape, np.uint8))
    _fails(capsys, tmp_path, [files["fixed"], files["moving"], "--moving-mask", path], 65, path,
           "empty")


def test_missing_initial_transform_exits_65(files, capsys, tmp_path):
    missing = files["dir"] / "no_init.txt"
    _fails(capsys, tmp_path, [files["fixed"], files["moving"], "--init", missing], 65, missing,
           "not found")


def test_bad_output_extension_exits_65_before_registering(files, capsys, tmp_path):
    code, _, stderr = _run(capsys, [files["fixed"], files["moving"], "-o", tmp_path / "x.xfm", *FAST])
    assert code == 65 and "x.xfm" in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_exits_69(files, capsys, tmp_path):
    _fails(capsys, tmp_path, [files["fixed"], files["moving"], "--device", "cuda"], 69, "CUDA")


def test_unknown_device_is_a_clean_error(files, capsys, tmp_path):
    """Known bug: ``--device gpu`` reaches ``torch.device`` and escapes as a RuntimeError
    traceback instead of a one-line message and a documented exit code."""
    code, _, stderr = _run(capsys, [files["fixed"], files["moving"], "-o", tmp_path / "x.txt",
                                    "--device", "gpu", *FAST])
    assert code in (2, 65, 69) and "gpu" in stderr


def test_unwritable_output_exits_73_and_removes_what_it_wrote(files, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    good = tmp_path / "xfm.txt"
    code, _, stderr = _run(capsys, [files["fixed"], files["moving"], "-o", good, "--dof", "6",
                                    "--out-json", blocker / "run.json", *FAST])
    assert code == 73, stderr
    assert "cannot write" in stderr and len(stderr.strip().splitlines()) == 1
    assert not good.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_2d_slices_register_from_the_command_line(capsys, tmp_path):
    from niaffine.data.geometry import make_grid, warp_to_grid

    grid = make_grid(shape=(100, 116, 1), voxel_size=2.0, centre=(0.0, -18.0, 10.0))
    true = np.eye(4)
    true[:2, 3] = (4.0, -3.0)
    fixed = C.save(warp_to_grid(C.source_image(), np.eye(4), grid, (100, 116, 1)), tmp_path / "f.nii")
    moving = C.save(warp_to_grid(C.source_image(), true, grid, (100, 116, 1)), tmp_path / "m.nii")
    code, _, stderr = _run(capsys, [fixed, moving, "-o", tmp_path / "x.txt", "--dof", "3",
                                    "--levels", "8 4 2", "--out-image", tmp_path / "moved.nii", "-q"])
    assert code == 0, stderr
    matrix = load_transform(tmp_path / "x.txt")
    assert np.allclose(matrix[:2, 3], (4.0, -3.0), atol=0.3)
    assert np.allclose(matrix[2], [0, 0, 1, 0]) and np.allclose(matrix[:2, 2], 0)
    assert nib.load(tmp_path / "moved.nii").shape[:2] == (100, 116)


def test_progress_names_the_levels_that_run(files, capsys, tmp_path):
    """Known bug: progress lines use ``--levels`` as given, but levels finer than the fixed
    voxels collapse onto the native grid; ``--levels "6 3 1"`` on 3 mm images runs two levels
    and prints "level 1/3 (6 mm)", "level 2/3 (3 mm)"."""
    code, _, stderr = _run(capsys, [files["fixed"], files["moving"], "-o", tmp_path / "x.txt",
                                    "--dof", "3", "--levels", "6 3 1", "--samples", "5000"])
    assert code == 0
    assert "(6 mm)" in stderr and "(3 mm)" in stderr
    assert "/3" not in stderr and "(1 mm)" not in stderr

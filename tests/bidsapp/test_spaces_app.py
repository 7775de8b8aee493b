# SPDX-License-Identifier: Apache-2.0
"""The real app with fMRIPrep's ``--output-spaces``: a template that exists only in a
local TemplateFlow home (``MNI152NLin6Asym`` at res-2, a cut-down copy of the built-in
brain with a grid of its own), ``T1w`` and ``func``; then two templates in one run.

Checked: outputs lie on the template's res-2 grid (shape and affine) with fMRIPrep's names;
pybids queries written for fMRIPrep outputs find them; every NIfTI has spatial units; the
BIDS validator reports no error; an absent template exits 64 with one line.
"""

import subprocess

import nibabel as nb
import numpy as np
import pytest

from niaffine.bidsapp import queries
from niaffine.bidsapp.run import main
from niaffine.data.bids_demo import TINY_SUBJECTS, generate_demo_dataset
from tests.templateflow_home import TPL, block_network, make_mni_like_home

ANAT = "sub-01/anat/sub-01"
FUNC = "sub-01/func/sub-01_task-rest"
RES2 = f"space-{TPL}_res-2"


@pytest.fixture(scope="module")
def tf_home(tmp_path_factory):
    home, t1w = make_mni_like_home(tmp_path_factory.mktemp("templateflow") / "home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPLATEFLOW_HOME", str(home))
        block_network(mp)
        yield {"home": home, "grid": nb.load(t1w)}


@pytest.fixture(scope="module")
def runs(tf_home, tmp_path_factory):
    """One subject (2 mm T1w, T2w, a 4-volume BOLD): ``TPL:res-2 T1w func``, then (same
    work folder: the first template's registration is reused) ``TPL:res-2
    MNI152NLin2009aSym``."""
    base = tmp_path_factory.mktemp("spaces")
    bids = base / "bids"
    generate_demo_dataset(bids, subjects=TINY_SUBJECTS, seed=5, bold_volumes=4, t2w=True)
    common = ["participant", "-w", str(base / "work"), "--nprocs", "2", "--omp-nthreads", "1",
              "--device", "cpu"]
    one, two = base / "one", base / "two"
    codes = (main([str(bids), str(one), *common, "--output-spaces", f"{TPL}:res-2", "T1w",
                   "func"]),
             main([str(bids), str(two), *common, "--output-spaces", f"{TPL}:res-2",
                   "MNI152NLin2009aSym"]))
    return {"bids": bids, "one": one, "two": two, "codes": codes}


def _same_grid(path, grid) -> bool:
    img = nb.load(path)
    return img.shape[:3] == grid.shape[:3] and np.allclose(img.affine, grid.affine, atol=1e-4)


def test_runs_succeed(runs):
    assert runs["codes"] == (0, 0)


def test_template_outputs_on_the_res2_grid(runs, tf_home):
    out, grid = runs["one"], tf_home["grid"]
    on_grid = [f"{ANAT}_{RES2}_desc-preproc_T1w.nii.gz", f"{ANAT}_{RES2}_desc-preproc_T2w.nii.gz",
               f"{FUNC}_{RES2}_desc-preproc_bold.nii.gz", f"{FUNC}_{RES2}_boldref.nii.gz",
               f"{FUNC}_{RES2}_desc-brain_mask.nii.gz"]
    for name in on_grid:
        assert (out / name).is_file(), name
        assert _same_grid(out / name, grid), name
    for name in (f"{ANAT}_from-T1w_to-{TPL}_mode-image_xfm.txt",
                 f"{ANAT}_from-{TPL}_to-T1w_mode-image_xfm.txt",
                 f"{FUNC}_space-T1w_desc-preproc_bold.nii.gz"):
        assert (out / name).is_file(), name
    assert nb.load(out / f"{FUNC}_{RES2}_desc-preproc_bold.nii.gz").shape[3] == 4
    # nothing in a space that was not asked for
    assert not list(out.rglob("*MNI152NLin2009aSym*"))


def test_func_space_is_the_boldref_grid(runs):
    """``func``: the realigned series with no ``space`` entity, on its boldref's grid."""
    out = runs["one"]
    boldref = nb.load(out / f"{FUNC}_desc-hmc_boldref.nii.gz")
    for name in (f"{FUNC}_desc-preproc_bold.nii.gz", f"{FUNC}_desc-brain_mask.nii.gz"):
        assert _same_grid(out / name, boldref), name
    series = nb.load(out / f"{FUNC}_desc-preproc_bold.nii.gz")
    assert series.shape[3] == 4 and series.header.get_xyzt_units() == ("mm", "sec")
    # the default run writes no func-space series
    assert not (runs["two"] / f"{FUNC}_desc-preproc_bold.nii.gz").exists()


def test_pybids_queries_for_fmriprep_outputs(runs):
    from bids import BIDSLayout

    layout = BIDSLayout(runs["one"], validate=False, config=["bids", "derivatives"])
    for suffix in ("T1w", "T2w", "bold"):
        found = layout.get(space=TPL, res="2", desc="preproc", suffix=suffix,
                           extension=".nii.gz")
        assert len(found) == 1, suffix
    xfms = layout.get(suffix="xfm", mode="image", extension=".txt",
                      **{"from": "T1w", "to": TPL})
    assert [f.filename for f in xfms] == [f"sub-01_from-T1w_to-{TPL}_mode-image_xfm.txt"]
    func = layout.get(desc="preproc", suffix="bold", extension=".nii.gz", space=None)
    assert [f.filename for f in func] == ["sub-01_task-rest_desc-preproc_bold.nii.gz"]


def test_two_templates_in_one_run(runs, tf_home):
    out = runs["two"]
    builtin = nb.load(out / f"{ANAT}_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz")
    assert builtin.shape == (197, 233, 189)
    assert _same_grid(out / f"{ANAT}_{RES2}_desc-preproc_T1w.nii.gz", tf_home["grid"])
    for name in ("MNI152NLin2009aSym", TPL):
        assert (out / f"{ANAT}_from-T1w_to-{name}_mode-image_xfm.txt").is_file()
    # series: res-2 on the template's grid; no res given: the BOLD's own voxel size
    assert _same_grid(out / f"{FUNC}_{RES2}_desc-preproc_bold.nii.gz", tf_home["grid"])
    native = nb.load(out / f"{FUNC}_space-MNI152NLin2009aSym_desc-preproc_bold.nii.gz")
    raw = nb.load(next((runs["bids"] / "sub-01" / "func").glob("*_bold.nii.gz")))
    assert np.allclose(native.header.get_zooms()[:3], raw.header.get_zooms()[:3])
    # the same registration to the first template in both runs (reused from the work dir)
    name = f"{ANAT}_from-T1w_to-{TPL}_mode-image_xfm.txt"
    assert (out / name).read_text() == (runs["one"] / name).read_text()


@pytest.mark.parametrize("which", ["one", "two"])
def test_every_nifti_has_units(runs, which):
    images = sorted(runs[which].rglob("*.nii.gz"))
    assert images
    for path in images:
        units = nb.load(path).header.get_xyzt_units()
        assert units[0] == "mm", path.name


@pytest.mark.skipif(queries.find_validator() is None, reason="bids-validator-deno missing")
@pytest.mark.parametrize("which", ["one", "two"])
def test_derivatives_validate(runs, which):
    proc = subprocess.run([queries.find_validator(), "--ignoreWarnings", str(runs[which])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_absent_template_exits_64(runs, tmp_path, capsys):
    code = main([str(runs["bids"]), str(tmp_path / "out"), "participant", "-w",
                 str(tmp_path / "work"), "--output-spaces", "MNI152NLin2009cAsym:res-2", "T1w"])
    err = capsys.readouterr().err
    assert code == 64
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "MNI152NLin2009cAsym at res-2 is not available" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "sub-01").exists()

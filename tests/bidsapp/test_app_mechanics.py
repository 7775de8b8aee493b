# SPDX-License-Identifier: Apache-2.0
"""The whole app on the tiny generated dataset, with the fast stand-in workflow.

This checks the BIDS-App's own work (queries, graph, sink, names, sidecars, reports,
group level, reruns, validation) in seconds; the registration accuracy is checked by
``test_end_to_end.py`` with the real workflows.
"""

import json
import subprocess
import tomllib
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from niaffine.bidsapp import queries
from niaffine.bidsapp.run import main

from .conftest import install_fake_workflows

EXPECTED = [
    "dataset_description.json", "README.md", ".bidsignore", "sub-01.html",
    "sub-01/anat/sub-01_desc-preproc_T1w.nii.gz", "sub-01/anat/sub-01_desc-preproc_T1w.json",
    "sub-01/anat/sub-01_desc-brain_mask.nii.gz", "sub-01/anat/sub-01_desc-brain_mask.json",
    "sub-01/anat/sub-01_desc-brain_T1w.nii.gz",
    "sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.txt",
    "sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json",
    "sub-01/anat/sub-01_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.txt",
    "sub-01/anat/sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz",
    "sub-01/anat/sub-01_from-T2w_to-T1w_mode-image_xfm.txt",
    "sub-01/anat/sub-01_from-T2w_to-T1w_mode-image_xfm.json",
    "sub-01/anat/sub-01_from-T1w_to-T2w_mode-image_xfm.txt",
    "sub-01/anat/sub-01_desc-preproc_T2w.nii.gz", "sub-01/anat/sub-01_desc-preproc_T2w.json",
    "sub-01/anat/sub-01_space-MNI152NLin2009aSym_desc-preproc_T2w.nii.gz",
    "sub-01/func/sub-01_task-rest_from-bold_to-T1w_mode-image_xfm.txt",
    "sub-01/func/sub-01_task-rest_from-T1w_to-bold_mode-image_xfm.txt",
    "sub-01/func/sub-01_task-rest_space-T1w_boldref.nii.gz",
    "sub-01/func/sub-01_task-rest_space-MNI152NLin2009aSym_boldref.nii.gz",
    "sub-01/figures/sub-01_desc-brain_mask.svg",
    "sub-01/figures/sub-01_space-MNI152NLin2009aSym_T1w.svg",
    "sub-01/figures/sub-01_desc-coreg_T2w.svg",
    "sub-01/figures/sub-01_task-rest_desc-coreg_bold.svg",
]


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.suffix in (".gz", ".txt", ".json", ".svg")
            and "logs" not in p.parts and "group" not in p.parts}


@pytest.fixture(scope="module")
def app_run(tiny_bids, tmp_path_factory):
    """Participant level twice (same work dir) and the group level, once per module."""
    base = tmp_path_factory.mktemp("app")
    out, work = base / "out", base / "work"
    argv = [str(tiny_bids), str(out), "participant", "-w", str(work), "--plugin", "Linear",
            "--skip-bids-validation"]
    with pytest.MonkeyPatch.context() as mp:
        install_fake_workflows(mp)
        first = main(argv)
        snapshot = _snapshot(out)
        mtimes = {p: (out / p).stat().st_mtime_ns for p in snapshot}
        second = main(argv)
    group = main([str(tiny_bids), str(out), "group"])
    return {"out": out, "work": work, "codes": (first, second, group), "first": snapshot,
            "mtimes": mtimes}


def test_exit_codes(app_run):
    assert app_run["codes"] == (0, 0, 0)


@pytest.mark.parametrize("name", EXPECTED)
def test_expected_file(app_run, name):
    assert (app_run["out"] / name).is_file()


def test_dataset_description(app_run, tiny_bids):
    desc = json.loads((app_run["out"] / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "niaffine" and desc["GeneratedBy"][0]["Version"]
    assert desc["SourceDatasets"][0]["URL"] == tiny_bids.resolve().as_uri()


def test_sidecars_have_sources_and_metric(app_run):
    anat = app_run["out"] / "sub-01/anat"
    xfm = json.loads((anat / "sub-01_from-T2w_to-T1w_mode-image_xfm.json").read_text())
    assert xfm["Sources"] == ["bids:raw:sub-01/anat/sub-01_T2w.nii.gz",
                              "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert xfm["FinalMetric"] == -0.5 and xfm["DOF"] == 6
    tpl = json.loads((anat / "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json")
                     .read_text())
    assert tpl["DOF"] == 12 and tpl["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    img = json.loads((anat / "sub-01_desc-preproc_T2w.json").read_text())
    assert img["SpatialReference"] == "bids::sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"


def test_boldref_is_3d(app_run):
    img = nb.load(app_run["out"] / "sub-01/func/sub-01_task-rest_space-T1w_boldref.nii.gz")
    assert img.ndim == 3


def test_settings_recorded_as_toml(app_run, tiny_bids):
    logs = sorted((app_run["out"] / "logs").glob("niaffine-*.toml"))
    assert len(logs) == 2  # one per participant run
    settings = tomllib.loads(logs[0].read_text())["niaffine"]
    assert settings["bids_dir"] == str(tiny_bids.resolve())
    assert settings["output_spaces"] == ["T1w", "MNI152NLin2009aSym"]


def test_workflow_named_with_version(app_run):
    names = [p.name for p in app_run["work"].iterdir()]
    assert len(names) == 1 and names[0].startswith("niaffine_") and names[0].endswith("_wf")
    assert (app_run["work"] / names[0] / "sub_01_wf").is_dir()


def test_rerun_rewrites_identical_outputs(app_run):
    again = _snapshot(app_run["out"])
    assert again.keys() == app_run["first"].keys()
    assert [k for k in again if again[k] != app_run["first"][k]] == []
    # rewritten (the sink always runs), not left over
    rewritten = [p for p, t in app_run["mtimes"].items()
                 if (app_run["out"] / p).stat().st_mtime_ns > t]
    assert len(rewritten) == len(app_run["mtimes"])


def test_no_temporary_files_left(app_run):
    assert not [p for p in app_run["out"].rglob(".tmp-*")]


def test_group_outputs(app_run):
    tsv = (app_run["out"] / "group/registration_qc.tsv").read_text().splitlines()
    header = tsv[0].split("\t")
    assert header[:4] == ["subject", "session", "source", "target"]
    rows = [dict(zip(header, line.split("\t"))) for line in tsv[1:]]
    assert {(r["source"], r["target"]) for r in rows} == {
        ("T2w", "T1w"), ("task-rest:bold", "T1w"), ("T1w", "MNI152NLin2009aSym")}
    # the stand-in's "brain mask" is every non-zero voxel of the head's field of view
    assert {r["flags"] for r in rows} == {"mask_volume"}
    assert float(rows[0]["mask_volume_ml"]) > 2200
    index = (app_run["out"] / "group/index.html").read_text()
    assert "<svg" in index and "../sub-01.html" in index


def test_subject_report_links_figures(app_run):
    text = (app_run["out"] / "sub-01.html").read_text()
    assert 'data="sub-01/figures/sub-01_task-rest_desc-coreg_bold.svg"' in text
    assert text.index("desc-brain_mask.svg") < text.index("space-MNI152NLin2009aSym_T1w.svg") \
        < text.index("desc-coreg_T2w.svg")
    assert "T2w" in text and "MNI152NLin2009aSym" in text


def test_reports_only(app_run, tiny_bids):
    report = app_run["out"] / "sub-01.html"
    report.unlink()
    code = main([str(tiny_bids), str(app_run["out"]), "participant", "--reports-only",
                 "--skip-bids-validation"])
    assert code == 0 and report.is_file()


@pytest.mark.skipif(queries.find_validator() is None, reason="bids-validator-deno missing")
def test_derivatives_pass_bids_validator(app_run):
    proc = subprocess.run([queries.find_validator(), "--ignoreWarnings", str(app_run["out"])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.skipif(queries.find_validator() is None, reason="bids-validator-deno missing")
def test_raw_dataset_passes_bids_validator(tiny_bids):
    proc = subprocess.run([queries.find_validator(), "--ignoreWarnings", str(tiny_bids)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_input_dataset_untouched(app_run, tiny_bids):
    names = sorted(p.relative_to(tiny_bids).as_posix() for p in tiny_bids.rglob("*"))
    assert not [n for n in names if "derivatives" in n or n.startswith("work")]
    assert np.asarray(nb.load(tiny_bids / "sub-01/anat/sub-01_T1w.nii.gz").dataobj).any()

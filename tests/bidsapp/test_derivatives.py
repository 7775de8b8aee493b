# SPDX-License-Identifier: Apache-2.0
"""Atomic writes, concurrent jobs on one output folder, names, settings, QC flags."""

import json
import multiprocessing as mp
import tomllib
from pathlib import Path

import pytest

from niaffine.bidsapp import derivatives as drv
from niaffine.bidsapp.names import build_name, source_entities, space_entities
from niaffine.bidsapp.parser import build_parser
from niaffine.bidsapp.reports import flag_rows
from niaffine.bidsapp.settings import from_args, template_label


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub-01_desc-brain_mask.nii.gz"
    with pytest.raises(KeyboardInterrupt), drv.atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_old_file(tmp_path):
    target = drv.write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError), drv.atomic_path(target) as tmp:
        tmp.write_text("new but incomplete")
        raise RuntimeError
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_copy_compresses_nifti(tmp_path):
    import nibabel as nb
    import numpy as np

    src = tmp_path / "in.nii"
    nb.save(nb.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)), src)
    dst = drv.copy_file(src, tmp_path / "out" / "x.nii.gz")
    assert dst.read_bytes()[:2] == b"\x1f\x8b"
    assert np.array_equal(nb.load(dst).get_fdata(), nb.load(src).get_fdata())


def _job(args):
    out, bids, extra, n = args
    drv.BIDSIGNORE = drv.BIDSIGNORE + (extra,)  # each job brings its own pattern
    for i in range(n):
        drv.init_output_dir(drv.OutputTree(Path(out), Path(bids)))
        drv.write_text(Path(out) / f"sub-{extra}" / f"file{i}.txt", f"{extra} {i}")
    return extra


def test_concurrent_jobs_lose_nothing(tmp_path):
    out, bids = tmp_path / "out", tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    extras = [f"job{i}" for i in range(6)]
    with mp.get_context("fork").Pool(6) as pool:
        pool.map(_job, [(out, bids, e, 20) for e in extras])
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert set(extras) <= set(ignore) and set(drv.BIDSIGNORE) <= set(ignore)
    assert len(ignore) == len(set(ignore))
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == \
        "derivative"
    for e in extras:
        assert len(list((out / f"sub-{e}").iterdir())) == 20
    assert not list(out.rglob(".tmp-*"))


def test_names_roundtrip():
    ents = source_entities("sub-01_ses-A_acq-fast_run-2_T2w.nii.gz", "01", "A")
    assert build_name(ents | space_entities("T1w") | {"desc": "preproc"}, "T2w", ".nii.gz") \
        == "sub-01_ses-A_acq-fast_run-2_space-T1w_desc-preproc_T2w.nii.gz"
    with pytest.raises(ValueError):
        drv.parse_name("notbids.nii.gz")
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        build_name({"sub": "01", "colour": "red"}, "T1w", ".nii.gz")


@pytest.mark.parametrize(("space", "expected"), [
    ("MNI152NLin2009aSym", "sub-01_task-rest_run-1_space-MNI152NLin2009aSym_desc-preproc_bold"),
    ({"space": "MNI152NLin6Asym", "res": "2"},
     "sub-01_task-rest_run-1_space-MNI152NLin6Asym_res-2_desc-preproc_bold"),
    ({"space": "MNIInfant", "cohort": "1"},
     "sub-01_task-rest_run-1_space-MNIInfant_cohort-1_desc-preproc_bold"),
])
def test_template_space_entities(space, expected):
    """A template space is an entities dict (or an object with ``entities()``)."""
    ents = source_entities("sub-01_task-rest_run-1_bold.nii.gz", "01", None)

    class Space:
        def entities(self):
            return space_entities(space)

    for given in (space, Space()):
        name = build_name({"desc": "preproc"} | space_entities(given) | ents, "bold", ".nii.gz")
        assert name == expected + ".nii.gz"


def test_settings_frozen_and_toml(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text("{}")
    args = build_parser().parse_args([str(bids), str(tmp_path / "out"), "participant", "-w",
                                      str(tmp_path / "w"), "--participant-label", "01",
                                      "--device", "cpu", "--bids-filter-file",
                                      str(_filters(tmp_path))])
    settings = from_args(args)
    with pytest.raises(AttributeError):
        settings.dof = 6
    data = tomllib.loads(settings.to_toml())["niaffine"]
    assert data["participant_label"] == ["01"] and data["device"] == "cpu"
    assert json.loads(data["bids_filters"]) == {"bold": {"task": "rest"}}
    assert data["template_space"] == "MNI152NLin2009aSym"


def _filters(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('{"bold": {"task": "rest"}}')
    return path


def test_user_template_space(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text("{}")
    tpl = tmp_path / "tpl-Custom_res-1_T1w.nii.gz"
    tpl.write_bytes(b"")
    args = build_parser().parse_args([str(bids), str(tmp_path / "out"), "participant", "-w",
                                      str(tmp_path / "w"), "--device", "cpu",
                                      "--output-spaces", "T1w", str(tpl)])
    settings = from_args(args)
    assert settings.template_space == "Custom" and settings.template == tpl
    assert settings.output_spaces == ("T1w", "Custom")
    assert template_label(Path("a/b/brain.nii.gz")) == "brain"


def _row(subject, metric, volume=1400.0, source="T2w"):
    return {"subject": subject, "session": "n/a", "source": source, "target": "T1w",
            "final_metric": metric, "mask_volume_ml": volume}


def test_flags_spot_the_failed_subject():
    rows = [_row(f"{i:02d}", -0.50 + 0.01 * (i % 3)) for i in range(20)]
    rows.append(_row("bad", -0.05))
    rows.append(_row("tiny", -0.5, volume=300.0))
    rows.append(_row("nometric", None))
    rows.append(dict(_row("collapsed", -0.5), zoom_min=0.9, zoom_max=4.2))
    rows.append(dict(_row("flipped", -0.5), zoom_min=0.9, zoom_max=1.1, reflection=True))
    flags = {r["subject"]: r["flags"] for r in flag_rows(rows)}
    assert flags["bad"] == "metric_outlier"
    assert flags["tiny"] == "mask_volume"
    assert flags["nometric"] == "no_metric"
    assert flags["collapsed"] == "implausible_scale"
    assert flags["flipped"] == "reflection"
    assert sum(f != "n/a" for f in flags.values()) == 5


def test_motion_qc_flags(tmp_path):
    """Mean FD > 0.5 mm or largest FD > 3 mm flags a run (group/motion_qc.tsv)."""
    from niaffine.bidsapp.motion_qc import collect_motion, write_motion_outputs

    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    for run, fd in (("1", [0.1, 0.2, 0.3]), ("2", [0.9, 0.8, 0.7]), ("3", [0.05] * 9 + [3.5])):
        lines = ["framewise_displacement\ttrans_x", "n/a\t0"] + [f"{v}\t0" for v in fd]
        (func / f"sub-01_task-rest_run-{run}_desc-confounds_timeseries.tsv").write_text(
            "\n".join(lines) + "\n")
    rows = collect_motion(tmp_path)
    assert [r["flags"] for r in rows] == ["n/a", "high_mean_fd", "high_max_fd"]
    assert rows[0]["run"] == "task-rest_run-1" and rows[0]["volumes"] == 4
    assert abs(rows[1]["mean_fd"] - 0.8) < 1e-9 and rows[2]["max_fd"] == 3.5
    html = "".join(write_motion_outputs(drv.OutputTree(tmp_path, tmp_path / "bids")))
    assert "2 flagged" in html
    table = (tmp_path / "group" / "motion_qc.tsv").read_text().splitlines()
    assert len(table) == 4 and "\t0.8\t" in table[2]


def test_series_names_per_space(tmp_path):
    """fMRIPrep's names: ``res-2`` where the space has it (the series lie on that grid),
    none for a space without a resolution (the series' own voxel size), and no ``space``
    at all for ``func`` (the boldref's grid)."""
    import nibabel as nb
    import numpy as np

    from niaffine.bidsapp.series_sink import sink_series
    from niaffine.bidsapp.sink import Writer

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    files = {}
    for role, shape in (("reference", (4, 4, 4)), ("reference_mask", (4, 4, 4)),
                        ("series_t1w", (4, 4, 4, 3)), ("series_func", (4, 4, 4, 3)),
                        ("series_template", (4, 4, 4, 3)), ("reference_template", (4, 4, 4))):
        files[role] = str(work / f"{role}.nii.gz")
        nb.save(nb.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), files[role])
    files["hmc_xfm"] = str(work / "hmc.txt")
    Path(files["hmc_xfm"]).write_text("#Insight Transform File V1.0\n")
    writer = Writer(drv.OutputTree(out, tmp_path / "bids"), tmp_path / "bids")
    image = {"path": str(tmp_path / "bids/sub-01/func/sub-01_task-rest_run-1_bold.nii.gz"),
             "suffix": "bold", "metadata": {"RepetitionTime": 2.5, "TaskName": "rest"}}
    ents = source_entities(image["path"], "01", None)
    spaces = [{"entities": {"space": "MNI152NLin6Asym", "res": "2"},
               "spatial_reference": "MNI152NLin6Asym",
               "series_template": files["series_template"],
               "reference_template": files["reference_template"]},
              {"entities": {"space": "MNI152NLin2009aSym"},
               "spatial_reference": "MNI152NLin2009aSym",
               "series_template": files["series_template"]}]
    sink_series(writer, out / "sub-01" / "func", ents, image, files, t1w="T1w.nii.gz",
                t1w_uri="bids::t1w", spaces=spaces)
    names = sorted(Path(p).name for p in writer.written)
    stem = "sub-01_task-rest_run-1"
    assert f"{stem}_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz" in names
    assert f"{stem}_space-MNI152NLin6Asym_res-2_boldref.nii.gz" in names
    assert f"{stem}_space-MNI152NLin2009aSym_desc-preproc_bold.nii.gz" in names
    assert f"{stem}_from-orig_to-boldref_mode-image_desc-hmc_xfm.txt" in names
    assert f"{stem}_desc-preproc_bold.nii.gz" in names  # func
    assert f"{stem}_desc-brain_mask.nii.gz" in names
    func = json.loads((out / "sub-01" / "func" / f"{stem}_desc-preproc_bold.json").read_text())
    assert func["SpatialReference"] == f"bids::sub-01/func/{stem}_desc-hmc_boldref.nii.gz"
    series = nb.load(out / "sub-01" / "func" / f"{stem}_space-T1w_desc-preproc_bold.nii.gz")
    assert series.header.get_xyzt_units() == ("mm", "sec")
    assert np.isclose(series.header.get_zooms()[3], 2.5)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"Name": "x", "BIDSVersion": "1.8.0"}, None),
    ({"Name": "x", "BIDSVersion": "1.8.0", "DatasetVersion": "2.1"}, "2.1"),
    ({"Name": "x", "BIDSVersion": "1.8.0", "DatasetDOI": "doi:10.1/x"}, None),
])
def test_source_dataset_version_is_never_the_bids_version(tmp_path, raw, expected):
    """``SourceDatasets[0].Version`` is the raw dataset's own version, or absent."""
    (tmp_path / "dataset_description.json").write_text(json.dumps(raw))
    source = drv.dataset_description(tmp_path)["SourceDatasets"][0]
    assert source.get("Version") == expected
    assert source["URL"] == tmp_path.resolve().as_uri()


def test_readme_written_once_and_user_edits_kept(tmp_path):
    """BIDS recommends a README (validator README_FILE_MISSING); a user's own is kept."""
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.8.0"}))
    tree = drv.OutputTree(out, bids)
    drv.init_output_dir(tree)
    text = (out / "README.md").read_text()
    assert text.startswith("# niaffine derivatives") and bids.resolve().as_uri() in text
    (out / "README.md").write_text("my notes\n")
    drv.init_output_dir(tree)
    assert (out / "README.md").read_text() == "my notes\n"


def test_transform_sidecar_has_iterations(tmp_path):
    """The run facts' ``iterations_total`` is the sidecar's ``Iterations``."""
    from niaffine.bidsapp.sink import Writer

    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"metric": "mi", "final_metric": -0.5, "dof": 6,
                                 "iterations_total": 42, "iterations_per_level": [30, 12],
                                 "elapsed_s": 1.5}))
    xfm = tmp_path / "xfm.txt"
    xfm.write_text("#Insight Transform File V1.0\n")
    out = tmp_path / "out"
    writer = Writer(drv.OutputTree(out, tmp_path / "bids"), tmp_path / "bids")
    from niaffine.bidsapp.sink import load_facts

    writer.put(xfm, out / "sub-01" / "anat", {"sub": "01", "from": "T2w", "to": "T1w",
                                             "mode": "image"}, "xfm", ".txt",
               writer.sidecar([], load_facts(facts)))
    sidecar = json.loads(
        (out / "sub-01" / "anat" / "sub-01_from-T2w_to-T1w_mode-image_xfm.json").read_text())
    assert (sidecar["Iterations"], sidecar["DOF"], sidecar["Metric"]) == (42, 6, "mi")

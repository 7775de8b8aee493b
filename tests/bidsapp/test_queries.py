# SPDX-License-Identifier: Apache-2.0
"""BIDS queries: subjects, sessions, image types, filters, the pybids database."""

import json

import nibabel as nb
import numpy as np
import pytest

from niaffine.bidsapp import errors, queries

from .conftest import write_skeleton


def _collect(root, **kwargs):
    layout = queries.load_layout(root, kwargs.pop("database_dir", None))
    return queries.collect_subjects(layout, **kwargs)


def test_sessions_and_images(tmp_path):
    root = write_skeleton(tmp_path / "bids", subjects=("01", "02"), sessions=["A", "B"])
    subjects, skipped = _collect(root)
    assert skipped == []
    assert [(s["subject"], s["session"]) for s in subjects] == [
        ("01", "A"), ("01", "B"), ("02", "A"), ("02", "B")]
    assert subjects[0]["t1w"].endswith("sub-01_ses-A_T1w.nii.gz")
    assert [i["suffix"] for i in subjects[0]["images"]] == ["T2w"]
    subjects, _ = _collect(root, participant_label=("02",), session_label=("B",))
    assert [(s["subject"], s["session"]) for s in subjects] == [("02", "B")]


def test_modalities_and_dwi_bvals(tmp_path):
    root = write_skeleton(tmp_path / "bids")
    dwi = root / "sub-01" / "dwi"
    dwi.mkdir()
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4, 3), np.int16), np.eye(4)),
            dwi / "sub-01_dwi.nii.gz")
    (dwi / "sub-01_dwi.bval").write_text("0 1000 1000\n")
    (dwi / "sub-01_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
    subjects, _ = _collect(root)
    images = {i["suffix"]: i for i in subjects[0]["images"]}
    assert set(images) == {"T2w", "dwi"}
    assert images["dwi"]["bvals"].endswith("sub-01_dwi.bval")
    subjects, _ = _collect(root, modalities=("dwi",))
    assert [i["suffix"] for i in subjects[0]["images"]] == ["dwi"]


def test_filters_and_no_t1w(tmp_path):
    root = write_skeleton(tmp_path / "bids", subjects=("01", "02"), no_t1w=("02",))
    subjects, skipped = _collect(root, bids_filters={"T2w": {"acquisition": None}})
    assert [i["suffix"] for i in subjects[0]["images"]] == ["T2w"]
    assert [str(s) for s in skipped] == ["sub-02: no T1w image found; skipped"]


def _add_bold(root, subject, task):
    func = root / f"sub-{subject}" / "func"
    func.mkdir(exist_ok=True)
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4, 3), np.int16), np.eye(4)),
            func / f"sub-{subject}_task-{task}_bold.nii.gz")


@pytest.mark.parametrize(("key", "query", "named"), [
    ("bold", {"task": "resting"}, "the bold filter {\"task\": \"resting\"} matches no bold"),
    ("t1w", {"acquisition": "mprage"}, "the t1w filter {\"acquisition\": \"mprage\"} matches "
                                       "no T1w image of the selected subjects (2 T1w"),
    ("t2w", {"acquisition": "none"}, "matches no T2w image"),
])
def test_a_filter_that_matches_nothing_exits_18(tmp_path, key, query, named):
    """As the docs promise (and as fMRIPrep refuses a BOLD filter that finds no BOLD)."""
    root = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    _add_bold(root, "01", "rest")
    with pytest.raises(errors.BidsAppError) as exc:
        _collect(root, bids_filters={key: query})
    assert exc.value.code == errors.EXIT_NO_MATCH == 18
    assert named in str(exc.value) and str(exc.value).startswith("--bids-filter-file:")


def test_a_filter_that_matches_some_subjects(tmp_path, caplog):
    """Matching in one subject is a selection; a T1w filter's misses are skips naming it."""
    root = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    _add_bold(root, "01", "rest")
    subjects, skipped = _collect(root, bids_filters={"bold": {"task": "rest"}})
    assert [[i["suffix"] for i in s["images"]] for s in subjects] == [["T2w", "bold"], ["T2w"]]
    anat = root / "sub-02" / "anat"
    (anat / "sub-02_T1w.nii.gz").rename(anat / "sub-02_acq-fast_T1w.nii.gz")
    subjects, skipped = _collect(root, bids_filters={"t1w": {"acquisition": "fast"}})
    assert [s["subject"] for s in subjects] == ["02"]
    assert [str(s) for s in skipped] == ["sub-01: no T1w image matches the t1w filter; skipped"]
    subjects, _ = _collect(root, bids_filters={"bold": {"task": "other"}}, modalities=("T2w",))
    assert "the bold filter is not used" in caplog.text


def test_database_dir_is_reused(tmp_path):
    root = write_skeleton(tmp_path / "bids")
    db = tmp_path / "db"
    first, _ = _collect(root, database_dir=db)
    assert any(db.iterdir())
    second, _ = _collect(root, database_dir=db)
    assert first == second


def test_empty_dataset(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.10.0"}))
    with pytest.raises(errors.BidsAppError, match="no subjects") as exc:
        _collect(root)
    assert exc.value.code == errors.EXIT_NO_MATCH

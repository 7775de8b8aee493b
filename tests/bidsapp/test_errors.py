# SPDX-License-Identifier: Apache-2.0
"""Every documented error: its exit code, a message naming the problem, bids_dir untouched.

All of these fail before any registration runs (or use the fast stand-in workflow).
"""

import gzip
import json
import shutil

import nibabel as nb
import pytest

from niaffine.bidsapp import errors, queries
from niaffine.bidsapp.run import main

from .conftest import install_fake_workflows, start_app, write_skeleton


def listing(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*"))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "out", tmp_path / "work"


def test_missing_dataset_description(tmp_path, dirs, capsys):
    (tmp_path / "bids" / "sub-01").mkdir(parents=True)
    code, text = run(capsys, tmp_path / "bids", dirs[0], "participant", "-w", dirs[1])
    assert code == errors.EXIT_BIDS_INVALID == 16
    assert "dataset_description.json is missing" in text


def test_bids_dir_does_not_exist(tmp_path, dirs, capsys):
    code, text = run(capsys, tmp_path / "nope", dirs[0], "participant")
    assert code == 16 and "does not exist" in text


@pytest.mark.skipif(queries.find_validator() is None, reason="bids-validator-deno missing")
def test_validation_failure(skeleton, dirs, capsys):
    (skeleton / "sub-01" / "anat" / "sub-01_whatever.nii.gz").write_bytes(b"x")
    before = listing(skeleton)
    code, text = run(capsys, skeleton, dirs[0], "participant", "-w", dirs[1])
    assert code == 16 and "BIDS validation failed" in text
    assert listing(skeleton) == before


def test_unknown_analysis_level(skeleton, dirs, capsys):
    code, text = run(capsys, skeleton, dirs[0], "subject")
    assert code == errors.EXIT_ANALYSIS_LEVEL == 17
    assert "unknown analysis level 'subject'" in text


def test_missing_positional_is_argparse_2(skeleton, capsys):
    code, text = run(capsys, skeleton)
    assert code == 2 and "required" in text


def test_participant_label_matches_nothing(skeleton, dirs, capsys):
    code, text = run(capsys, skeleton, dirs[0], "participant", "-w", dirs[1],
                     "--skip-bids-validation", "--participant-label", "01", "sub-07")
    assert code == errors.EXIT_NO_MATCH == 18
    assert "sub-07" in text and "01" in text


def test_session_label_matches_nothing(tmp_path, dirs, capsys):
    bids = write_skeleton(tmp_path / "bids", sessions=["A", "B"])
    code, text = run(capsys, bids, dirs[0], "participant", "-w", dirs[1],
                     "--skip-bids-validation", "--session-label", "C")
    assert code == 18 and "ses-C" in text


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_bids_dir_refused(skeleton, tmp_path, capsys, where):
    out = skeleton if where == "same" else skeleton / "results"
    before = listing(skeleton)
    code, text = run(capsys, skeleton, out, "participant", "-w", tmp_path / "work")
    assert code == errors.EXIT_USAGE == 64
    assert "bids_dir" in text
    assert listing(skeleton) == before


def test_work_dir_in_bids_dir_refused(skeleton, dirs, capsys):
    before = listing(skeleton)
    code, text = run(capsys, skeleton, dirs[0], "participant", "-w", skeleton / "work")
    assert code == 64 and "work dir" in text
    assert listing(skeleton) == before


def test_unwritable_output(skeleton, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, text = run(capsys, skeleton, blocker / "out", "participant", "-w", tmp_path / "w")
    assert code == errors.EXIT_CANT_CREATE == 73
    assert "cannot write to output_dir" in text and str(blocker) in text


def test_cuda_unavailable(skeleton, dirs, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, text = run(capsys, skeleton, dirs[0], "participant", "-w", dirs[1], "--device",
                     "cuda")
    assert code == errors.EXIT_UNAVAILABLE == 69
    assert "CUDA is not available" in text and "--device cpu" in text


def test_unknown_output_space(skeleton, dirs, capsys):
    code, text = run(capsys, skeleton, dirs[0], "participant", "-w", dirs[1],
                     "--output-spaces", "T1w", "Talairach")
    assert code == 64 and "Talairach" in text


def test_bad_plugin(skeleton, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch)
    code, text = run(capsys, skeleton, dirs[0], "participant", "-w", dirs[1],
                     "--skip-bids-validation", "--plugin", "NoSuchPlugin")
    assert code == 64 and "NoSuchPlugin" in text


@pytest.mark.parametrize("damage", ["truncated_gz", "garbage"])
def test_corrupt_nifti_named(skeleton, dirs, capsys, damage):
    bad = skeleton / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    raw = bad.read_bytes()
    if damage == "truncated_gz":
        bad.write_bytes(raw[: len(raw) // 2])
    else:
        bad.write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    code, text = run(capsys, skeleton, dirs[0], "participant", "-w", dirs[1],
                     "--skip-bids-validation", "--participant-label", "01")
    assert code == errors.EXIT_NO_DATA == 65
    assert "sub-01_T1w.nii.gz" in text and "corrupt or truncated" in text


def test_truncated_uncompressed_nifti(tmp_path):
    import nibabel as nb
    import numpy as np

    path = tmp_path / "sub-01_T1w.nii"
    nb.save(nb.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), path)
    queries.check_nifti(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(errors.BidsAppError, match="truncated") as exc:
        queries.check_nifti(path)
    assert exc.value.code == 65


def test_subject_without_t1w_skipped_others_run(tmp_path, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"), no_t1w=("02",))
    before = listing(bids)
    code, text = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear",
                     "--skip-bids-validation", "--output-spaces", "T1w")
    assert code == errors.EXIT_FAILED == 1
    assert "sub-02" in text and "no T1w" in text
    assert (dirs[0] / "sub-01" / "anat" / "sub-01_from-T2w_to-T1w_mode-image_xfm.txt").is_file()
    assert "no T1w" in (dirs[0] / "sub-02.html").read_text()
    assert listing(bids) == before
    code, text = run(capsys, bids, dirs[0], "group")
    assert code == 0 and "no outputs for sub-02" in text
    rows = (dirs[0] / "group" / "registration_qc.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows if "missing" in r] == ["02"]
    assert "1 subject without outputs" in (dirs[0] / "group" / "index.html").read_text()


def test_failing_subject_reported_others_finish(tmp_path, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch, fail_subject="02")
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02", "03"))
    code, text = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear",
                     "--skip-bids-validation", "--output-spaces", "T1w")
    assert code == 1
    assert "FAILED sub-02" in text and "2 subject(s) processed" in text
    for ok in ("01", "03"):
        assert (dirs[0] / f"sub-{ok}.html").is_file()
    report = (dirs[0] / "sub-02.html").read_text()
    assert "simulated failure of sub-02" in report and "crash file" in report
    assert list((dirs[0] / "logs").glob("crash-*.txt"))


def test_output_under_derivatives_allowed(tmp_path, capsys, monkeypatch):
    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids")
    before = listing(bids)
    out = bids / "derivatives" / "niaffine"
    code, _ = run(capsys, bids, out, "participant", "-w", tmp_path / "work", "--plugin",
                  "Linear", "--skip-bids-validation", "--output-spaces", "T1w")
    assert code == 0
    assert (out / "sub-01.html").is_file()
    outside = [p for p, _ in listing(bids) if not p.startswith("derivatives")]
    assert outside == [p for p, _ in before]


def test_bids_filter_file_selects(tmp_path, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids")
    anat = bids / "sub-01" / "anat"
    (anat / "sub-01_T2w.nii.gz").rename(anat / "sub-01_acq-b_T2w.nii.gz")
    nb.save(nb.load(anat / "sub-01_acq-b_T2w.nii.gz"), anat / "sub-01_acq-a_T2w.nii.gz")
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t2w": {"acquisition": "a"}}))
    code, _ = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear",
                  "--skip-bids-validation", "--output-spaces", "T1w", "--bids-filter-file",
                  filters)
    assert code == 0
    assert [p.name for p in dirs[0].rglob("*from-T2w*.txt")] == [
        "sub-01_acq-a_from-T2w_to-T1w_mode-image_xfm.txt"]
    shutil.rmtree(dirs[0])


@pytest.mark.parametrize("key", ["t1w", "bold"])
def test_a_filter_that_matches_nothing_exits_18_writing_nothing(tmp_path, dirs, capsys,
                                                                monkeypatch, key):
    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids")
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({key: {"acquisition": "nothing"}}))
    code, text = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear",
                     "--skip-bids-validation", "--output-spaces", "T1w", "--bids-filter-file",
                     filters)
    assert code == errors.EXIT_NO_MATCH == 18, text
    assert f"the {key} filter" in text and "matches no" in text
    assert not dirs[0].exists() and not dirs[1].exists()


def test_two_jobs_share_output_dir(tmp_path):
    """Two participant jobs at once (one per subject) into one output_dir lose nothing."""
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    out = tmp_path / "out"
    jobs = [start_app(bids, out, "participant", "-w", tmp_path / f"work{sub}", "--plugin",
                      "Linear", "--skip-bids-validation", "--participant-label", sub,
                      "--device", "cpu")
            for sub in ("01", "02")]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    for sub in ("01", "02"):
        assert (out / f"sub-{sub}.html").is_file()
        assert len(list((out / f"sub-{sub}").rglob("*_xfm.txt"))) == 4
    assert len(list((out / "logs").glob("niaffine-*.toml"))) == 2
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == \
        "derivative"
    assert not list(out.rglob(".tmp-*"))


def test_bad_input_found_during_run_exits_65(tmp_path, dirs, capsys, monkeypatch):
    """An InputError raised inside a node (e.g. NaNs in the data) ends with 65, naming the file."""
    install_fake_workflows(monkeypatch, fail_input="02")
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    code, text = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear",
                     "--skip-bids-validation", "--output-spaces", "T1w")
    assert code == errors.EXIT_NO_DATA
    assert "sub-02_T1w.nii.gz holds non-finite values" in text
    assert (dirs[0] / "sub-01.html").is_file()
    assert "non-finite" in (dirs[0] / "sub-02.html").read_text()


def test_user_template_space_names(tmp_path, dirs, capsys, monkeypatch):
    """A template given by path names the space after its ``tpl-<label>``."""
    import nibabel as nb
    import numpy as np

    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids")
    tpl = tmp_path / "tpl-Custom_res-2_T1w.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), tpl)
    code, _ = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear",
                  "--skip-bids-validation", "--output-spaces", "T1w", tpl)
    assert code == 0
    anat = dirs[0] / "sub-01" / "anat"
    assert (anat / "sub-01_from-T1w_to-Custom_mode-image_xfm.txt").is_file()
    assert (anat / "sub-01_space-Custom_desc-preproc_T2w.nii.gz").is_file()


def test_stop_on_first_crash(tmp_path, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch, fail_subject="01")
    bids = write_skeleton(tmp_path / "bids", subjects=("01", "02"))
    code, text = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--plugin", "Linear",
                     "--skip-bids-validation", "--output-spaces", "T1w",
                     "--stop-on-first-crash")
    assert code == 1
    assert "FAILED sub-01" in text and "simulated failure of sub-01" in \
        (dirs[0] / "sub-01.html").read_text()
    assert not (dirs[0] / "sub-02").exists()  # nothing ran after the first crash


def test_use_plugin_file(tmp_path, dirs, capsys, monkeypatch):
    install_fake_workflows(monkeypatch)
    bids = write_skeleton(tmp_path / "bids")
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    code, _ = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--use-plugin", plugin,
                  "--skip-bids-validation", "--output-spaces", "T1w", "-v")
    assert code == 0 and (dirs[0] / "sub-01.html").is_file()
    code, text = run(capsys, bids, dirs[0], "participant", "-w", dirs[1], "--use-plugin",
                     tmp_path / "missing.yml")
    assert code == 64 and "missing.yml" in text

# SPDX-License-Identifier: Apache-2.0
"""Settings from a command line: output spaces (TemplateFlow, offline) and fMRIPrep's flags."""

from __future__ import annotations

import logging
import tomllib

import pytest

from niaffine.bidsapp import errors
from niaffine.bidsapp.parser import build_parser
from niaffine.bidsapp.settings import from_args
from niaffine.spaces import Space
from tests.templateflow_home import TPL, block_network, make_templateflow_home


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    block_network(monkeypatch)


@pytest.fixture
def bids(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text("{}")
    return root


def settings_for(bids, tmp_path, *argv, level="participant"):
    args = build_parser().parse_args([str(bids), str(tmp_path / "out"), level, "-w",
                                      str(tmp_path / "work"), "--device", "cpu", *argv])
    return from_args(args)


def test_typical_fmriprep_command_line(bids, tmp_path, caplog):
    """What a script written for fMRIPrep passes runs, with one notice for the unused flags."""
    with caplog.at_level(logging.WARNING, logger="niaffine.bidsapp"):
        settings = settings_for(
            bids, tmp_path, "--participant-label", "01", "--fs-license-file", "/x",
            "--notrack", "--skip_bids_validator", "--output-spaces", "MNI152NLin2009aSym",
            "T1w", "--nthreads", "2", "--omp-nthreads", "1", "--stop-on-first-crash")
    assert settings.participant_label == ("01",) and settings.skip_bids_validation
    assert (settings.nprocs, settings.omp_nthreads, settings.stop_on_first_crash) == (2, 1, True)
    assert settings.spaces == (Space("T1w", kind="nonstandard"), Space("MNI152NLin2009aSym"))
    assert settings.output_spaces == ("T1w", "MNI152NLin2009aSym")
    assert (settings.template_space, settings.template) == ("MNI152NLin2009aSym", None)
    assert settings.ignored_options == ("--fs-license-file",)
    notices = [r.getMessage() for r in caplog.records]
    assert notices == ["fMRIPrep options accepted and ignored (niaffine has no use for them): "
                       "--fs-license-file"]


def test_templateflow_spaces(bids, tmp_path, monkeypatch):
    home = make_templateflow_home(tmp_path / "tf")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    settings = settings_for(bids, tmp_path, "--output-spaces", f"{TPL}:res-2", "func", "anat",
                            "MNI152NLin2009aSym")
    assert [s.label for s in settings.spaces] == ["T1w", f"{TPL}:res-2", "func",
                                                  "MNI152NLin2009aSym"]
    assert [s.entities() for s in settings.spaces[1:3]] == [{"space": TPL, "res": "2"}, {}]
    # the single-template view the workflows take today: the first template, by file
    folder = home / f"tpl-{TPL}"
    assert settings.output_spaces == ("T1w", TPL) and settings.template_space == TPL
    assert settings.template == folder / f"tpl-{TPL}_res-02_T1w.nii.gz"
    assert settings.template_mask == folder / f"tpl-{TPL}_res-02_desc-brain_mask.nii.gz"
    record = tomllib.loads(settings.to_toml())["niaffine"]
    assert record["spaces"] == ["T1w", f"{TPL}:res-2", "func", "MNI152NLin2009aSym"]


@pytest.mark.parametrize(("spaces", "message"), [
    ([f"{TPL}:res-1"], f"template {TPL} at res-1 is not available in TEMPLATEFLOW_HOME="),
    (["MNI152NLin2009cAsym:res-2"], "template MNI152NLin2009cAsym at res-2 is not available"),
    (["fsaverage"], "surface spaces need FreeSurfer"),
    (["MNI152NLin6Asym:den-10k"], "unknown modifier"),
])
def test_unavailable_or_bad_space_exits_64(bids, tmp_path, monkeypatch, spaces, message):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(make_templateflow_home(tmp_path / "tf")))
    with pytest.raises(errors.BidsAppError, match=message) as exc:
        settings_for(bids, tmp_path, "--output-spaces", *spaces)
    assert exc.value.code == errors.EXIT_USAGE and "\n" not in str(exc.value)


def test_group_level_does_not_need_the_template(bids, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "none"))
    settings = settings_for(bids, tmp_path, "--output-spaces", f"{TPL}:res-2", level="group")
    assert settings.template_space == TPL


def test_selection_flags(bids, tmp_path):
    settings = settings_for(bids, tmp_path, "--ignore", "t2w", "slicetiming", "-t", "rest",
                            "--output-layout", "legacy", "--dof-coreg", "6")
    assert settings.modalities == ("FLAIR", "PDw", "bold", "dwi")
    assert settings.bids_filters == {"bold": {"task": "rest"}}
    assert settings.ignored_options == ("--output-layout legacy",)
    assert settings_for(bids, tmp_path, "--anat-only").modalities == ("T2w", "FLAIR", "PDw")


def test_task_id_conflicting_with_filters(bids, tmp_path):
    filters = tmp_path / "f.json"
    filters.write_text('{"bold": {"task": "nback"}}')
    with pytest.raises(errors.BidsAppError, match="conflicts") as exc:
        settings_for(bids, tmp_path, "--bids-filter-file", str(filters), "--task-id", "rest")
    assert exc.value.code == errors.EXIT_USAGE


def test_boilerplate_only_is_refused(bids, tmp_path):
    with pytest.raises(errors.BidsAppError, match="no citation boilerplate") as exc:
        settings_for(bids, tmp_path, "--boilerplate-only")
    assert exc.value.code == errors.EXIT_USAGE


def test_app_with_a_templateflow_space(tmp_path, capsys, monkeypatch):
    """The whole participant level (stand-in workflow) on a TemplateFlow space, offline."""
    from tests.bidsapp.conftest import install_fake_workflows, run_app, write_skeleton

    install_fake_workflows(monkeypatch)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(make_templateflow_home(tmp_path / "tf")))
    bids = write_skeleton(tmp_path / "bids")
    out, work = tmp_path / "out", tmp_path / "work"
    code, text = run_app(capsys, bids, out, "participant", "-w", work, "--plugin", "Linear",
                         "--skip_bids_validator", "--notrack", "--fs-license-file", "/x",
                         "--output-spaces", f"{TPL}:res-2", "T1w")
    assert code == 0, text
    assert "fMRIPrep options accepted and ignored (niaffine has no use for them): " \
           "--fs-license-file" in text
    anat = out / "sub-01" / "anat"
    assert (anat / f"sub-01_from-T1w_to-{TPL}_mode-image_xfm.txt").is_file()
    assert (anat / f"sub-01_space-{TPL}_res-2_desc-preproc_T2w.nii.gz").is_file()


def test_app_with_an_absent_template_exits_64_before_writing(tmp_path, capsys, monkeypatch):
    from tests.bidsapp.conftest import run_app, write_skeleton

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(make_templateflow_home(tmp_path / "tf")))
    bids = write_skeleton(tmp_path / "bids")
    out, work = tmp_path / "out", tmp_path / "work"
    code, text = run_app(capsys, bids, out, "participant", "-w", work, "--device", "cpu",
                         "--output-spaces", "MNI152NLin2009cAsym:res-2")
    assert code == errors.EXIT_USAGE
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "template MNI152NLin2009cAsym at res-2 is not available" in lines[0]
    assert "tf.get('MNI152NLin2009cAsym', resolution=2" in lines[0]
    assert not out.exists() and not work.exists()


@pytest.mark.parametrize(("argv", "seconds"), [([], 7.0), (["--progress-interval", "2"], 2.0)])
def test_progress_interval_flag_wins_over_the_environment(bids, tmp_path, monkeypatch, argv,
                                                          seconds):
    """``--progress-interval`` reaches the run as ``Settings.progress_interval_s``; without
    it, ``$NIAFFINE_PROGRESS_INTERVAL`` sets the interval."""
    from niaffine.bidsapp import run
    from niaffine.bidsapp.progress import INTERVAL_ENV, progress_interval

    monkeypatch.setenv(INTERVAL_ENV, "7")
    given = {}

    def participant(settings, **kwargs):
        given.update(kwargs, settings=settings)
        return 0

    monkeypatch.setattr(run, "run_participant", participant)
    assert run.main([str(bids), str(tmp_path / "out"), "participant", "-w",
                     str(tmp_path / "work"), "--device", "cpu", *argv]) == 0
    assert given["progress_interval_s"] == given["settings"].progress_interval_s
    assert progress_interval(given["progress_interval_s"]) == seconds

# SPDX-License-Identifier: Apache-2.0
"""The command-line parser is pure: syntax only, no file-system access."""

import re

import pytest

from niaffine import __version__
from niaffine.bidsapp.parser import DEFAULT_SPACES, MODALITIES, build_parser


def parse(*argv):
    return build_parser().parse_args(["bids", "out", "participant", *argv])


def test_defaults():
    args = parse()
    assert args.analysis_level == "participant"
    assert args.output_spaces == list(DEFAULT_SPACES)
    assert args.modalities == list(MODALITIES)
    assert (args.dof, args.dof_coreg, args.metric, args.device) == (12, 6, "auto", "auto")
    assert args.participant_label is None and args.work_dir is None
    assert not args.skip_bids_validation and not args.reports_only


@pytest.mark.parametrize("flag", ["--participant-label", "--participant_label"])
def test_participant_labels_with_or_without_prefix(flag):
    assert parse(flag, "sub-01", "02").participant_label == ["01", "02"]


def test_session_and_execution_options():
    args = parse("--session-label", "ses-A", "B", "-w", "/w", "--nprocs", "3",
                 "--omp-nthreads", "2", "--mem", "8G", "--device", "cuda:1",
                 "--n-gpu-procs", "2", "--plugin", "SLURM", "--plugin-args",
                 '{"sbatch_args": "-p x"}', "--stop-on-first-crash", "--random-seed", "7",
                 "-vv", "--resample-bold", "--dof", "9", "--metric", "ncc",
                 "--modalities", "T2w", "bold")
    assert args.session_label == ["A", "B"]
    assert (args.nprocs, args.omp_nthreads, args.mem_gb) == (3, 2, 8.0)
    assert (args.device, args.n_gpu_procs, args.plugin) == ("cuda:1", 2, "SLURM")
    assert args.plugin_args == '{"sbatch_args": "-p x"}'
    assert args.stop_on_first_crash and args.resample_bold and args.verbose == 2
    assert (args.random_seed, args.dof, args.metric) == (7, 9, "ncc")
    assert args.modalities == ["T2w", "bold"]


def test_progress_interval():
    assert parse().progress_interval is None  # $NIAFFINE_PROGRESS_INTERVAL, else 30 s
    assert parse("--progress-interval", "0.5").progress_interval == 0.5


def test_filter_file(tmp_path):
    good = tmp_path / "f.json"
    good.write_text('{"t1w": {"acquisition": "mprage"}}')
    assert parse("--bids-filter-file", str(good)).bids_filters == {
        "t1w": {"acquisition": "mprage"}}


@pytest.mark.parametrize("argv", [
    ["--participant-label", "sub-0_1"],
    ["--device", "gpu"],
    ["--dof", "8"],
    ["--metric", "nmi-ish"],
    ["--modalities", "T1map"],
    ["--mem", "lots"],
    ["--nprocs", "0"],
    ["--bids-filter-file", "/does/not/exist.json"],
    ["--progress-interval", "0"],
    ["--progress-interval", "soon"],
])
def test_syntax_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bad_filter_file_content(tmp_path, capsys):
    bad = tmp_path / "f.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit):
        parse("--bids-filter-file", str(bad))
    assert "must map data types" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_levels(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-h"])
    out = capsys.readouterr().out
    assert "{participant,group}" in out and "--use-plugin" in out


FMRIPREP_ARGV = ["--participant-label", "01", "--fs-license-file", "/x/license.txt", "--notrack",
                 "--skip_bids_validator", "--output-spaces", "MNI152NLin2009aSym", "T1w",
                 "--nthreads", "2", "--omp-nthreads", "1", "-w", "work", "--stop-on-first-crash"]


def test_typical_fmriprep_command_line():
    args = parse(*FMRIPREP_ARGV)
    assert args.participant_label == ["01"] and args.skip_bids_validation and args.notrack
    assert args.output_spaces == ["MNI152NLin2009aSym", "T1w"]
    assert (args.nprocs, args.omp_nthreads, str(args.work_dir)) == (2, 1, "work")
    assert args.stop_on_first_crash
    assert args.ignored == ["--fs-license-file"]


def test_more_fmriprep_options_are_accepted():
    args = parse("--participant_label", "sub-01", "--n_cpus", "4", "--omp_nthreads", "2",
                 "--mem_mb", "16000", "--low-mem", "--fs-subjects-dir", "/fs", "--fs-no-reconall",
                 "--cifti-output", "--use-aroma", "--md-only-boilerplate", "--write-graph",
                 "--resource-monitor", "--output-layout", "bids", "--dummy-scans", "4",
                 "--longitudinal", "--me-output-echos", "--level", "full", "--ignore",
                 "slicetiming", "t2w", "--anat-only", "-t", "rest", "--skip-bids-validation",
                 "--nipype-plugin-file", "p.yml", "--bold2t1w-dof", "9", "--debug", "all")
    assert args.participant_label == ["01"] and (args.nprocs, args.omp_nthreads) == (4, 2)
    assert abs(args.mem_gb - 16000 / 1024) < 1e-9
    assert args.ignore == ["slicetiming", "t2w"] and args.anat_only and args.task_id == "rest"
    assert str(args.use_plugin) == "p.yml" and args.output_layout == "bids"
    assert args.ignored == ["--low-mem", "--fs-subjects-dir", "--fs-no-reconall", "--cifti-output",
                            "--use-aroma", "--md-only-boilerplate", "--write-graph",
                            "--resource-monitor", "--dummy-scans", "--longitudinal",
                            "--me-output-echos", "--level", "--bold2t1w-dof", "--debug"]


@pytest.mark.parametrize(("flag", "value", "gigabytes"), [
    ("--mem", "16G", 16.0), ("--mem", "8000M", 8000 / 1024), ("--mem", "16384", 16.0),
    ("--mem-mb", "2048", 2.0), ("--mem-gb", "16", 16.0), ("--mem_gb", "512MB", 0.5)])
def test_memory_units(flag, value, gigabytes):
    assert parse(flag, value).mem_gb == pytest.approx(gigabytes)


def test_bare_small_memory_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--mem", "16")
    assert exc.value.code == 2
    assert "write 16G for gigabytes" in capsys.readouterr().err


def test_help_prints_each_default_once(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-h"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "(default: None)" not in flat and "(default: False)" not in flat
    for option in re.split(r"\n  -", out):  # one block per option
        assert option.count("default") <= 1, option
    assert "(default: ./work)" in flat and "(default: 12)" in flat
    assert "--fs-license-file" in out and "--no-submm-recon" in out  # never cut at a hyphen


def test_series_realignment_flags(tmp_path):
    """Series realignment is on by default; --no-hmc turns it off (settings.hmc)."""
    from niaffine.bidsapp.settings import from_args

    assert parse().hmc and not parse().resample_bold
    assert not parse("--no-hmc").hmc
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text("{}")
    argv = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
            "--device", "cpu"]
    assert from_args(build_parser().parse_args(argv)).hmc
    settings = from_args(build_parser().parse_args(argv + ["--no-hmc", "--resample-bold"]))
    assert not settings.hmc and settings.resample_bold

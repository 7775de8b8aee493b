# SPDX-License-Identifier: Apache-2.0
"""Command-line parser of the ``niaffine`` BIDS-App.

:func:`build_parser` is pure: it reads nothing from disk and checks no paths,
so it can be tested (and documented) on its own. Semantic checks that need the
file system live in :mod:`niaffine.bidsapp.settings`.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import textwrap
from pathlib import Path

from niaffine import __version__, choices
from niaffine.choices import DEFAULT_SPACES, MODALITIES  # noqa: F401  (re-exported)
from niaffine.devices import device_argument

ANALYSIS_LEVELS = ("participant", "group")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def strip_label(value: str, prefix: str) -> str:
    """Return a BIDS label without its entity prefix.

    Parameters
    ----------
    value : str
        ``"01"`` or ``"sub-01"``.
    prefix : str
        The entity prefix, e.g. ``"sub-"``.

    Examples
    --------
    >>> strip_label("sub-01", "sub-"), strip_label("01", "sub-")
    ('01', '01')
    """
    label = value[len(prefix):] if value.startswith(prefix) else value
    if not _LABEL.match(label):
        raise argparse.ArgumentTypeError(
            f"invalid label {value!r}: BIDS labels are alphanumeric (optionally with {prefix!r})"
        )
    return label


def _participant(value: str) -> str:
    return strip_label(value, "sub-")


def _session(value: str) -> str:
    return strip_label(value, "ses-")


def _json_file(value: str) -> dict:
    """Load a ``--bids-filter-file`` (a JSON object of pybids queries)."""
    path = Path(value)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"filter file not found: {value}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read filter file {value}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise argparse.ArgumentTypeError(
            f"filter file {value} must map data types (t1w, t2w, bold, ...) to query objects"
        )
    return data


def _memory_gb(value: str, default_unit: str = "G") -> float:
    """Parse a memory amount in gigabytes: ``8G``, ``8GB``, ``8000M``, ``8000MB``, ``1T``.

    A bare number is in ``default_unit``: gigabytes for ``--mem-gb``, megabytes for
    ``--mem``/``--mem-mb`` (fMRIPrep's unit), where a bare number under 256 is refused as
    a probable slip (``--mem 16`` would be 16 MB).

    Examples
    --------
    >>> _memory_gb("8G"), _memory_gb("512MB"), _memory_gb("2"), _memory_gb("16384", "M")
    (8.0, 0.5, 2.0, 16.0)
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([GgMmTt]?)[Bb]?\s*", value)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid memory amount {value!r} (e.g. 8G, 8000M)")
    number, unit = float(match.group(1)), match.group(2).upper() or default_unit
    if not match.group(2) and default_unit == "M" and number < 256:
        raise argparse.ArgumentTypeError(
            f"{value} would be {value} MB (a bare number is megabytes, as in fMRIPrep): "
            f"write {value}G for gigabytes")
    return number * {"G": 1.0, "M": 1 / 1024, "T": 1024.0}[unit]


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _seconds(value: str) -> float:
    """A positive number of seconds (``--progress-interval``).

    Examples
    --------
    >>> _seconds("30"), _seconds("0.5")
    (30.0, 0.5)
    """
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return number


class _HelpFormatter(argparse.HelpFormatter):
    """Show ``(default: X)`` once, only where a help text does not say it and X means
    something (not ``None``, ``False`` or an empty list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, [], argparse.SUPPRESS)
                or action.nargs == 0 or isinstance(action, _Ignored)):
            return text
        if isinstance(default, list | tuple):
            default = " ".join(map(str, default))
        return f"{text} (default: {default})"

    def _split_lines(self, text, width):  # never break an option name at its hyphens
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


class _Ignored(argparse.Action):
    """An fMRIPrep option niaffine accepts and ignores: its name goes into ``ignored``."""

    def __call__(self, parser, namespace, values, option_string=None):
        ignored = list(getattr(namespace, "ignored", None) or [])
        if option_string not in ignored:
            ignored.append(option_string)
        namespace.ignored = ignored


#: fMRIPrep options niaffine has no use for: (option strings, nargs, metavar), by topic.
IGNORED_OPTIONS = {
    "FreeSurfer, surfaces (niaffine writes volumes)": [
        (("--fs-license-file",), None, "FILE"), (("--fs-subjects-dir",), None, "PATH"),
        (("--fs-no-reconall",), 0, None), (("--fs-no-resume",), 0, None),
        (("--no-submm-recon",), 0, None), (("--cifti-output",), "?", "{91k,170k}"),
        (("--medial-surface-nan",), 0, None), (("--project-goodvoxels",), 0, None),
        (("--no-msm",), 0, None),
    ],
    "confounds, AROMA, multi-echo, fieldmaps, slice timing": [
        (("--use-aroma",), 0, None), (("--aroma-melodic-dimensionality",), None, "N"),
        (("--error-on-aroma-warnings",), 0, None), (("--return-all-components",), 0, None),
        (("--fd-spike-threshold",), None, "MM"), (("--dvars-spike-threshold",), None, "X"),
        (("--dummy-scans",), None, "N"), (("--me-output-echos",), 0, None),
        (("--me-t2s-fit-method",), None, "METHOD"), (("--echo-idx",), None, "N"),
        (("--slice-time-ref",), None, "X"), (("--fmap-bspline",), 0, None),
        (("--fmap-no-demean",), 0, None), (("--use-syn-sdc",), "?", "{warn,error}"),
        (("--force-syn",), 0, None),
    ],
    "other (see docs/usage.md)": [
        (("--longitudinal",), 0, None), (("--level",), None, "LEVEL"),
        (("--sloppy",), 0, None), (("--low-mem",), 0, None),
        (("--bold2t1w-init", "--bold2anat-init"), None, "INIT"),
        (("--bold2t1w-dof", "--bold2anat-dof"), None, "DOF"),
        (("--force-bbr",), 0, None), (("--force-no-bbr",), 0, None),
        (("--skull-strip-template",), None, "TEMPLATE"), (("--skull-strip-fixed-seed",), 0, None),
        (("--skull-strip-t1w",), None, "MODE"), (("--anat-derivatives",), None, "PATH"),
        (("-d", "--derivatives"), "+", "PATH"), (("--md-only-boilerplate",), 0, None),
        (("--aggregate-session-reports",), None, "N"), (("--config-file",), None, "FILE"),
        (("--write-graph",), 0, None), (("--resource-monitor",), 0, None),
        (("--clean-workdir",), 0, None), (("--debug",), "+", "WHAT"),
        (("--track-carbon",), 0, None), (("--country-code",), None, "CODE"),
    ],
}


def _add_fmriprep_options(parser: argparse.ArgumentParser) -> None:
    """fMRIPrep's options that scripts pass: accepted, ignored, named once in a notice.

    ``--help`` lists them by topic in each group's description (one line each would
    double the help's length).
    """
    for topic, options in IGNORED_OPTIONS.items():
        names = " ".join("/".join(flags) for flags, _, _ in options)
        group = parser.add_argument_group(f"fMRIPrep options accepted and ignored: {topic}", names)
        for flags, nargs, metavar in options:
            group.add_argument(*flags, dest="ignored", action=_Ignored, nargs=nargs,
                               metavar=metavar, default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``niaffine bids_dir output_dir {participant,group}`` parser.

    Returns
    -------
    parser : argparse.ArgumentParser
        A parser that only checks syntax; see :func:`niaffine.bidsapp.settings.from_args`.

    Examples
    --------
    >>> argv = ["in", "out", "participant", "--participant_label", "sub-01"]
    >>> args = build_parser().parse_args(argv)
    >>> args.participant_label, args.output_spaces
    (['01'], ['T1w', 'MNI152NLin2009aSym'])
    >>> build_parser().parse_args(argv + ["--notrack", "--fs-license-file", "x"]).ignored
    ['--fs-license-file']
    """
    parser = argparse.ArgumentParser(
        prog="niaffine",
        description="niaffine BIDS-App: affine registration of every anatomical and functional "
        "image of a BIDS dataset to its T1w and to a template, with BIDS-Derivatives and reports."
        " It accepts the options of fMRIPrep that scripts pass (the unused ones are named once "
        "in a notice).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root of the input BIDS dataset")
    parser.add_argument(
        "output_dir", type=Path,
        help="where derivatives go (must not be bids_dir, nor inside it unless under derivatives/)",
    )
    # No ``choices`` on purpose: an unknown level exits with the BIDS-Apps code 17.
    parser.add_argument(
        "analysis_level", metavar="{participant,group}",
        help="participant: register each subject; group: QC table and dataset-wide report",
    )
    parser.add_argument("--version", action="version", version=f"niaffine {__version__}")
    parser.add_argument(
        "-v", "--verbose", dest="verbose", action="count", default=0,
        help="more log output (-v: info from Nipype, -vv: debug)",
    )

    sel = parser.add_argument_group("selecting data")
    sel.add_argument(
        "--participant-label", "--participant_label", dest="participant_label", nargs="+",
        type=_participant, metavar="LABEL", help="subjects to process, with or without 'sub-' "
        "(default: all)",
    )
    sel.add_argument(
        "--session-label", "--session_label", dest="session_label", nargs="+", type=_session,
        metavar="LABEL", help="sessions to process, with or without 'ses-' (default: all)",
    )
    sel.add_argument(
        "--bids-filter-file", "--bids_filter_file", dest="bids_filters", type=_json_file,
        metavar="FILE", help="JSON object of pybids queries per data type, e.g. "
        '{"t1w": {"acquisition": "mprage"}, "bold": {"task": "rest"}}',
    )
    sel.add_argument(
        "--skip-bids-validation", "--skip_bids_validation", "--skip_bids_validator",
        "--skip-bids-validator", dest="skip_bids_validation",
        action="store_true", help="do not run the BIDS validator on bids_dir",
    )
    sel.add_argument(
        "-t", "--task-id", dest="task_id", metavar="TASK",
        help="only BOLD runs of this task (as fMRIPrep; added to the filters' bold query)",
    )
    sel.add_argument(
        "--bids-database-dir", dest="bids_database_dir", type=Path, metavar="DIR",
        help="reuse (or create) a pybids database here to skip re-indexing large datasets",
    )

    what = parser.add_argument_group("what to do")
    what.add_argument(
        "--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES),
        help="image types to coregister to the T1w",
    )
    what.add_argument(
        "--output-spaces", "--output_spaces", dest="output_spaces", nargs="+",
        default=list(DEFAULT_SPACES), metavar="SPACE",
        help="fMRIPrep's grammar: TemplateFlow templates NAME[:res-N|:res-native][:cohort-M] "
        "(from TEMPLATEFLOW_HOME, never downloaded; MNI152NLin2009aSym is built in), T1w "
        "(alias anat), func (each series' own grid), or the path of a template T1w NIfTI "
        "(labelled by 'tpl-<label>' in its name, else the file stem). T1w is always written",
    )
    what.add_argument(
        "--template-mask", dest="template_mask", type=Path, metavar="FILE",
        help="brain mask on the grid of a user template given in --output-spaces",
    )
    what.add_argument(
        "--dof", type=int, choices=choices.DOFS_TEMPLATE, default=choices.DEFAULT_DOF,
        help="degrees of freedom of the T1w-to-template registration",
    )
    what.add_argument(
        "--dof-coreg", dest="dof_coreg", type=int, choices=choices.DOFS,
        default=choices.DEFAULT_DOF_COREG,
        help="degrees of freedom of the image-to-T1w coregistrations",
    )
    what.add_argument("--metric", choices=choices.METRIC_CHOICES, default="auto",
                      help="similarity metric; auto: each registration's preset (mutual "
                           "information within the subject, normalised MI to the template)")
    what.add_argument(
        "--no-hmc", dest="hmc", action="store_false",
        help="do not realign BOLD/DWI series (head motion, eddy currents): register and "
             "resample a reference volume of each as a static image (niaffine < 0.2)",
    )
    what.add_argument(
        "--resample-bold", dest="resample_bold", action="store_true",
        help="with --no-hmc: resample whole BOLD series with one transform (realigned "
             "series are always resampled, volume by volume)",
    )
    what.add_argument(
        "--reports-only", dest="reports_only", action="store_true",
        help="only rebuild the HTML reports from existing derivatives",
    )
    what.add_argument(
        "--anat-only", dest="anat_only", action="store_true",
        help="only anatomical images (no BOLD or DWI), as fMRIPrep's --anat-only",
    )
    what.add_argument(
        "--ignore", nargs="+", default=[], metavar="WHAT",
        choices=("fieldmaps", "slicetiming", "sbref", "t2w", "flair", "fmap-jacobian"),
        help="fMRIPrep's: t2w and flair leave those images out; niaffine never uses "
        "fieldmaps, slice timing or SBRefs, so the others change nothing",
    )
    what.add_argument(
        "--output-layout", dest="output_layout", choices=("bids", "legacy"), default="bids",
        help="niaffine writes the bids layout (legacy is accepted and ignored)",
    )
    what.add_argument(
        "--boilerplate-only", "--boilerplate_only", dest="boilerplate_only",
        action="store_true", help="refused: niaffine writes no citation boilerplate",
    )

    run = parser.add_argument_group("execution")
    run.add_argument(
        "-w", "--work-dir", dest="work_dir", type=Path, default=None, metavar="DIR",
        help="Nipype working directory; rerunning with the same one recomputes only what "
        "changed (default: ./work)",
    )
    run.add_argument(
        "--nprocs", "--nthreads", "--n_cpus", "--n-cpus", dest="nprocs", type=_positive_int,
        default=None, help="processes to run at once (default: all CPUs)",
    )
    run.add_argument(
        "--omp-nthreads", "--omp_nthreads", dest="omp_nthreads", type=_positive_int, default=None,
        help="threads per registration (default: min(nprocs, 8)); set in the environment "
        "with OMP_WAIT_POLICY=PASSIVE before torch loads",
    )
    run.add_argument(
        "--mem", "--mem-mb", "--mem_mb", dest="mem_gb", default=None, metavar="MEM",
        type=functools.partial(_memory_gb, default_unit="M"),
        help="memory limit for the scheduler, e.g. 16G or 16000 (a bare number is megabytes, "
        "as in fMRIPrep)",
    )
    run.add_argument(
        "--mem-gb", "--mem_gb", dest="mem_gb", type=_memory_gb, default=None, metavar="GB",
        help="the same in gigabytes (a bare number is gigabytes)",
    )
    run.add_argument(
        "--device", type=device_argument, default="auto",
        help=f"{', '.join(choices.DEVICE_CHOICES)}: auto is CUDA where available",
    )
    run.add_argument(
        "--n-gpu-procs", dest="n_gpu_procs", type=_positive_int, default=1,
        help="registrations to run at once on the GPU",
    )
    run.add_argument(
        "--batch-size", dest="batch_size", type=_positive_int, default=1, metavar="N",
        help="register the T1w brains of N subjects/sessions to the template in one batched "
        "engine call (keeps a GPU busy; results equal to one by one; default 1)",
    )
    run.add_argument(
        "--plugin", default=None, help="Nipype plugin (MultiProc, Linear, SLURM, ...)",
    )
    run.add_argument(
        "--plugin-args", dest="plugin_args", default=None, metavar="ARGS",
        help="plugin arguments as JSON or key=value,key=value (see docs/usage.md)",
    )
    run.add_argument(
        "--use-plugin", "--nipype-plugin-file", dest="use_plugin", type=Path, default=None, metavar="FILE",
        help="YAML file with 'plugin' and 'plugin_args' (as fMRIPrep's --use-plugin)",
    )
    run.add_argument(
        "--stop-on-first-crash", dest="stop_on_first_crash", action="store_true",
        help="stop the whole run at the first failing node",
    )
    run.add_argument(
        "--random-seed", dest="random_seed", type=int, default=0,
        help="seed of every random choice (sampling), for reproducible results",
    )
    run.add_argument(
        "--progress-interval", dest="progress_interval", type=_seconds, default=None,
        metavar="SECONDS",
        help="seconds between progress lines in the log when stderr is not a terminal "
        "(default: $NIAFFINE_PROGRESS_INTERVAL, else 25; this option wins over it)",
    )
    run.add_argument(
        "--notrack", dest="notrack", action="store_true",
        help="accepted: niaffine never sends usage data anywhere",
    )
    _add_fmriprep_options(parser)
    return parser

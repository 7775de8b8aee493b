# SPDX-License-Identifier: Apache-2.0
"""Command-line parser of the ``niaffine`` BIDS-App.

:func:`build_parser` is pure: it reads nothing from disk and checks no paths,
so it can be tested (and documented) on its own. Semantic checks that need the
file system live in :mod:`niaffine.bidsapp.settings`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from niaffine import __version__
from niaffine.devices import device_argument

ANALYSIS_LEVELS = ("participant", "group")
MODALITIES = ("T2w", "FLAIR", "PDw", "bold", "dwi")
DEFAULT_SPACES = ("T1w", "MNI152NLin2009aSym")
METRICS = ("auto", "mi", "nmi", "ncc", "lncc", "mse", "cr")
DOFS_TEMPLATE = (6, 7, 9, 12)
DOFS_COREG = (3, 6, 7, 9, 12)
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


def _memory_gb(value: str) -> float:
    """Parse ``--mem``: ``8``, ``8G``, ``8GB``, ``8000M``, ``8000MB`` (gigabytes by default).

    Examples
    --------
    >>> _memory_gb("8G"), _memory_gb("512MB"), _memory_gb("2")
    (8.0, 0.5, 2.0)
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([GgMmTt]?)[Bb]?\s*", value)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid memory amount {value!r} (e.g. 8G, 8000M)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return number * {"": 1.0, "G": 1.0, "M": 1 / 1024, "T": 1024.0}[unit]


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


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
    """
    parser = argparse.ArgumentParser(
        prog="niaffine",
        description="niaffine BIDS-App: affine registration of every anatomical and functional "
        "image of a BIDS dataset to its T1w and to a template, with BIDS-Derivatives and reports.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        "--skip-bids-validation", "--skip_bids_validation", dest="skip_bids_validation",
        action="store_true", help="do not run the BIDS validator on bids_dir",
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
        help="T1w and at most one template: MNI152NLin2009aSym or a path to a template T1w "
        "NIfTI (its space label comes from 'tpl-<label>' in the file name, else the file stem)",
    )
    what.add_argument(
        "--template-mask", dest="template_mask", type=Path, metavar="FILE",
        help="brain mask on the grid of a user template given in --output-spaces",
    )
    what.add_argument(
        "--dof", type=int, choices=DOFS_TEMPLATE, default=12,
        help="degrees of freedom of the T1w-to-template registration",
    )
    what.add_argument(
        "--dof-coreg", dest="dof_coreg", type=int, choices=DOFS_COREG, default=6,
        help="degrees of freedom of the image-to-T1w coregistrations",
    )
    what.add_argument("--metric", choices=METRICS, default="auto",
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
        "--omp-nthreads", dest="omp_nthreads", type=_positive_int, default=None,
        help="threads per registration (default: min(nprocs, 8)); set in the environment "
        "with OMP_WAIT_POLICY=PASSIVE before torch loads",
    )
    run.add_argument(
        "--mem", "--mem-gb", "--mem_gb", dest="mem_gb", type=_memory_gb, default=None,
        help="memory limit for the scheduler, e.g. 16G",
    )
    run.add_argument(
        "--device", type=device_argument, default="auto",
        help="auto (CUDA if available), cpu, or cuda[:N]",
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
        "--use-plugin", dest="use_plugin", type=Path, default=None, metavar="FILE",
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
    return parser

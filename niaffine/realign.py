# SPDX-License-Identifier: Apache-2.0
"""``niaffine-realign``: head-motion (and eddy-current) correction of a BOLD or DWI series.

Writes one affine per volume (ITK text, reference points to volume points: what resamples each
volume into the reference, as fMRIPrep's ``*_desc-hmc_xfm.txt``), and on request the motion
confounds (fMRIPrep's columns), the realigned series, the reference, rotated b-vectors and a
JSON of run facts.

Exit codes (as ``niaffine-register``): 0 success; 2 bad command line; 65 bad input data (not a
4D series, NaN volumes, b-values or b-vectors that do not match the series, zero-norm
b-vectors on diffusion-weighted volumes, a mask on another grid); 69 the requested device is
unavailable; 70 the realignment failed; 73 an output cannot be written. Nothing is written
unless every output can be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__, choices
from .cli import _levels, _positive_int, add_run_options, run_reporting_failures
from .errors import InputError
from .series_io import PE_CODES

LOGGER = logging.getLogger("niaffine.realign")
PROG = "niaffine-realign"
#: ``--interpolation`` of ``--out-image``: the smooth interpolations.
SERIES_INTERPOLATIONS = tuple(name for name in choices.INTERPOLATIONS if name != "nearest")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (pure: no side effects)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Realign every volume of a 4D BOLD or DWI series to one reference (head-motion "
            "correction; with --bval also eddy-current correction of the diffusion-weighted "
            "volumes, 12 dof). Writes one affine per volume mapping reference points to the "
            "volume's points, as fMRIPrep's *_desc-hmc_xfm.txt (ITK text, read by nitransforms' "
            "ITKLinearTransformArray)."
        ),
        epilog=(
            "Exit codes: 0 success, 2 bad command line, 65 bad input data, 69 device "
            "unavailable, 70 realignment failed, 73 output not writable. Example: "
            "niaffine-realign bold.nii.gz -o hmc_xfm.txt --confounds confounds.tsv "
            "--out-image bold_hmc.nii.gz"
        ),
    )
    parser.add_argument("series", type=Path, help="4D series (NIfTI), volumes along the 4th axis")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="per-volume transforms, ITK text (.txt/.tfm), one affine per volume")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--reference", type=Path,
                     help="3D reference image (any grid) instead of a robust reference built "
                          "from the series")
    ref.add_argument("--ref-volume", type=int, metavar="N",
                     help="use volume N (0-based) of the series as the reference")
    parser.add_argument("--dof", type=int, choices=choices.DOFS,
                        help="degrees of freedom: 6 rigid (default), 12 affine (default for "
                             "the diffusion-weighted volumes with --bval; b=0 volumes are rigid)")
    parser.add_argument("--metric", default="auto", choices=choices.SERIES_METRIC_CHOICES,
                        help="similarity: auto = normalised cross-correlation, mutual "
                             "information for diffusion-weighted volumes [default: auto]")
    parser.add_argument("--mask", type=Path,
                        help="binary mask on the reference grid (the series' grid unless "
                             "--reference is given) where the metric is evaluated")
    parser.add_argument("--bval", type=Path, help="FSL b-values: the series is a DWI")
    parser.add_argument("--bvec", type=Path, help="FSL b-vectors (needs --bval)")
    parser.add_argument("--out-bvec", type=Path,
                        help="b-vectors rotated by each volume's head rotation, FSL convention in "
                             "the frame of the output image (the reference grid)")
    parser.add_argument("--pe-dir", choices=PE_CODES, default="auto",
                        help="phase-encoding direction (BIDS PhaseEncodingDirection) of a DWI: "
                             "eddy currents distort along it, so 12-dof transforms are modelled "
                             "and their rotation read across it; auto takes it from the "
                             "series' BIDS JSON sidecar (x.nii.gz -> x.json) where that says, "
                             "else finds the voxel axis along which the volumes distort "
                             "[default: auto]")
    parser.add_argument("--b0-threshold", type=float, default=50.0,
                        help="largest b-value counted as b=0 [default: 50]")
    parser.add_argument("--confounds", type=Path,
                        help="motion confounds TSV (fMRIPrep columns; JSON sidecar beside it)")
    parser.add_argument("--out-image", type=Path, help="the realigned series on the reference grid")
    parser.add_argument("--interpolation", choices=SERIES_INTERPOLATIONS, default="linear",
                        help="interpolation for --out-image [default: linear]")
    parser.add_argument("--out-reference", type=Path, help="the reference image (3D)")
    parser.add_argument("--out-json", type=Path, help="run facts: per-volume metric, flags, timing")
    parser.add_argument("--passes", type=int, choices=(1, 2), default=2,
                        help="with the robust reference: 1 registers to one volume only "
                             "[default: 2]")
    parser.add_argument("--levels", type=_levels, default=(4.0, 2.0, 1.0),
                        help="pyramid spacings in multiples of the reference voxel size "
                             "[default: '4 2 1']")
    parser.add_argument("--samples", type=_positive_int, default=choices.SERIES_SAMPLES,
                        help=f"metric sample points per volume and level [default: {choices.SERIES_SAMPLES}]")
    parser.add_argument("--volumes-per-call", type=_positive_int,
                        help="volumes per engine call [default: as a memory budget allows]")
    add_run_options(parser, threads_help="CPU threads for torch")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Command-line combinations argparse cannot express (exit 2 through ``parser.error``)."""
    if args.bvec and not args.bval:
        parser.error("--bvec needs --bval")
    if args.out_bvec and not args.bvec:
        parser.error("--out-bvec needs --bvec and --bval")
    if args.ref_volume is not None and args.ref_volume < 0:
        parser.error("--ref-volume must be 0 or more")
    if args.output.suffix.lower() not in (".txt", ".tfm"):
        parser.error(f"{args.output}: the transforms are ITK text (.txt or .tfm)")
    if args.confounds and args.confounds.suffix.lower() != ".tsv":
        parser.error(f"{args.confounds}: confounds are a .tsv file")
    outputs = [p for p in (args.output, args.out_bvec, args.confounds, args.out_image,
                           args.out_reference, args.out_json) if p is not None]
    if len({p.resolve() for p in outputs}) != len(outputs):
        parser.error("two outputs have the same path")


class _Progress:
    """One updating line per stage on a terminal, a line per stage otherwise."""

    def __init__(self, quiet: bool):
        self.quiet, self.tty, self.start, self.last = quiet, sys.stderr.isatty(), time.perf_counter(), None

    def __call__(self, stage: str, done: int, total: int):
        if self.quiet:
            return
        line = f"  {stage}: {done}/{total} volumes, {time.perf_counter() - self.start:.1f} s"
        if self.tty:
            print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        elif done == total:
            print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line; returns the exit code."""
    from . import threads

    threads.configure(args.threads)  # before torch loads: OpenMP reads its wait policy once
    from .engine.series import register_series
    from .io import load_image
    from .series_io import (
        load_series,
        phase_encoding_direction,
        read_bvals,
        read_bvecs,
        sidecar_phase_encoding,
    )

    series = load_series(args.series)
    n_volumes = series.shape[3]
    bvals = read_bvals(args.bval, n_volumes) if args.bval else None
    bvecs = (read_bvecs(args.bvec, n_volumes, bvals, b0_threshold=args.b0_threshold)
             if args.bvec else None)
    reference = args.ref_volume
    if args.reference:
        reference = load_image(args.reference, role="reference image", ndim=(3,))
    if isinstance(reference, int) and reference >= n_volumes:
        raise InputError(f"{args.series}: --ref-volume {reference} is outside the series' "
                         f"{n_volumes} volumes")
    mask = load_image(args.mask, role="mask", ndim=(3,), check_values=False) if args.mask else None
    pe_code = args.pe_dir
    if pe_code == "auto" and bvals is not None:
        pe_code = sidecar_phase_encoding(args.series) or "auto"
    if not args.quiet:
        kind = "DWI" if bvals is not None else "series"
        print(f"niaffine {__version__}: realigning {args.series} ({kind} of {n_volumes} volumes)",
              file=sys.stderr)
    result = register_series(
        series, reference=reference, mask=mask, dof=args.dof, metric=args.metric, bvals=bvals,
        bvecs=bvecs, pe_direction=phase_encoding_direction(series, pe_code),
        b0_threshold=args.b0_threshold, levels=args.levels, passes=args.passes,
        max_samples=args.samples, volumes_per_call=args.volumes_per_call, device=args.device,
        seed=args.seed, callback=_Progress(args.quiet),
    )
    _write_outputs(args, result, series, bvecs, pe_code)
    if not args.quiet:
        print(f"{args.output}: {result.summary()}")
    return 0


def _write_outputs(args, result, series, bvecs, pe_code: str) -> None:
    """Write every requested output, all or nothing (temporary files renamed at the end)."""
    from .engine.confounds import series_confounds
    from .engine.motion import rotate_bvecs
    from .engine.series_resample import resample_series
    from .io import atomic_path, save_image
    from .series_io import (
        save_transform_array,
        write_bvecs,
        write_confounds_json,
        write_confounds_tsv,
    )

    pe = result.pe_direction
    jobs = [(args.output, lambda p: save_transform_array(result.matrices, p))]
    moved = None
    if args.out_image:
        order = choices.INTERPOLATIONS[args.interpolation]
        moved = resample_series(series, result.matrices, result.reference, order=order)
        jobs.append((args.out_image, lambda p: save_image(moved, p)))
    if args.out_reference:
        jobs.append((args.out_reference, lambda p: save_image(result.reference, p)))
    if args.out_bvec:
        rotated = rotate_bvecs(bvecs, result.matrices, series_affine=series.affine,
                               output_affine=result.reference.affine, bvals=result.bvals,
                               pe_direction=pe)
        jobs.append((args.out_bvec, lambda p: write_bvecs(rotated, p)))
    if args.confounds:
        columns = series_confounds(series, result.matrices, result.reference,
                                   bvals=result.bvals, pe_direction=pe,
                                   realigned=moved if args.interpolation == "linear" else None)
        jobs.append((args.confounds, lambda p: write_confounds_tsv(columns, p)))
        jobs.append((args.confounds.with_suffix(".json"),
                     lambda p: write_confounds_json(columns, p)))
    if args.out_json:
        facts = result.to_dict() | {"series": str(args.series), "version": __version__,
                                    "pe_direction": pe_code}
        jobs.append((args.out_json, lambda p: p.write_text(json.dumps(facts, indent=2) + "\n")))
    with contextlib.ExitStack() as stack:
        for path, job in jobs:
            job(stack.enter_context(atomic_path(path)))


def main(argv=None) -> int:
    """Parse ``argv``, run, and return the exit code (errors become one-line messages)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    return run_reporting_failures(run, args, prog=PROG, action="realignment")


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    cli()

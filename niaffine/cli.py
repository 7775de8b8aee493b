# SPDX-License-Identifier: Apache-2.0
"""``niaffine-register``: register two images from the command line.

Exit codes: 0 success; 2 bad command line (unknown option or value); 65 bad input data (an
unreadable, empty, NaN, non-3D image, masks on another grid, images that do not overlap);
69 the requested device is unavailable; 70 the optimisation failed; 73 an output cannot be
written. Nothing is written unless the registration succeeds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import __version__, choices
from .devices import device_argument
from .errors import DeviceUnavailableError, InputError, RegistrationError

EXIT_USAGE, EXIT_DATA, EXIT_UNAVAILABLE, EXIT_SOFTWARE, EXIT_CANTCREAT = 2, 65, 69, 70, 73
#: ``--metric`` values (:data:`niaffine.choices.METRIC_CHOICES`).
METRIC_CHOICES = choices.METRIC_CHOICES
#: ``--rotation-search`` words and the engine's ``rotation_search`` values.
SEARCH_MODES = {"auto": "auto", "always": True, "never": False}
LOGGER = logging.getLogger("niaffine.register")


def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("levels must be positive spacings in mm, e.g. '8 4 2 1'")
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_mm(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of mm: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 mm or more, got {text}")
    return value


def add_run_options(parser: argparse.ArgumentParser, *, threads_help: str) -> None:
    """Add the options every niaffine command line shares: device, threads, seed, verbosity.

    ``--device`` (checked by :func:`niaffine.devices.device_argument`: a typo exits 2),
    ``--threads``, ``--seed``, ``-v/--verbose``, ``-q/--quiet`` and ``--version``, as
    ``niaffine-register`` and ``niaffine-realign`` spell them.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser the options are added to.
    threads_help : str
        Help of ``--threads`` (what the program does with the threads, and its default).

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_run_options(parser, threads_help="CPU threads")
    >>> args = parser.parse_args(["-vv", "--seed", "3"])
    >>> args.verbose, args.seed, args.threads, args.quiet, args.device
    (2, 3, None, False, 'auto')
    """
    parser.add_argument("--device", type=device_argument, default="auto",
                        help=f"{', '.join(choices.DEVICE_CHOICES)} [default: auto]")
    parser.add_argument("--threads", type=_positive_int, help=threads_help)
    parser.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument("--version", action="version", version=f"niaffine {__version__}")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (pure: no side effects)."""
    parser = argparse.ArgumentParser(
        prog="niaffine-register",
        description=(
            "Affine registration of MOVING to FIXED in world (RAS mm) coordinates. Writes the "
            "transform that maps fixed-space points to moving-space points, i.e. the transform "
            "that resamples MOVING into FIXED space, as ANTs/ITK, nitransforms and fMRIPrep "
            "expect it."
        ),
        epilog=(
            "Exit codes: 0 success, 2 bad command line, 65 bad input image or mask, 69 device "
            "unavailable, 70 registration failed, 73 output not writable. Example: "
            "niaffine-register t1.nii.gz t2.nii.gz -o t2_to_t1.txt --dof 6 --out-image t2_in_t1.nii.gz"
        ),
    )
    parser.add_argument("fixed", type=Path, help="fixed (reference) image, NIfTI")
    parser.add_argument("moving", type=Path, help="moving image, NIfTI, registered onto FIXED")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output transform: ITK text (.txt/.tfm), FSL (.mat) or LTA (.lta)")
    parser.add_argument("--dof", type=int, default=choices.DEFAULT_DOF, choices=choices.ALL_DOFS,
                        help="degrees of freedom: 3 translation, 6 rigid, 7 +isotropic scale, "
                             "9 +scales, 12 full affine (2D images: 2, 3, 4, 6) [default: 12]")
    parser.add_argument("--metric", default="auto", choices=METRIC_CHOICES,
                        help="similarity: mutual information (mi), normalised MI (nmi), "
                             "correlation ratio (cr), global/local normalised cross-correlation "
                             "(ncc/lncc), mean squared error (mse); auto = the preset's (mi; "
                             "nmi for --preset template) [default: auto]")
    parser.add_argument("--fixed-mask", type=Path, help="binary mask on the FIXED grid")
    parser.add_argument("--moving-mask", type=Path, help="binary mask on the MOVING grid")
    parser.add_argument("--init", default="com",
                        help="initialisation: com (centres of mass), geometric (image centres), "
                             "identity, or a transform file (ITK/FSL/LTA) [default: com]")
    parser.add_argument("--rotation-search", nargs="?", const="always", default="auto",
                        choices=tuple(SEARCH_MODES),
                        help="search rotations at the coarsest level: auto (only when a turn "
                             "of 30/60/90 degrees beats the coarse answer, i.e. for badly "
                             "misaligned images), always (the bare flag), never [default: auto]")
    parser.add_argument("--freeze", nargs="+", default=(), metavar="GROUP",
                        choices=choices.PARAMETER_GROUPS,
                        help="parameter groups held at their initial value")
    parser.add_argument("--levels", type=_levels, default=None,
                        help="pyramid spacings in mm, coarse to fine [default: the preset's, "
                             "'8 4 2 1']")
    parser.add_argument("--samples", type=_positive_int, default=None,
                        help="metric sample points at the finest level (coarser levels: at most "
                             "25000, or as many with --preset template) [default: the "
                             "preset's, 70000; 100000 with --preset template]")
    parser.add_argument("--sampling", choices=choices.SAMPLING_REGIONS, default=None,
                        help="where the metric samples FIXED without --fixed-mask: foreground "
                             "(the fixed foreground) or image (its whole grid, background "
                             "included, as ANTs) [default: the preset's, foreground; image "
                             "for --preset template]")
    parser.add_argument("--edge-mm", type=_non_negative_mm, default=None, metavar="MM",
                        help="band at the edge of the fixed mask or foreground left out of "
                             "the metric at the fine levels, 0 for none [default: the "
                             "preset's: 3, or 0 where FIXED is a whole head (its foreground "
                             "reaches its field of view) and no --fixed-mask is given; 0 for "
                             "--preset template and head]")
    parser.add_argument("--preset", choices=choices.PRESET_NAMES, default="default",
                        help="engine settings for the job: default (one anatomy seen twice, "
                             "e.g. T2w or BOLD to T1w), template (a subject's brain to a "
                             "template brain), head (whole heads, no edge band), fast (no 1 mm "
                             "level, fewer samples); options given explicitly win "
                             "[default: default]")
    parser.add_argument("--out-image", type=Path, help="MOVING resampled into FIXED space")
    parser.add_argument("--interpolation", choices=tuple(choices.INTERPOLATIONS), default="linear",
                        help="interpolation for --out-image [default: linear]")
    parser.add_argument("--out-inverse", type=Path, help="inverse transform (moving to fixed)")
    parser.add_argument("--out-fsl", type=Path, help="also write the transform as FSL .mat")
    parser.add_argument("--out-lta", type=Path, help="also write the transform as FreeSurfer LTA")
    parser.add_argument("--out-json", type=Path,
                        help="run facts (JSON; fields: niaffine.runfacts.RunFacts): matrix, parameters, "
                             "metric, iterations and time per level, versions")
    add_run_options(parser, threads_help="CPU threads [default: the CPUs this process may use, "
                                         "from its CPU affinity and cgroup quota]")
    return parser


class _Progress:
    """Progress display: one updating line per level on a terminal, one line per level else."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.last = None

    def _line(self, level, spacing, iterations, loss) -> str:
        return (f"  level {level + 1} ({spacing:g} mm): {iterations} iterations, loss {loss:.5f}, "
                f"{time.perf_counter() - self.start:.1f} s")

    def __call__(self, level, spacing, iterations, loss):
        if self.quiet:
            return
        if self.last is not None and self.last[0] != level:
            self.finish_level()
        self.last = (level, spacing, iterations, loss)
        if self.tty:
            print("\r" + self._line(*self.last), end="", file=sys.stderr, flush=True)

    def finish_level(self):
        """End the current level's line."""
        if self.quiet or self.last is None:
            return
        if self.tty:
            print(file=sys.stderr)
        else:
            print(self._line(*self.last), file=sys.stderr, flush=True)
        self.last = None


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line; returns the exit code."""
    from . import threads

    threads.configure(args.threads)  # before torch loads: OpenMP reads its wait policy once
    from .service import OutputPaths, RegistrationOptions, register_files

    from_file = args.init not in choices.INITS
    options = RegistrationOptions(
        dof=args.dof, metric=args.metric, init="com" if from_file else args.init,
        initial_transforms=(str(args.init),) if from_file else (),
        rotation_search=SEARCH_MODES[args.rotation_search], levels_mm=args.levels,
        max_samples=args.samples, sampling=args.sampling, edge_mm=args.edge_mm,
        frozen=tuple(args.freeze), preset=args.preset, device=args.device, seed=args.seed)
    outputs = OutputPaths(
        transform=args.output, inverse_transform=args.out_inverse, warped_image=args.out_image,
        run_facts=args.out_json,
        also=tuple((path, fmt) for path, fmt in ((args.out_fsl, "fsl"), (args.out_lta, "lta"))
                   if path is not None),
        order=choices.INTERPOLATIONS[args.interpolation])
    if not args.quiet:
        print(f"niaffine {__version__}: {args.moving} -> {args.fixed} (dof {args.dof}, "
              f"metric {args.metric})", file=sys.stderr)
    progress = _Progress(args.quiet)
    result, _ = register_files(args.fixed, args.moving, outputs=outputs, options=options,
                               fixed_image_mask=args.fixed_mask,
                               moving_image_mask=args.moving_mask, callback=progress)
    progress.finish_level()
    if not args.quiet:
        print(f"{args.output}: {result.summary()}")
    return 0


def run_reporting_failures(run_fn, args, *, prog: str, action: str) -> int:
    """``run_fn(args)``, with known failures turned into one line and their exit code.

    Shared by ``niaffine-register`` and ``niaffine-realign``: 69 device unavailable, 65 bad
    input, 70 the optimisation failed (``"<action> failed: ..."``), 73 an output not written.
    """
    failures = (
        (DeviceUnavailableError, EXIT_UNAVAILABLE, ""),
        (InputError, EXIT_DATA, ""),
        (RegistrationError, EXIT_SOFTWARE, f"{action} failed: "),
        (OSError, EXIT_CANTCREAT, "cannot write output: "),
    )
    try:
        return run_fn(args)
    except tuple(kind for kind, _, _ in failures) as err:
        code, prefix = next((c, p) for kind, c, p in failures if isinstance(err, kind))
        print(f"{prog}: error: {prefix}{err}", file=sys.stderr)
        return code


def main(argv=None) -> int:
    """Parse ``argv``, run, and return the exit code (errors become one-line messages)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    return run_reporting_failures(run, args, prog="niaffine-register", action="registration")


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    cli()

# SPDX-License-Identifier: Apache-2.0
"""``python -m niaffine.demo [OUT_DIR]``: the README's first command (``make demo``).

Builds the demo BIDS dataset (:mod:`niaffine.data.bids_demo`: 3 subjects, one with
two sessions, from the MNI152 anatomy with known affines; T1w, T2w, a BOLD and a DWI run
per session, the head moving between the series' volumes), runs the BIDS-App's
participant and group levels on it, and prints where the reports are::

    OUT_DIR/bids/          the generated raw dataset (ground truth in sourcedata/)
    OUT_DIR/derivatives/   niaffine's outputs: sub-*.html, group/index.html, ...
    OUT_DIR/work/          Nipype's work folder (a rerun reuses it)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

#: Head motion between the volumes of the demo's BOLD and DWI runs (up to, deg and mm).
SERIES_MOTION = 0.15


def build_parser() -> argparse.ArgumentParser:
    """Parser of ``python -m niaffine.demo``."""
    parser = argparse.ArgumentParser(prog="python -m niaffine.demo", description=__doc__
                                     .splitlines()[0], formatter_class=argparse
                                     .ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path("demo"),
                        help="folder for the dataset, the derivatives and the work folder")
    parser.add_argument("--tiny", action="store_true",
                        help="one low-resolution subject (about a minute)")
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", help="cpu, auto or cuda[:N]")
    parser.add_argument("--regenerate", action="store_true",
                        help="rebuild the dataset even if OUT_DIR/bids exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Generate, run participant and group levels; return the first non-zero exit code."""
    from niaffine.bidsapp.run import main as app
    from niaffine.data.bids_demo import (
        DEMO_SUBJECTS,
        TINY_SUBJECTS,
        generate_demo_dataset,
    )

    args = build_parser().parse_args(argv)
    out = args.out_dir.resolve()
    bids, derivatives, work = out / "bids", out / "derivatives", out / "work"
    start = time.monotonic()
    if args.regenerate or not (bids / "dataset_description.json").exists():
        print(f"niaffine demo: generating the BIDS dataset in {bids} ...")
        subjects = TINY_SUBJECTS if args.tiny else DEMO_SUBJECTS
        generate_demo_dataset(bids, subjects=subjects, bold_motion=SERIES_MOTION, dwi=True)
    else:
        print(f"niaffine demo: reusing the dataset in {bids} (--regenerate to rebuild)")
    threads = max(1, args.nprocs // 2)
    print(f"niaffine demo: participant level ({args.nprocs} processes, device {args.device})")
    code = app([str(bids), str(derivatives), "participant", "-w", str(work),
                "--nprocs", str(args.nprocs), "--omp-nthreads", str(threads),
                "--device", args.device])
    print("niaffine demo: group level")
    group = app([str(bids), str(derivatives), "group"])
    code = code or group
    print(f"\nniaffine demo finished in {time.monotonic() - start:.0f} s (exit code {code}).")
    print(f"  open the group report:   {derivatives / 'group' / 'index.html'}")
    for report in sorted(derivatives.glob("sub-*.html")):
        print(f"  subject report:          {report}")
    print(f"  ground truth transforms: {bids / 'sourcedata' / 'groundtruth'}")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

# SPDX-License-Identifier: Apache-2.0
"""Check niaffine's derivatives of the demo dataset against its ground truth.

``python scripts/check_demo_outputs.py DERIVATIVES BIDS [--max-error-mm 3]`` reads the
transforms the BIDS-App wrote for the demo dataset (:mod:`niaffine.data.bids_demo`) and
compares each with the known one, as the largest displacement (mm) over points spread across a
brain-sized box. Used by ``scripts/test-container.sh`` on the outputs of a run inside the image.
Exit status 0 when every expected transform exists and is within the tolerance.
"""

from __future__ import annotations

import argparse
import logging
import sys
from itertools import product
from pathlib import Path

import numpy as np

LOGGER = logging.getLogger("check_demo_outputs")

# a box around the brain in template (MNI, RAS mm) space: 27 points
_BOX = np.array(list(product((-70.0, 0.0, 70.0), (-100.0, -18.0, 70.0), (-50.0, 18.0, 80.0))))


def max_displacement(estimate, truth, points) -> float:
    """Largest distance (mm) between ``estimate @ p`` and ``truth @ p`` over ``points`` (N, 3).

    Examples
    --------
    >>> shift = np.eye(4)
    >>> shift[0, 3] = 1.5
    >>> max_displacement(shift, np.eye(4), np.zeros((2, 3)))
    1.5
    """
    homogeneous = np.c_[points, np.ones(len(points))]
    diff = (homogeneous @ np.asarray(estimate).T - homogeneous @ np.asarray(truth).T)[:, :3]
    return float(np.linalg.norm(diff, axis=1).max())


def _entities(key: str) -> tuple[str, str | None]:
    """``"sub-02_ses-A"`` -> ``("02", "A")``."""
    parts = dict(part.split("-", 1) for part in key.split("_"))
    return parts["sub"], parts.get("ses")


def _find(derivatives: Path, subject: str, session: str | None, pattern: str) -> list[Path]:
    folder = derivatives / f"sub-{subject}"
    if session:
        folder = folder / f"ses-{session}"
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    return sorted(p for p in folder.rglob(f"{prefix}*{pattern}") if p.is_file())


def check(derivatives: Path, bids: Path, max_error_mm: float = 3.0) -> list[str]:
    """Compare every ground-truth transform of the demo with the derivative; list the problems.

    Parameters
    ----------
    derivatives : Path
        The BIDS-App's output folder.
    bids : Path
        The demo dataset (with ``sourcedata/groundtruth``).
    max_error_mm : float
        Largest displacement accepted.

    Returns
    -------
    list of str
        One line per missing or inaccurate transform; empty when all pass.
    """
    from niaffine.data.bids_demo import load_ground_truth
    from niaffine.io import load_transform
    from niaffine.series_io import load_transform_array

    problems = []
    for key, entry in sorted(load_ground_truth(bids).items()):
        subject, session = _entities(key)
        template = entry.get("template", "MNI152NLin2009aSym")
        found = _find(derivatives, subject, session, f"from-T1w_to-{template}_mode-image_xfm.txt")
        if not found:
            problems.append(f"{key}: no from-T1w_to-{template} transform")
            continue
        error = max_displacement(load_transform(found[0]), entry["t1w_to_template"], _BOX)
        LOGGER.info("%s T1w -> %s: %.2f mm", key, template, error)
        if error > max_error_mm:
            problems.append(f"{key}: T1w -> {template} off by {error:.2f} mm ({found[0].name})")
        # points of the brain box seen in the subject's T1w space
        t1w_points = (np.c_[_BOX, np.ones(len(_BOX))] @ entry["t1w_to_template"].T)[:, :3]
        for image, truth in sorted(entry["images"].items()):
            name = Path(image).name.split(".")[0]
            suffix = name.rsplit("_", 1)[-1]
            stem = name[: -len(suffix) - 1]
            patterns = [f"from-{suffix}_to-T1w_mode-image_xfm.txt",
                        f"from-{suffix}ref_to-T1w_mode-image_desc-coreg_xfm.txt"]
            found = [
                p
                for pattern in patterns
                for p in _find(derivatives, subject, session, pattern)
                if p.name.startswith(stem + "_")
            ]
            if not found:
                problems.append(f"{key}: no from-{suffix}[ref]_to-T1w transform for {name}")
                continue
            estimate = load_transform(found[0])
            if "desc-coreg" in found[0].name:  # a realigned series: its first volume's map
                hmc = found[0].name.replace(f"from-{suffix}ref_to-T1w", f"from-orig_to-{suffix}ref")
                hmc_file = found[0].with_name(hmc.replace("desc-coreg", "desc-hmc"))
                estimate = load_transform_array(hmc_file)[0] @ estimate
            error = max_displacement(estimate, truth["to_t1w"], t1w_points)
            LOGGER.info("%s %s -> T1w: %.2f mm", key, name, error)
            if error > max_error_mm:
                problems.append(f"{key}: {name} -> T1w off by {error:.2f} mm ({found[0].name})")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: print the errors, return 0 when all transforms are within tolerance."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("derivatives", type=Path)
    parser.add_argument("bids", type=Path)
    parser.add_argument("--max-error-mm", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problems = check(args.derivatives, args.bids, args.max_error_mm)
    for problem in problems:
        LOGGER.error("FAIL %s", problem)
    if not problems:
        LOGGER.info("every demo transform within %.1f mm of the ground truth", args.max_error_mm)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

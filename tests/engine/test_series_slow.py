# SPDX-License-Identifier: Apache-2.0
"""Full-size proofs of series realignment (``-m slow``): simulated BOLD and DWI from the 1 mm
MNI anatomy, on several grids, contrasts and motion paths.

Targets (issue 10): BOLD at most 0.08 mm mean and 0.25 mm worst per volume, DWI 0.15 / 0.4 mm,
rotated b-vectors within 0.75 degrees, framewise displacement correlating >= 0.9 with the
truth. Errors are relative to volume 0 (the reference choice drops out).
"""

import zlib

import numpy as np
import pytest

from niaffine.data import series as S
from niaffine.engine import register_series
from niaffine.engine.motion import framewise_displacement, motion_parameters, rotate_bvecs

pytestmark = pytest.mark.slow

BOLD_CASES = {
    "3mm-oblique": {"n_volumes": 60},
    "anisotropic-ras-noisy": {"n_volumes": 80, "voxel_size": (2.5, 2.5, 3.5), "orientation": "RAS",
                              "oblique_deg": 25.0, "noise": 0.04, "scalp": 0.3, "drift": 0.08,
                              "motion": {"jumps": 3, "spikes": 1}},
    "aliased-lps": {"n_volumes": 64, "voxel_size": 3.5, "orientation": "LPS", "psf_fwhm": 0.0,
                    "motion": {"jumps": 2, "walk_mm": 0.05, "walk_deg": 0.05}},
    "t1-contrast": {"n_volumes": 60, "contrast": "T1", "voxel_size": 3.0, "oblique_deg": -10.0},
    "sagittal-pir": {"n_volumes": 50, "orientation": "PIR", "voxel_size": (3.0, 3.0, 3.6)},
    "short-12": {"n_volumes": 12},
}


def _true_fd(case):
    relative = np.stack([m @ np.linalg.inv(case.head_matrices[0]) for m in case.head_matrices])
    return framewise_displacement(motion_parameters(relative, case.series.affine,
                                                    case.series.shape))


@pytest.mark.parametrize("name", sorted(BOLD_CASES))
def test_bold_accuracy(name):
    case = S.make_bold_series(np.random.default_rng(zlib.crc32(name.encode())), **BOLD_CASES[name])
    result = register_series(case.series)
    mean, worst = S.volume_errors(case, result.matrices, step=2)
    print(f"{name}: mean {mean.mean():.4f} mm, worst volume {mean.max():.4f}, worst point "
          f"{worst.max():.3f} | {result.summary()}")
    assert mean.mean() <= 0.08 and worst.max() <= 0.25
    fd = result.framewise_displacement()
    assert np.corrcoef(fd[1:], _true_fd(case)[1:])[0, 1] >= 0.9


DWI_CASES = {
    "b1000": {},
    "two-shells-lps": {"n_b0": 5, "directions": 20, "bvalues": (1000.0, 2000.0),
                       "orientation": "LPS", "voxel_size": 2.0, "eddy_scale": 0.015},
    "two-b0": {"n_b0": 2, "directions": 30},
    "pe-along-i": {"n_b0": 6, "directions": 30, "pe_axis": 0},
    # one b=0 volume: no continuity link; the reference link ties the shell to it
    "one-b0-lps-2mm": {"n_b0": 1, "directions": 32, "orientation": "LPS", "voxel_size": 2.0,
                       "eddy_scale": 0.015},
}


@pytest.mark.parametrize("name", sorted(DWI_CASES))
def test_dwi_accuracy_and_bvecs(name):
    case = S.make_dwi_series(np.random.default_rng(zlib.crc32(name.encode())), **DWI_CASES[name])
    result = register_series(case.series, bvals=case.bvals, bvecs=case.bvecs)
    mean, worst = S.volume_errors(case, result.matrices, step=2)
    rotated = rotate_bvecs(case.bvecs, result.matrices, series_affine=case.series.affine,
                           output_affine=result.reference.affine, bvals=case.bvals,
                           pe_direction=result.pe_direction)
    angles = S.bvec_errors_deg(case, rotated, result.reference.affine, result.matrices[0])
    print(f"{name}: mean {mean.mean():.4f} mm, worst point {worst.max():.3f}, b-vectors "
          f"{np.nanmax(angles):.3f} deg | {result.summary()} | {result.links}")
    assert mean.mean() <= 0.15 and worst.max() <= 0.4
    assert np.nanmax(angles) <= 0.75

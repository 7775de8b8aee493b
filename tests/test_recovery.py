# SPDX-License-Identifier: Apache-2.0
"""Recovery proofs on real anatomy (issue 2, proof 1): slow, run with ``make test-slow``.

The nilearn MNI152 2009a T1 is pushed through known random 12-dof world affines (rotations up
to 30 degrees, translations up to 30 mm, scales +-10 %, shears +-0.05) onto another grid (LPS,
1.2 x 1.0 x 1.5 mm, oblique up to 15 degrees, cropped field of view) with a bias field and Rician
noise, by :func:`niaffine.data.synthetic.make_case` (scipy only, independent of the engine).
The error is the mean displacement over the brain between the true and recovered maps.
"""

import numpy as np
import pytest

from niaffine.data.synthetic import make_case, mean_displacement
from niaffine.engine import register

N_CASES = 10


def _errors(contrast: str, **options) -> list[float]:
    errors = []
    for i in range(N_CASES):
        case = make_case(np.random.default_rng(1000 + i), contrast=contrast)
        result = register(case.fixed, case.moving, device="cpu", **options)
        errors.append(mean_displacement(case.true_matrix, result.matrix, case.fixed_mask))
    return errors


@pytest.mark.slow
def test_t2_like_to_t1_with_mutual_information():
    """Measured: 0.08-0.10 mm on cases 0-3 (issue target <= 0.15 mm, no failures)."""
    errors = _errors("T2", metric="mi")
    assert max(errors) <= 0.15, errors


@pytest.mark.slow
def test_t1_to_t1_default_metric_within_0_2_mm():
    """Measured: 0.13-0.17 mm on cases 0-3 with the default (MI). Guards against regressions."""
    errors = _errors("T1")
    assert max(errors) <= 0.2, errors


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known gap: T1->T1 with MI stops at 0.13-0.17 mm. The moving image is resampled and "
    "coarser (1.2 x 1.0 x 1.5 mm) than the sharp 1 mm fixed image; MI then rates the blurred "
    "brain edge as slightly larger and under-estimates the zooms by ~0.2 % (identical or "
    "header-shifted images recover to 0.003 mm). ANTs' Mattes MI shows the same (0.115 mm on "
    "a case of this generator)."))
def test_t1_to_t1_within_0_1_mm():
    errors = _errors("T1")
    assert max(errors) <= 0.1, errors

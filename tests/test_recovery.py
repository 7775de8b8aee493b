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
    """Measured on this machine: 0.048-0.120 mm over the 10 cases (target <= 0.15 mm)."""
    errors = _errors("T2", metric="mi")
    assert max(errors) <= 0.15, errors


@pytest.mark.slow
def test_t1_to_t1_with_the_default_metric():
    """Measured on this machine: 0.060-0.098 mm over the 10 cases (target <= 0.1 mm).

    Before the engine left the 3 mm band at the edge of the fixed sampling region out of the
    fine levels, MI reached only 0.13-0.17 mm here: the skull-stripped brain's hard edge,
    blurred in the resampled 1.2 x 1.0 x 1.5 mm moving image, looked larger to MI (a ~0.2 %
    zoom bias).
    """
    errors = _errors("T1")
    assert max(errors) <= 0.1, errors

# SPDX-License-Identifier: Apache-2.0
"""Series pyramid levels: scaled once, coarse levels blurred from finer ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from niaffine.engine.series_levels import SeriesLevels
from niaffine.engine.volume import robust_normalise

AFFINE = np.diag([3.0, 3.0, 3.5, 1.0])


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(3)
    data = ndi.gaussian_filter(rng.random((3, 40, 44, 36)), (0, 2, 2, 2)).astype(np.float32)
    return 100.0 * data + 20.0


def test_a_coarse_level_from_a_finer_one_matches_a_direct_blur(volumes):
    """Finest first, then the coarser levels from it (variances add), as a pass asks for them;
    against each level blurred straight from the volumes: within 1 % of the range inside (the
    borders differ by the blur's truncation and edge handling, at the 2.5 sigma cut)."""
    chained = SeriesLevels(volumes, AFFINE, "series", torch.device("cpu"))
    for factor in (1, 2, 4):
        chained.volumes([0, 1, 2], 3.0 * factor, 3.0 * factor)
    assert len(chained._cache) == 3
    for factor in (2, 4):
        direct = SeriesLevels(volumes, AFFINE, "series", torch.device("cpu"))
        ours = chained.volumes([0, 1, 2], 3.0 * factor, 3.0 * factor)
        theirs = direct.volumes([0, 1, 2], 3.0 * factor, 3.0 * factor)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.affine, b.affine)
            inner = tuple(slice(3, -3) for _ in range(3))
            gap = (a.data[0][inner] - b.data[0][inner]).abs().max()
            assert float(gap) < 0.01, factor


def test_volumes_are_scaled_once_to_the_unit_range(volumes):
    """Each volume is winsorised and scaled by its own percentiles, as the engine would."""
    levels = SeriesLevels(volumes, AFFINE, "series", torch.device("cpu"))
    finest = levels.volumes([1], 3.0, 0.0)[0].data
    expected = robust_normalise(torch.from_numpy(volumes[1])[None])
    torch.testing.assert_close(finest, expected)

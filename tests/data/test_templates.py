# SPDX-License-Identifier: Apache-2.0
"""Packaged MNI152 2009a templates: paths, loads, caching and the brain mask."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from niaffine.data import templates

SHAPE = (197, 233, 189)


@pytest.mark.parametrize("kind", templates.TEMPLATE_KINDS)
def test_template_path_exists(kind):
    path = templates.template_path(kind)
    assert path.is_file()
    assert path.name.startswith(f"mni_icbm152_{kind}_")


def test_template_path_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown template kind"):
        templates.template_path("csf")


@pytest.mark.parametrize(
    "loader", [templates.load_mni_t1, templates.load_mni_gm, templates.load_mni_wm]
)
def test_loads_are_float32_ras_1mm(loader):
    img = loader()
    assert img.shape == SHAPE
    assert np.asanyarray(img.dataobj).dtype == np.float32
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(nib.affines.voxel_sizes(img.affine), 1.0)
    assert 0.0 <= float(np.asanyarray(img.dataobj).min()) < float(img.dataobj.max()) <= 255.0


def test_cached_loads_cannot_be_corrupted():
    first = templates.load_mni_t1()
    data = np.asanyarray(first.dataobj)
    reference = float(data.sum())
    data[:] = -1.0  # the caller owns its copy
    first.affine[:] = 0.0
    again = templates.load_mni_t1()
    assert float(np.asanyarray(again.dataobj).sum()) == reference
    assert np.allclose(nib.affines.voxel_sizes(again.affine), 1.0)


def test_brain_mask_covers_brain_and_ventricles():
    mask_img = templates.load_mni_brain_mask()
    mask = np.asanyarray(mask_img.dataobj)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert np.allclose(mask_img.affine, templates.load_mni_t1().affine)
    brain = mask > 0
    t1 = np.asanyarray(templates.load_mni_t1().dataobj)
    assert np.all(brain[t1 > 0])  # whole skull-stripped T1
    assert np.array_equal(ndi.binary_fill_holes(brain), brain)  # no holes
    assert 1.5e6 < brain.sum() < 2.1e6  # about 1.9 L at 1 mm
    # lateral ventricles: the low-tissue (CSF) voxels near the midline are inside the mask
    gm = np.asanyarray(templates.load_mni_gm().dataobj)
    wm = np.asanyarray(templates.load_mni_wm().dataobj)
    centre = (slice(80, 118), slice(120, 170), slice(80, 110))
    csf = (gm[centre] + wm[centre]) < 64
    assert csf.sum() > 1000
    assert np.all(brain[centre][csf & (t1[centre] > 0)])

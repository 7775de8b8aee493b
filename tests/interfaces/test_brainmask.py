# SPDX-License-Identifier: Apache-2.0
"""BrainExtraction on real anatomy: the MNI152 2009a T1 that nilearn ships."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from niaffine.interfaces.brainmask import BrainExtraction, mask_from_stripped


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_mni_brain_mask_dice(mni_files, tmp_path):
    """deepbet's mask of the (skull-stripped) 1 mm MNI T1 matches the template's own brain."""
    result = BrainExtraction(in_file=mni_files["t1_1mm"]).run(cwd=str(tmp_path))
    mask = nb.load(result.outputs.out_mask)
    reference = nb.load(mni_files["mask_1mm"])
    assert mask.shape == reference.shape
    assert np.allclose(mask.affine, reference.affine)
    assert mask.get_data_dtype() == np.uint8
    score = dice(mask.dataobj, reference.dataobj)
    assert score >= 0.95, score
    brain = np.asarray(nb.load(result.outputs.out_file).dataobj)
    assert not brain[np.asarray(mask.dataobj) == 0].any()
    assert 1500 < result.outputs.mask_volume_ml < 2200


def test_skull_stripped_input(mni_files, tmp_path):
    """An already stripped image: the mask is its filled support, no network involved."""
    result = BrainExtraction(in_file=mni_files["t1"], skull_stripped=True).run(
        cwd=str(tmp_path)
    )
    mask = np.asarray(nb.load(result.outputs.out_mask).dataobj)
    t1 = np.asarray(nb.load(mni_files["t1"]).dataobj)
    assert dice(mask, mask_from_stripped(t1)) == 1.0
    assert dice(mask, nb.load(mni_files["mask"]).dataobj) > 0.97


@pytest.mark.slow
def test_head_with_scalp(tmp_path):
    """deepbet removes a synthetic skull and scalp around the MNI brain (1 mm)."""
    from niaffine.data.synthetic import add_scalp
    from niaffine.data.templates import load_mni_brain_mask, load_mni_t1

    mask = load_mni_brain_mask()
    head = add_scalp(load_mni_t1(), np.random.default_rng(0), mask=mask)
    head.to_filename(tmp_path / "head.nii.gz")
    result = BrainExtraction(in_file=str(tmp_path / "head.nii.gz")).run(cwd=str(tmp_path))
    out = nb.load(result.outputs.out_mask)
    # the head grid pads the template grid: compare on the template's voxels
    offset = np.round(np.linalg.inv(out.affine) @ mask.affine[:, 3])[:3].astype(int)
    crop = tuple(slice(o, o + n) for o, n in zip(offset, mask.shape))
    score = dice(np.asarray(out.dataobj)[crop], mask.dataobj)
    assert score >= 0.93, score


def test_error_names_the_file(tmp_path):
    """A broken input surfaces as one line naming the interface and the file."""
    bad = tmp_path / "broken_T1w.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(Exception) as info:
        BrainExtraction(in_file=str(bad)).run(cwd=str(tmp_path))
    message = str(info.value).strip().splitlines()[-1]
    assert "BrainExtraction failed on in_file=" in message
    assert str(bad) in message
    from niaffine.errors import InputError

    assert isinstance(info.value, InputError)  # bad input keeps its class (exit codes)

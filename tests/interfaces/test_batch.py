# SPDX-License-Identifier: Apache-2.0
"""BatchAffineRegistration: subjects on different grids to one template, item by item."""

from __future__ import annotations

import json
import logging

import nibabel as nb
import numpy as np
import pytest

from niaffine.data.synthetic import mean_displacement, random_affine, warp_to_grid
from niaffine.errors import DeviceMemoryError
from niaffine.interfaces import batch as B
from niaffine.interfaces.batch import BatchAffineRegistration, SelectBatchItem
from niaffine.interfaces.common import NodeError, NodeInputError
from niaffine.interfaces.registration import AffineRegistration
from niaffine.io import load_transform

#: Voxel sizes, orientation and tilt of each moving T1w.
GRIDS = [((2.2, 2.2, 2.5), "LPS", 8.0), ((2.0, 2.4, 2.0), "RAS", -6.0),
         ((2.5, 2.5, 2.5), "LIA", 0.0)]


@pytest.fixture(scope="module")
def subjects(mni_files, tmp_path_factory):
    """Three T1w images moved by known 12-dof affines onto different grids, with masks."""
    from niaffine.data.geometry import make_grid

    folder = tmp_path_factory.mktemp("batch")
    t1, mask = nb.load(mni_files["t1"]), nb.load(mni_files["mask"])
    centre = nb.affines.apply_affine(mask.affine, np.argwhere(np.asarray(mask.dataobj)).mean(0))
    out = {"fixed": mni_files["t1"], "fixed_mask": mni_files["mask"], "moving": [],
           "masks": [], "truths": []}
    for k, (voxel, orientation, tilt) in enumerate(GRIDS):
        truth = random_affine(np.random.default_rng(30 + k), max_rotation_deg=12.0,
                              max_translation_mm=12.0, dof=12, centre=centre)
        shape = tuple(int(v) for v in np.ceil(np.array([180, 210, 180]) / np.array(voxel)))
        grid = make_grid(shape=shape, voxel_size=voxel, orientation=orientation,
                         oblique_deg=tilt, centre=nb.affines.apply_affine(truth, centre))
        for key, image, order in (("moving", t1, 3), ("masks", mask, 0)):
            path = folder / f"sub-{k:02d}_{key}.nii.gz"
            warp_to_grid(image, truth, grid, shape, order=order).to_filename(path)
            out[key].append(str(path))
        out["truths"].append(truth)
    return out


def _batch(subjects, cwd, n=3, **inputs):
    return BatchAffineRegistration(
        fixed_image=subjects["fixed"], fixed_image_mask=subjects["fixed_mask"],
        moving_images=subjects["moving"][:n], moving_image_masks=subjects["masks"][:n],
        dof=12, metric="mi", **inputs,
    ).run(cwd=str(cwd)).outputs


def _select(outputs, moving, index):
    return SelectBatchItem(
        index=index, moving_images=moving, errors=outputs.errors,
        input_errors=outputs.input_errors, composite_transforms=outputs.composite_transforms,
        inverse_composite_transforms=outputs.inverse_composite_transforms,
        warped_images=outputs.warped_images, run_facts=outputs.run_facts,
    ).run().outputs


@pytest.fixture(scope="module")
def batched(subjects, tmp_path_factory):
    return _batch(subjects, tmp_path_factory.mktemp("batched"))


def test_batch_equals_one_by_one(subjects, batched, tmp_path):
    """Measured 0.0005-0.002 mm between batched and single (float32 round-off), against
    0.054-0.061 mm from the truth."""
    mask = nb.load(subjects["fixed_mask"])
    assert batched.errors == ["", "", ""]
    for k, moving in enumerate(subjects["moving"]):
        single = AffineRegistration(
            fixed_image=subjects["fixed"], fixed_image_mask=subjects["fixed_mask"],
            moving_image=moving, moving_image_mask=subjects["masks"][k], dof=12, metric="mi",
        ).run(cwd=str(tmp_path)).outputs
        together = load_transform(batched.composite_transforms[k])
        alone = load_transform(single.composite_transform)
        assert mean_displacement(alone, together, mask) < 0.02
        assert mean_displacement(subjects["truths"][k], together, mask) < 0.3
        facts = json.loads(open(batched.run_facts[k]).read())
        assert facts["batch_size"] == 3 and facts["source"] == moving
        inverse = load_transform(batched.inverse_composite_transforms[k])
        assert np.allclose(inverse @ together, np.eye(4), atol=2e-4)
        warped = nb.load(batched.warped_images[k])
        assert warped.shape == nb.load(subjects["fixed"]).shape


def test_select_item_passes_its_outputs(subjects, batched):
    item = _select(batched, subjects["moving"], 1)
    assert item.composite_transform == batched.composite_transforms[1]
    assert item.run_facts == batched.run_facts[1]
    assert item.warped_image == batched.warped_images[1]


def test_a_bad_subject_fails_alone(subjects, tmp_path, caplog):
    """An all-zero image fails its own item; the batch is retried one by one for the rest."""
    empty = tmp_path / "sub-99_T1w.nii.gz"
    ref = nb.load(subjects["moving"][0])
    nb.Nifti1Image(np.zeros(ref.shape, np.float32), ref.affine).to_filename(empty)
    moving = [subjects["moving"][0], str(empty)]
    with caplog.at_level(logging.WARNING, logger="niaffine.interfaces.batch"):
        out = BatchAffineRegistration(
            fixed_image=subjects["fixed"], fixed_image_mask=subjects["fixed_mask"],
            moving_images=moving, dof=12,
        ).run(cwd=str(tmp_path)).outputs
    assert out.errors[0] == "" and out.errors[1] and out.input_errors == [False, True]
    assert out.composite_transforms[1] is None
    assert _select(out, moving, 0).composite_transform == out.composite_transforms[0]
    with pytest.raises(NodeInputError, match=r"moving_image=.*sub-99_T1w\.nii\.gz: ") as info:
        _select(out, moving, 1)
    assert "\n" not in str(info.value)


def test_out_of_memory_retries_in_halves(subjects, monkeypatch, tmp_path, caplog):
    """A CUDA OOM for a batch splits it (simulated here: only single items 'fit')."""
    import niaffine.engine as engine

    real = engine.register_batch
    sizes = []

    def small_gpu(fixed, moving, **options):
        sizes.append(len(moving))
        if len(moving) > 1:
            raise DeviceMemoryError("sub-00_moving.nii.gz, ...: CUDA ran out of memory on cuda")
        return real(fixed, moving, **options)

    monkeypatch.setattr(engine, "register_batch", small_gpu)
    with caplog.at_level(logging.WARNING, logger="niaffine.interfaces.batch"):
        out = _batch(subjects, tmp_path)
    assert sizes == [3, 1, 2, 1, 1]
    assert out.errors == ["", "", ""]
    assert "retrying in halves" in caplog.text
    assert all(json.loads(open(f).read())["batch_size"] == 1 for f in out.run_facts)


def test_oom_on_a_single_item_is_its_error(subjects, monkeypatch, tmp_path):
    import niaffine.engine as engine

    def no_gpu(fixed, moving, **options):
        raise DeviceMemoryError("x: CUDA ran out of memory on cuda")

    monkeypatch.setattr(engine, "register_batch", no_gpu)
    out = _batch(subjects, tmp_path, n=1)
    assert "out of memory" in out.errors[0] and out.input_errors == [False]
    with pytest.raises(NodeError, match="out of memory"):
        _select(out, subjects["moving"][:1], 0)


def test_a_bad_template_fails_the_node(subjects, tmp_path):
    bad = tmp_path / "tpl.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(Exception, match=r"fixed_image=.*tpl\.nii\.gz"):
        BatchAffineRegistration(fixed_image=str(bad), moving_images=subjects["moving"][:1]).run(
            cwd=str(tmp_path))


def test_same_named_inputs_do_not_overwrite_each_other(tmp_path):
    names = B._unique_prefixes(["/w/a/brain.nii.gz", "/w/b/brain.nii.gz"])
    assert names == ["item0_", "item1_"]

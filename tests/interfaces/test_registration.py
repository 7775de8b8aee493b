# SPDX-License-Identifier: Apache-2.0
"""AffineRegistration on real anatomy: a T2-like MNI image moved by a known rigid transform."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from niaffine.data.synthetic import mean_displacement, random_affine, warp_to_grid
from niaffine.interfaces.registration import AffineRegistration

FACT_KEYS = {"source", "target", "metric", "final_metric", "dof", "iterations_total", "iterations_per_level",
             "converged", "seed", "versions", "schema", "elapsed_s",
             "mask_volume_ml"}


@pytest.fixture(scope="module")
def rigid_case(mni_files, tmp_path_factory):
    """T2-like 2 mm image moved by a known rigid transform onto an oblique LPS grid."""
    from niaffine.data.geometry import make_grid

    folder = tmp_path_factory.mktemp("rigid")
    mask = nb.load(mni_files["mask"])
    centre = nb.affines.apply_affine(mask.affine, np.argwhere(np.asarray(mask.dataobj)).mean(0))
    truth = random_affine(np.random.default_rng(7), max_rotation_deg=10.0,
                          max_translation_mm=10.0, dof=6, centre=centre)
    grid = make_grid(shape=(90, 100, 80), voxel_size=(2.2, 2.2, 2.5), orientation="LPS",
                     oblique_deg=8.0, centre=nb.affines.apply_affine(truth, centre))
    moving = warp_to_grid(nb.load(mni_files["t2"]), truth, grid, (90, 100, 80), order=3)
    moving.to_filename(folder / "moving_T2w.nii.gz")
    return {"fixed": mni_files["t1"], "mask": mni_files["mask"],
            "moving": str(folder / "moving_T2w.nii.gz"), "truth": truth}


def test_rigid_t2_to_t1(rigid_case, tmp_path):
    from niaffine.io import load_transform

    result = AffineRegistration(
        fixed_image=rigid_case["fixed"], moving_image=rigid_case["moving"],
        fixed_image_mask=rigid_case["mask"], dof=6, metric="mi",
    ).run(cwd=str(tmp_path))
    out = result.outputs
    mask = nb.load(rigid_case["mask"])
    forward = load_transform(out.composite_transform)
    error = mean_displacement(rigid_case["truth"], forward, mask)
    assert error < 0.3, error
    inverse = load_transform(out.inverse_composite_transform)
    assert np.allclose(inverse @ forward, np.eye(4), atol=1e-4)
    assert out.forward_transforms == [out.composite_transform]
    assert out.reverse_transforms == [out.inverse_composite_transform]

    warped = nb.load(out.warped_image)
    fixed = nb.load(rigid_case["fixed"])
    assert warped.shape == fixed.shape and np.allclose(warped.affine, fixed.affine)

    facts = json.loads(open(out.run_facts).read())
    assert FACT_KEYS <= set(facts)
    assert facts["dof"] == 6 and facts["metric"] == "mi"
    assert facts["source"] == rigid_case["moving"] and facts["target"] == rigid_case["fixed"]
    assert facts["iterations_total"] == sum(facts["iterations_per_level"]) > 0
    assert len(facts["iterations_per_level"]) == len(facts["levels_mm"]) == len(facts["levels"])
    assert facts["elapsed_s"] > 0 and facts["schema"] == "niaffine-run-facts/1"
    assert facts["final_metric"] == pytest.approx(out.metric_value)
    expected_ml = np.count_nonzero(np.asarray(mask.dataobj)) * 8 / 1000.0
    assert facts["mask_volume_ml"] == pytest.approx(expected_ml)


def test_itk_file_matches_nitransforms(rigid_case, tmp_path):
    """The ITK file holds the fixed -> moving map that nitransforms reads back (RAS)."""
    import nitransforms as nt

    result = AffineRegistration(
        fixed_image=rigid_case["fixed"], moving_image=rigid_case["moving"],
        fixed_image_mask=rigid_case["mask"], dof=6, levels_mm=[4.0, 2.0],
    ).run(cwd=str(tmp_path))
    xfm = nt.linear.load(result.outputs.composite_transform, fmt="itk")
    error = mean_displacement(rigid_case["truth"], xfm.matrix, nb.load(rigid_case["mask"]))
    assert error < 0.5, error


def test_initial_moving_transform(rigid_case, tmp_path):
    """Starting from the truth (identity initialisation ignored), the result stays there."""
    from niaffine.io import save_transform

    init = tmp_path / "init_xfm.txt"
    save_transform(rigid_case["truth"], str(init), reference=nb.load(rigid_case["fixed"]),
                   moving=nb.load(rigid_case["moving"]))
    result = AffineRegistration(
        fixed_image=rigid_case["fixed"], moving_image=rigid_case["moving"],
        fixed_image_mask=rigid_case["mask"], dof=6, initial_moving_transform=str(init),
        initial_moving_transform_com=2, output_warped_image=False,
    ).run(cwd=str(tmp_path))
    facts = json.loads(open(result.outputs.run_facts).read())
    assert facts["initialization"] == "transform"
    from nipype.interfaces.base import isdefined

    from niaffine.io import load_transform

    assert not isdefined(result.outputs.warped_image)

    error = mean_displacement(rigid_case["truth"],
                              load_transform(result.outputs.composite_transform),
                              nb.load(rigid_case["mask"]))
    assert error < 0.3, error


def test_missing_gpu_is_a_clear_error(rigid_case, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(Exception, match="AffineRegistration failed on moving_image=.*moving_T2w"
                                        ".*no CUDA device"):
        AffineRegistration(fixed_image=rigid_case["fixed"], moving_image=rigid_case["moving"],
                           use_gpu=True).run(cwd=str(tmp_path))


def test_bad_moving_image_names_the_file(rigid_case, tmp_path):
    bad = tmp_path / "sub-01_FLAIR.nii.gz"
    nb.Nifti1Image(np.zeros((5, 5, 5), np.float32), np.eye(4)).to_filename(bad)
    with pytest.raises(Exception) as info:
        AffineRegistration(fixed_image=rigid_case["fixed"], moving_image=str(bad)).run(
            cwd=str(tmp_path)
        )
    last = str(info.value).strip().splitlines()[-1]
    assert f"moving_image={bad}" in last


@pytest.mark.gpu
def test_rigid_on_cuda(rigid_case, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    result = AffineRegistration(
        fixed_image=rigid_case["fixed"], moving_image=rigid_case["moving"],
        fixed_image_mask=rigid_case["mask"], dof=6, use_gpu=True,
    ).run(cwd=str(tmp_path))
    facts = json.loads(open(result.outputs.run_facts).read())
    assert facts["device"].startswith("cuda")
    from niaffine.io import load_transform

    error = mean_displacement(rigid_case["truth"],
                              load_transform(result.outputs.composite_transform),
                              nb.load(rigid_case["mask"]))
    assert error < 0.3, error

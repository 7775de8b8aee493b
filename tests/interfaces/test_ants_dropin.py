# SPDX-License-Identifier: Apache-2.0
"""AffineRegistration in place of nipype's ``ants.Registration`` in a graph written for ANTs."""

from __future__ import annotations

import json
import logging

import nibabel as nb
import numpy as np
import pytest
from nipype.interfaces import ants
from nipype.pipeline import engine as pe

from niaffine.interfaces.registration import AffineRegistration
from niaffine.interfaces.resampling import ApplyAffine
from niaffine.io import load_transform, save_transform
from tests.engine import cases as C

#: ``.inputs`` of an ANTs rigid registration node, as an fMRIPrep-style graph sets them.
ANTS_SETTINGS = {
    "transforms": ["Rigid"], "transform_parameters": [(0.1,)], "metric": ["Mattes"],
    "metric_weight": [1.0], "radius_or_number_of_bins": [32], "sampling_strategy": ["Regular"],
    "sampling_percentage": [0.25], "number_of_iterations": [[100, 50]],
    "convergence_threshold": [1e-6], "convergence_window_size": [10],
    "shrink_factors": [[2, 1]], "smoothing_sigmas": [[1.0, 0.0]], "sigma_units": ["vox"],
    "initial_moving_transform_com": 1, "write_composite_transform": False,
    "output_warped_image": True, "num_threads": 1, "float": True, "random_seed": 3,
    "use_histogram_matching": True, "winsorize_lower_quantile": 0.005,
    "winsorize_upper_quantile": 0.995,
}
FAST = {"levels_mm": [6.0, 3.0]}  # niaffine's own input: the suite's small 3 mm images


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dropin")
    fixed, mask = C.fixed_3mm()
    true = C.true_affine(12, 6, rotation_deg=8.0, translation_mm=8.0)
    moving = C.moving_image(true, voxel_size=(2.5, 3.0, 3.5), orientation="LPS", oblique_deg=6.0)
    return {"fixed": C.save(fixed, folder / "fixed.nii.gz"),
            "moving": C.save(moving, folder / "moving.nii.gz"),
            "mask": C.save(mask, folder / "mask.nii.gz"), "true": true, "dir": folder}


def _ants_graph(registration, pair, base_dir):
    """A small graph written for ANTs: registration -> ApplyTransforms-like consumers."""
    wf = pe.Workflow(name="ants_style_wf", base_dir=str(base_dir))
    wf.config["execution"]["remove_unnecessary_outputs"] = False  # the test reads them all
    reg = pe.Node(registration, name="registration")
    reg.inputs.fixed_image = [pair["fixed"]]
    reg.inputs.moving_image = [pair["moving"]]
    reg.inputs.fixed_image_masks = [pair["mask"]]
    to_fixed = pe.Node(ApplyAffine(input_image=pair["moving"], reference_image=pair["fixed"]),
                       name="to_fixed")
    to_moving = pe.Node(ApplyAffine(input_image=pair["fixed"], reference_image=pair["moving"]),
                        name="to_moving")
    wf.connect([
        (reg, to_fixed, [("forward_transforms", "transforms"),
                         ("forward_invert_flags", "invert_transform_flags")]),
        (reg, to_moving, [("reverse_transforms", "transforms"),
                          ("reverse_invert_flags", "invert_transform_flags")]),
    ])
    return wf


def test_ants_settings_are_valid_ants_inputs():
    """The settings above are what ``ants.Registration`` itself accepts; all of an ANTs
    node's inputs, its defaults included, can be handed over as they are."""
    from niaffine.interfaces.registration import ants_options

    reg = ants.Registration(**ANTS_SETTINGS, fixed_image=[__file__], moving_image=[__file__])
    assert reg.inputs.transforms == ["Rigid"] and reg.inputs.metric == ["Mattes"]
    given = {k: v for k, v in reg.inputs.get_traitsfree().items()  # not nipype's helper traits
             if not k.endswith(("_item_trait", "_stage_trait"))}
    ours = AffineRegistration(**given)
    options, files = ants_options(ours.inputs)
    assert (options.dof, options.metric, options.seed) == (6, "mi", 3)
    assert options.init == "com" and files["fixed_image"] == __file__


def test_drop_in_for_ants_registration(pair, tmp_path, caplog):
    import nitransforms as nt
    from nitransforms.resampling import apply

    caplog.set_level(logging.INFO, logger="niaffine.interfaces.registration")
    wf = _ants_graph(AffineRegistration(**ANTS_SETTINGS, **FAST), pair, tmp_path)
    graph = wf.run(plugin="Linear")
    nodes = {node.name: node for node in graph.nodes()}
    out = nodes["registration"].result.outputs
    assert "ignores these ANTs inputs: number_of_iterations" in caplog.text

    # ANTs' meaning: one collapsed affine, applied as listed
    assert out.forward_transforms == [out.composite_transform]
    assert out.forward_invert_flags == [False]
    assert out.reverse_forward_transforms == out.forward_transforms[::-1]
    assert out.reverse_forward_invert_flags == [False]
    assert out.reverse_transforms == [out.inverse_composite_transform]
    assert out.reverse_invert_flags == [False]
    matrix = load_transform(out.forward_transforms[0])
    assert C.error_mm(pair["true"], matrix) < 0.5
    facts = json.loads(open(out.run_facts).read())
    assert facts["dof"] == 6 and facts["metric"] == "mi" and facts["seed"] == 3  # Rigid, Mattes

    # the consumer's image is the moving image through the transform, as nitransforms applies it
    moved = nb.load(nodes["to_fixed"].result.outputs.output_image)
    fixed = nb.load(pair["fixed"])
    xfm = nt.linear.load(out.forward_transforms[0], fmt="itk")
    expected = np.asarray(apply(xfm, nb.load(pair["moving"]), reference=fixed, order=1).dataobj)
    got = np.asarray(moved.dataobj)
    inside = np.asarray(nb.load(pair["mask"]).dataobj) > 0
    scale = np.abs(expected[inside]).max()
    assert moved.shape == fixed.shape and np.allclose(moved.affine, fixed.affine)
    assert np.abs(got[inside] - expected[inside]).max() < 0.02 * scale
    assert np.abs(np.asarray(nb.load(out.warped_image).dataobj)[inside]
                  - expected[inside]).max() < 0.02 * scale

    # and the reverse list brings the fixed image onto the moving grid
    back = nb.load(nodes["to_moving"].result.outputs.output_image)
    assert back.shape == nb.load(pair["moving"]).shape


def test_inverse_warped_image_and_initial_transform_list(pair, tmp_path):
    """``initial_moving_transform`` as a list with invert flags; ``output_inverse_warped_image``."""
    fixed, moving = nb.load(pair["fixed"]), nb.load(pair["moving"])
    start = pair["true"].copy()
    start[:3, 3] += (1.5, -1.0, 0.5)
    half = np.eye(4)
    half[:3, 3] = (3.0, 0.0, 0.0)
    # ANTs' order: [half (inverted), first] composes to first @ inv(half) == start
    first = save_transform(start @ half, pair["dir"] / "first.txt")
    second = save_transform(half, pair["dir"] / "second.txt")
    result = AffineRegistration(
        fixed_image=[pair["fixed"]], moving_image=pair["moving"], transforms=["Rigid"],
        initial_moving_transform=[str(second), str(first)],
        invert_initial_moving_transform=[True, False],
        output_warped_image="moving_in_fixed.nii.gz", output_inverse_warped_image=True, **FAST,
    ).run(cwd=str(tmp_path))
    out = result.outputs
    facts = json.loads(open(out.run_facts).read())
    assert facts["initialization"] == "transform"
    assert C.error_mm(pair["true"], load_transform(out.composite_transform)) < 0.5
    assert out.warped_image == str(tmp_path / "moving_in_fixed.nii.gz")
    inverse = nb.load(out.inverse_warped_image)
    assert inverse.shape == moving.shape and np.allclose(inverse.affine, moving.affine)
    assert nb.load(out.warped_image).shape == fixed.shape


@pytest.mark.parametrize(("inputs", "words"), [
    ({"fixed_image": ["{fixed}", "{moving}"]}, "multi-metric ANTs"),
    ({"transforms": ["Rigid", "SyN"]}, "SyN is deformable"),
    ({"metric": [["MI", "CC"]]}, "several metrics in one stage"),
    ({"transforms": ["Affine"], "dof": 6}, "disagree"),
    ({"initial_moving_transform": ["{xfm}", "{xfm}"],
      "invert_initial_moving_transform": [True]}, "1 invert flags for 2"),
], ids=["two-fixed", "syn", "multi-metric", "dof-conflict", "flags"])
def test_ants_inputs_without_meaning_here_are_clear_errors(pair, tmp_path, inputs, words):
    xfm = save_transform(np.eye(4), pair["dir"] / "identity.txt")
    given = {"fixed_image": pair["fixed"], "moving_image": pair["moving"], **FAST}
    for key, value in inputs.items():
        given[key] = ([v.format(xfm=xfm, **pair) for v in value]
                      if isinstance(value, list) and value and isinstance(value[0], str)
                      else value)
    with pytest.raises(Exception, match=words) as info:
        AffineRegistration(**given).run(cwd=str(tmp_path))
    assert "AffineRegistration failed on" in str(info.value).strip().splitlines()[-1]
    assert list(tmp_path.glob("*.txt")) == []


@pytest.mark.parametrize(("transforms", "dof"), [
    (["Translation"], 3), (["Rigid"], 6), (["Similarity"], 7), (["Affine"], 12),
    (["Rigid", "Affine"], 12),
])
def test_transforms_set_the_degrees_of_freedom(pair, transforms, dof):
    from niaffine.interfaces.registration import ants_options

    reg = AffineRegistration(fixed_image=[pair["fixed"]], moving_image=[pair["moving"]],
                             transforms=transforms, metric=["MeanSquares"],
                             fixed_image_masks=["NULL"])
    options, files = ants_options(reg.inputs)
    assert options.dof == dof and options.metric == "mse"
    assert files["fixed_image"] == pair["fixed"] and files["fixed_image_mask"] is None

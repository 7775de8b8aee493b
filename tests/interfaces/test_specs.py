# SPDX-License-Identifier: Apache-2.0
"""Input and output trait metadata of every interface, in the style of nipype's auto tests."""

from __future__ import annotations

import pytest

from niaffine.interfaces.antscompat import IGNORED
from niaffine.interfaces.brainmask import BrainExtraction
from niaffine.interfaces.reference import ReferenceVolume
from niaffine.interfaces.registration import AffineRegistration
from niaffine.interfaces.reports import RegistrationReport
from niaffine.interfaces.resampling import ApplyAffine
from niaffine.interfaces.templates import TemplateSource

from .conftest import check_spec

SPECS = {
    AffineRegistration: (
        {
            "fixed_image": {"mandatory": True, "exists": True},
            "moving_image": {"mandatory": True, "exists": True},
            "fixed_image_mask": {"exists": True, "mandatory": None},
            "moving_image_mask": {"exists": True, "mandatory": None},
            "dof": {"usedefault": True, "default": 12},
            "metric": {"usedefault": True, "default": "auto"},
            "initial_moving_transform": {"exists": True},
            "initial_moving_transform_com": {"usedefault": True, "default": 1},
            "rotation_search": {"usedefault": True, "default": "auto"},
            "preset": {"usedefault": True, "default": "default"},
            "levels_mm": {"usedefault": None},
            "random_seed": {"usedefault": True, "default": 0},
            "num_threads": {"usedefault": True, "nohash": True, "default": 1},
            "device": {"usedefault": True, "default": "cpu"},
            "use_gpu": {"usedefault": True, "default": False},
            "output_warped_image": {"usedefault": True, "default": True},
            "output_inverse_warped_image": {"usedefault": True, "default": False},
            "fixed_image_masks": {"xor": ["fixed_image_mask"]},
            "moving_image_masks": {"xor": ["moving_image_mask"]},
            "invert_initial_moving_transform": {"requires": ["initial_moving_transform"]},
            "transforms": {"usedefault": None},
            **{name: {"nohash": True} for name in IGNORED},
        },
        {
            "forward_transforms": {},
            "forward_invert_flags": {},
            "reverse_forward_transforms": {},
            "reverse_forward_invert_flags": {},
            "reverse_transforms": {},
            "reverse_invert_flags": {},
            "inverse_warped_image": {},
            "composite_transform": {"exists": True},
            "inverse_composite_transform": {"exists": True},
            "warped_image": {},
            "metric_value": {},
            "elapsed_time": {},
            "run_facts": {"exists": True},
        },
    ),
    ApplyAffine: (
        {
            "input_image": {"mandatory": True, "exists": True},
            "reference_image": {"mandatory": True, "exists": True},
            "transforms": {"usedefault": True},
            "invert_transform_flags": {"mandatory": None},
            "interpolation": {"usedefault": True, "default": "Linear"},
            "default_value": {"usedefault": True, "default": 0.0},
            "output_image": {"mandatory": None},
            "out_postfix": {"usedefault": True, "default": "_resampled"},
            "num_threads": {"usedefault": True, "nohash": True},
            "device": {"usedefault": True, "default": "cpu"},
            "use_gpu": {"usedefault": True, "default": False},
        },
        {"output_image": {"exists": True}},
    ),
    BrainExtraction: (
        {
            "in_file": {"mandatory": True, "exists": True},
            "skull_stripped": {"usedefault": True, "default": False},
            "threshold": {"usedefault": True, "default": 0.5},
            "device": {"usedefault": True, "default": "cpu"},
            "use_gpu": {"usedefault": True, "default": False},
            "num_threads": {"usedefault": True, "default": 1},
        },
        {"out_mask": {"exists": True}, "out_file": {"exists": True}, "mask_volume_ml": {}},
    ),
    ReferenceVolume: (
        {
            "in_file": {"mandatory": True, "exists": True},
            "in_bval": {"exists": True, "mandatory": None},
            "n_volumes": {"usedefault": True, "default": 10},
            "b0_threshold": {"usedefault": True, "default": 50.0},
        },
        {"out_file": {"exists": True}, "volumes": {}},
    ),
    RegistrationReport: (
        {
            "fixed_image": {"mandatory": True, "exists": True},
            "moving_image": {"exists": True, "mandatory": None},
            "mask_file": {"exists": True, "mandatory": None},
            "n_cuts": {"usedefault": True, "default": 7},
            "title": {"mandatory": None},
            "out_report": {"mandatory": None},
        },
        {"out_report": {"exists": True}},
    ),
    TemplateSource: (
        {
            "template": {"usedefault": True, "default": "MNI152NLin2009aSym"},
            "template_mask": {"exists": True, "mandatory": None},
            "output_resolution": {"mandatory": None},
        },
        {
            "template_file": {"exists": True},
            "brain_file": {"exists": True},
            "mask_file": {"exists": True},
            "grid_file": {"exists": True},
            "grid_mask_file": {"exists": True},
        },
    ),
}


@pytest.mark.parametrize("interface", list(SPECS), ids=lambda cls: cls.__name__)
def test_input_spec(interface):
    check_spec(interface.input_spec, SPECS[interface][0])


@pytest.mark.parametrize("interface", list(SPECS), ids=lambda cls: cls.__name__)
def test_output_spec(interface):
    check_spec(interface.output_spec, SPECS[interface][1])


@pytest.mark.parametrize("interface", list(SPECS), ids=lambda cls: cls.__name__)
def test_no_unexpected_inputs(interface):
    """Every input is listed above (so a new input gets a spec line and a decision)."""
    listed = set(SPECS[interface][0])
    defined = set(interface.input_spec().copyable_trait_names()) - {"trait_added",
                                                                      "trait_modified"}
    assert defined - listed <= set(), defined - listed


@pytest.mark.parametrize("interface", [AffineRegistration, BrainExtraction, ApplyAffine])
def test_gpu_interfaces_mark_nodes(interface):
    """Nipype's MultiProc counts a node as a GPU node through its ``use_gpu`` input."""
    from nipype.pipeline import engine as pe

    node = pe.Node(interface(), name="node")
    assert not node.is_gpu_node()
    node.inputs.use_gpu = True
    assert node.is_gpu_node()

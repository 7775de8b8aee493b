# SPDX-License-Identifier: Apache-2.0
"""niaffine.choices is the one home of the choice sets: the engine implements each name, and
the command lines and the interfaces' traits offer exactly these sets."""

import importlib
import subprocess
import sys

import pytest

from niaffine import choices


def _module(name):
    return importlib.import_module(name)  # engine.register is shadowed by the function


def test_importing_the_choices_loads_neither_torch_nor_nipype():
    code = ("import sys, niaffine.choices, niaffine.bidsapp.parser\n"
            "assert 'torch' not in sys.modules and 'nipype' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_engine_implements_every_choice():
    metrics = _module("niaffine.engine.metrics")
    series_passes = _module("niaffine.engine.series_passes")
    assert set(metrics.POINT_METRICS) | {"lncc"} == set(choices.METRICS)
    assert set(series_passes.SERIES_METRICS) == set(choices.SERIES_METRICS)
    assert _module("niaffine.engine.params").DOF_GROUPS is choices.DOF_GROUPS
    assert _module("niaffine.engine.initialise").INITS is choices.INITS
    assert _module("niaffine.engine.register").SAMPLING_REGIONS is choices.SAMPLING_REGIONS
    assert set(_module("niaffine.engine.resample").ORDERS) == set(choices.INTERPOLATIONS.values())
    assert set(choices.ANTS_INTERPOLATIONS.values()) == set(choices.INTERPOLATIONS)
    assert set(choices.ANTS_INIT_CODES.values()) == set(choices.INITS)


@pytest.mark.parametrize("dof", choices.DOFS)
def test_every_dof_is_accepted_by_the_engine_and_the_test_data(dof):
    import numpy as np

    from niaffine.data.geometry import random_affine

    assert _module("niaffine.engine.params").active_groups(dof, 3)
    assert random_affine(np.random.default_rng(0), dof=dof).shape == (4, 4)


def _choices(parser, flag):
    return parser._option_string_actions[flag].choices  # noqa: SLF001 - no public map


def test_the_bids_app_offers_the_choices():
    from niaffine.bidsapp.parser import build_parser

    parser = build_parser()
    assert _choices(parser, "--metric") == choices.METRIC_CHOICES
    assert _choices(parser, "--dof") == choices.DOFS_TEMPLATE
    assert _choices(parser, "--dof-coreg") == choices.DOFS
    assert _choices(parser, "--modalities") == choices.MODALITIES
    assert parser.parse_args(["a", "b", "participant"]).output_spaces == list(choices.DEFAULT_SPACES)


def test_the_command_lines_offer_the_choices():
    from niaffine import cli, realign
    from niaffine.devices import device_argument

    register, series = cli.build_parser(), realign.build_parser()
    assert _choices(register, "--metric") == choices.METRIC_CHOICES
    assert cli.METRIC_CHOICES is choices.METRIC_CHOICES
    assert _choices(register, "--dof") == choices.ALL_DOFS
    assert _choices(register, "--freeze") == choices.PARAMETER_GROUPS
    assert _choices(register, "--interpolation") == tuple(choices.INTERPOLATIONS)
    assert _choices(register, "--preset") == choices.PRESET_NAMES
    assert _choices(register, "--sampling") == choices.SAMPLING_REGIONS
    assert _choices(series, "--metric") == choices.SERIES_METRIC_CHOICES
    assert _choices(series, "--dof") == choices.DOFS
    assert set(_choices(series, "--interpolation")) <= set(choices.INTERPOLATIONS)
    for parser in (register, series):
        assert parser._option_string_actions["--device"].type is device_argument  # noqa: SLF001
    defaults = register.parse_args(["f.nii", "m.nii", "-o", "x.txt"])
    assert (defaults.dof, defaults.init) == (choices.DEFAULT_DOF, "com")
    assert defaults.init in choices.INITS


def _values(spec, name):
    return set(_enum(spec, name).values) - {None}


def _enum(spec, name):
    """The ``traits.Enum`` of input ``name`` (the first of a ``traits.Either``)."""
    handler = spec.class_traits()[name].handler
    return handler.handlers[0] if getattr(handler, "handlers", None) else handler


def test_the_interfaces_traits_offer_the_choices():
    from niaffine.interfaces import registration, resampling, series

    engine = registration.EngineInputSpec
    assert _values(engine, "dof") == set(choices.DOFS)
    assert _values(engine, "metric") == set(choices.METRIC_CHOICES)
    assert _values(engine, "preset") == set(choices.PRESET_NAMES)
    assert _values(engine, "initial_moving_transform_com") == set(choices.ANTS_INIT_CODES)
    assert registration.INIT_FROM_ANTS == dict(choices.ANTS_INIT_CODES)
    assert _values(resampling.ApplyAffine.input_spec, "interpolation") == set(
        choices.ANTS_INTERPOLATIONS)
    realignment = series.SeriesRealignment.input_spec
    assert _values(realignment, "dof") == set(choices.DOFS)
    assert _values(realignment, "metric") == set(choices.SERIES_METRIC_CHOICES)
    assert _values(series.ApplySeriesTransforms.input_spec, "interpolation") == set(
        choices.ANTS_INTERPOLATIONS)


def test_affine_registration_offers_the_choices():
    """The ANTs drop-in's own values (besides ANTs' spellings) and defaults are the choices'."""
    from niaffine.interfaces.batch import BatchAffineRegistration
    from niaffine.interfaces.registration import AffineRegistration

    for interface in (AffineRegistration, BatchAffineRegistration):
        spec = interface.input_spec
        assert tuple(_enum(spec, "dof").values) == choices.with_default(
            choices.DEFAULT_DOF, choices.DOFS)
        assert tuple(_enum(spec, "metric").values) == choices.METRIC_CHOICES
        assert tuple(_enum(spec, "preset").values) == choices.PRESET_NAMES
        assert _values(spec, "initial_moving_transform_com") == set(choices.ANTS_INIT_CODES)
        inputs = interface().inputs
        assert (inputs.dof, inputs.metric, inputs.preset) == (choices.DEFAULT_DOF, "auto",
                                                              "default")
        assert choices.ANTS_INIT_CODES[inputs.initial_moving_transform_com] == "com"
        assert (inputs.device, inputs.use_gpu) == ("cpu", False)
        assert ", ".join(choices.DEVICE_CHOICES) in spec.class_traits()["device"].desc


def test_with_default_refuses_a_default_outside_the_set():
    with pytest.raises(ValueError, match="not one of"):
        choices.with_default(5, choices.DOFS)


def test_the_bids_layers_use_the_modalities():
    from niaffine.bidsapp import derivatives, queries
    from niaffine.workflows import base

    assert dict(choices.DATATYPES) == derivatives.DATATYPE
    assert queries.DATATYPES == {m: choices.DATATYPES[m] for m in choices.MODALITIES}
    assert set(queries.NDIM) == set(choices.DATATYPES)
    assert base.IMAGE_SUFFIXES == choices.MODALITIES
    assert base.SERIES_SUFFIXES == choices.SERIES_MODALITIES
    assert not hasattr(base, "KNOWN_TEMPLATES") and not hasattr(base, "select_template_space")

# SPDX-License-Identifier: Apache-2.0
"""Affine registration of two image files with niaffine's engine, a drop-in for ANTs.

:class:`AffineRegistration` takes the ``.inputs`` of nipype's ANTs ``Registration`` where
the meaning is the same (see :mod:`niaffine.interfaces.antscompat` for what is used, what
is ignored with a notice and what is an error) and gives its outputs with ANTs' meaning:
``forward_transforms`` with ``forward_invert_flags`` resample the moving image into fixed
space with ``ApplyTransforms`` (or :class:`~niaffine.interfaces.resampling.ApplyAffine`),
``reverse_transforms`` with ``reverse_invert_flags`` the fixed image into moving space.
The run itself is :func:`niaffine.service.register_files`.
"""

from __future__ import annotations

import logging

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from niaffine.presets import PRESETS

from . import antscompat
from .common import node_errors, resolve_device

LOGGER = logging.getLogger("niaffine.interfaces.registration")

#: ANTs' ``initial_moving_transform_com`` codes and the engine's ``init`` names.
INIT_FROM_ANTS = {0: "geometric", 1: "com", 2: "identity"}
#: Engine metric names (``auto``: the preset's).
METRICS = ("auto", "mi", "nmi", "cr", "ncc", "lncc", "mse")
_MULTI = ("multi-metric ANTs registration (several image pairs) has no meaning in "
          "AffineRegistration: give one image (niaffine.engine.register takes channel lists)")
_ANTS_METRICS = traits.Enum(*antscompat.METRIC_OF_ANTS, *antscompat.UNMAPPED_METRICS)


class EngineInputSpec(BaseInterfaceInputSpec):
    """Inputs shared by the interfaces that run the registration engine."""

    fixed_image = File(exists=True, mandatory=True, desc="image the moving image is aligned to")
    fixed_image_mask = File(exists=True, desc="mask on the fixed grid: metric evaluated inside")
    dof = traits.Enum(12, 9, 7, 6, 3, usedefault=True, desc="degrees of freedom")
    metric = traits.Enum(
        *METRICS, usedefault=True,
        desc="similarity metric (auto: the preset's, mutual information by default)",
    )
    preset = traits.Enum(
        *PRESETS, usedefault=True,
        desc="engine preset: default (within subject), template (brain to template), fast",
    )
    initial_moving_transform_com = traits.Enum(
        1, 0, 2, usedefault=True,
        desc="initial alignment without a transform: 0 geometric centres, 1 centres of mass, "
        "2 identity (ANTs' codes)",
    )
    random_seed = traits.Int(0, usedefault=True, desc="random seed")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch CPU threads")
    device = traits.Str("cpu", usedefault=True, desc="torch device: cpu, cuda, cuda:N or auto")
    use_gpu = traits.Bool(
        False, usedefault=True, desc="run on CUDA (marks the node for nipype's GPU slots)"
    )
    output_warped_image = traits.Bool(
        True, usedefault=True, desc="write the moving image(s) resampled onto the fixed grid"
    )


class _AffineRegistrationInputSpec(EngineInputSpec):
    fixed_image = InputMultiObject(
        File(exists=True), mandatory=True,
        desc="image the moving image is aligned to (ANTs' one-element list accepted)")
    moving_image = InputMultiObject(
        File(exists=True), mandatory=True, desc="image that is aligned (or a one-element list)")
    fixed_image_mask = File(exists=True, xor=["fixed_image_masks"],
                            desc="mask on the fixed grid: metric evaluated inside")
    fixed_image_masks = InputMultiObject(
        traits.Either(File(exists=True), traits.Enum("NULL")), xor=["fixed_image_mask"],
        desc="ANTs' per-stage fixed masks: one mask (repeated per stage) or NULL")
    moving_image_mask = File(exists=True, xor=["moving_image_masks"],
                             desc="mask on the moving grid")
    moving_image_masks = InputMultiObject(
        traits.Either(File(exists=True), traits.Enum("NULL")), xor=["moving_image_mask"],
        desc="ANTs' per-stage moving masks: one mask (repeated per stage) or NULL")
    initial_moving_transform = InputMultiObject(
        File(exists=True),
        desc="initial transform(s) (ITK/FSL/LTA), fixed -> moving points; a list composes in "
        "ANTs' order (the first listed applies first to fixed points)")
    invert_initial_moving_transform = InputMultiObject(
        traits.Bool(), requires=["initial_moving_transform"],
        desc="invert the matching initial transform first")
    metric = traits.Either(
        traits.Enum(*METRICS), traits.List(traits.Either(_ANTS_METRICS,
                                                         traits.List(_ANTS_METRICS))),
        default="auto", usedefault=True,
        desc="similarity metric (auto: the preset's), or ANTs' per-stage list (the last "
        "stage's: MI/Mattes -> mi, GC -> ncc, CC -> lncc, MeanSquares -> mse)")
    transforms = traits.List(
        traits.Str(), desc="ANTs stages: Translation 3, Rigid 6, Similarity 7, Affine 12 dof "
        "(the most of any stage, when dof keeps its default); deformable stages are an error")
    output_warped_image = traits.Either(
        traits.Bool(), File(), default=True, usedefault=True,
        desc="write the moving image resampled onto the fixed grid (True, False or a name)")
    output_inverse_warped_image = traits.Either(
        traits.Bool(), File(), default=False, usedefault=True,
        desc="write the fixed image resampled onto the moving grid (True, False or a name)")
    rotation_search = traits.Either(
        traits.Enum("auto"), traits.Bool, default="auto", usedefault=True,
        desc="search coarse rotations: 'auto' (when badly misaligned), True (always), False",
    )
    levels_mm = traits.List(
        traits.Float, minlen=1, desc="pyramid spacings in mm, coarse to fine (engine default)"
    )


for _name, _why in antscompat.IGNORED.items():
    _AffineRegistrationInputSpec.add_class_trait(
        _name, traits.Any(nohash=True, desc=f"ANTs option, ignored with a notice: {_why}"))


class _AffineRegistrationOutputSpec(TraitedSpec):
    forward_transforms = traits.List(
        File(exists=True), desc="[composite_transform]: moving into fixed space, ANTs' order")
    forward_invert_flags = traits.List(traits.Bool(), desc="[False]")
    reverse_forward_transforms = traits.List(
        File(exists=True), desc="forward_transforms reversed (a one-item list: the same)")
    reverse_forward_invert_flags = traits.List(traits.Bool(), desc="[False]")
    reverse_transforms = traits.List(
        File(exists=True), desc="[inverse_composite_transform]: fixed into moving space")
    reverse_invert_flags = traits.List(
        traits.Bool(), desc="[False]: the file is the inverse already (ANTs lists its forward "
        "affine with True, which means the same)")
    composite_transform = File(
        exists=True, desc="ITK text transform, fixed -> moving points (moving into fixed space)"
    )
    inverse_composite_transform = File(exists=True, desc="ITK text transform, the inverse")
    warped_image = File(desc="moving image resampled onto the fixed grid")
    inverse_warped_image = File(desc="fixed image resampled onto the moving grid")
    metric_value = traits.Float(desc="final metric value")
    elapsed_time = traits.Float(desc="seconds spent registering")
    run_facts = File(exists=True, desc="JSON file of run facts (niaffine.runfacts.RunFacts)")


def _given(value):
    return value if isdefined(value) else None


def ants_options(inputs):
    """:class:`~niaffine.service.RegistrationOptions` and file inputs from the interface's.

    Returns
    -------
    options : RegistrationOptions
    files : dict
        ``fixed_image``, ``moving_image``, ``fixed_image_mask``, ``moving_image_mask``
        (single paths or ``None``).
    """
    from niaffine.service import RegistrationOptions

    ignored = antscompat.ignored_inputs(inputs)
    if ignored:
        LOGGER.info("AffineRegistration ignores these ANTs inputs: %s", "; ".join(ignored))
    files = {
        "fixed_image": antscompat.single(inputs.fixed_image, "fixed_image", why=_MULTI),
        "moving_image": antscompat.single(inputs.moving_image, "moving_image", why=_MULTI),
        "fixed_image_mask": antscompat.mask_of(_given(inputs.fixed_image_mask),
                                               _given(inputs.fixed_image_masks),
                                               "fixed_image_masks"),
        "moving_image_mask": antscompat.mask_of(_given(inputs.moving_image_mask),
                                                _given(inputs.moving_image_masks),
                                                "moving_image_masks"),
    }
    options = RegistrationOptions(
        dof=antscompat.dof_of_transforms(_given(inputs.transforms) or [], inputs.dof),
        metric=antscompat.metric_of(inputs.metric),
        init=INIT_FROM_ANTS[inputs.initial_moving_transform_com],
        initial_transforms=tuple(_given(inputs.initial_moving_transform) or ()),
        invert_initial=tuple(_given(inputs.invert_initial_moving_transform) or ()),
        rotation_search=inputs.rotation_search,
        levels_mm=tuple(_given(inputs.levels_mm) or ()) or None,
        preset=inputs.preset,
        device=resolve_device(inputs.device, inputs.use_gpu),
        seed=inputs.random_seed,
        num_threads=inputs.num_threads,
    )
    return options, files


class AffineRegistration(SimpleInterface):
    """Affine (3 to 12 dof) registration with niaffine's PyTorch engine.

    A drop-in for nipype's ``ants.Registration`` in affine graphs: the same input names
    (``fixed_image`` as a one-element list, ``transforms=["Rigid"]``, ``metric=["Mattes"]``,
    ``initial_moving_transform`` with ``invert_initial_moving_transform``...) and the same
    outputs (``forward_transforms`` + ``forward_invert_flags`` for ``ApplyTransforms``).

    Examples
    --------
    >>> reg = AffineRegistration(dof=6, metric="mi")
    >>> reg.inputs.initial_moving_transform_com, reg.inputs.use_gpu
    (1, False)
    >>> reg = AffineRegistration(fixed_image_masks=["NULL"], transforms=["Rigid", "Affine"],
    ...                          metric=["Mattes", "Mattes"], number_of_iterations=[[10], [10]])
    """

    input_spec = _AffineRegistrationInputSpec
    output_spec = _AffineRegistrationOutputSpec

    def _run_interface(self, runtime):
        from niaffine.service import OutputPaths, register_files

        inputs = self.inputs
        named = {"moving_image": inputs.moving_image, "fixed_image": inputs.fixed_image,
                 "fixed_image_mask": _given(inputs.fixed_image_mask),
                 "initial_moving_transform": _given(inputs.initial_moving_transform)}
        named = {k: ", ".join(v) if isinstance(v, list) else v for k, v in named.items()}
        with node_errors("AffineRegistration", **named):
            options, files = ants_options(inputs)
            paths = OutputPaths.named_after(
                files["moving_image"], runtime.cwd, warped=inputs.output_warped_image,
                inverse_warped=inputs.output_inverse_warped_image)
            _, facts = register_files(files["fixed_image"], files["moving_image"],
                                      outputs=paths, options=options,
                                      fixed_image_mask=files["fixed_image_mask"],
                                      moving_image_mask=files["moving_image_mask"])
        forward, reverse = str(paths.transform), str(paths.inverse_transform)
        self._results.update(
            forward_transforms=[forward], forward_invert_flags=[False],
            reverse_forward_transforms=[forward], reverse_forward_invert_flags=[False],
            reverse_transforms=[reverse], reverse_invert_flags=[False],
            composite_transform=forward, inverse_composite_transform=reverse,
            metric_value=facts.final_metric, elapsed_time=facts.elapsed_s,
            run_facts=str(paths.run_facts),
        )
        for name in ("warped_image", "inverse_warped_image"):
            if getattr(paths, name) is not None:
                self._results[name] = str(getattr(paths, name))
        return runtime

# SPDX-License-Identifier: Apache-2.0
"""Inputs of nipype's ANTs ``Registration`` read the way niaffine's engine can use them.

:class:`~niaffine.interfaces.registration.AffineRegistration` accepts the ``.inputs`` of a
``Registration`` node written for ANTs. Where an ANTs input means the same here it is used
(a one-element ``fixed_image`` list, ``initial_moving_transform`` lists with their invert
flags, mask spellings, ``transforms`` as degrees of freedom, ``metric`` names); where it has
no meaning for niaffine's optimiser (iteration counts, shrink factors, smoothing sigmas...)
it is accepted and ignored with one logged notice; where it asks for something niaffine
cannot do (a deformable stage, several metrics in one stage) it is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from niaffine.errors import InputError

#: Degrees of freedom of ANTs' linear transform stages.
DOF_OF_TRANSFORM = {"Translation": 3, "Rigid": 6, "Similarity": 7, "Affine": 12,
                    "CompositeAffine": 12, "GenericAffine": 12}
#: ANTs' deformable stages: niaffine is affine only.
DEFORMABLE = ("SyN", "BSplineSyN", "BSpline", "GaussianDisplacementField",
              "BSplineDisplacementField", "TimeVaryingVelocityField",
              "TimeVaryingBSplineVelocityField", "Exponential", "BSplineExponential")
#: ANTs metric names and the engine's (ANTs' ``CC`` is a local, neighbourhood correlation).
METRIC_OF_ANTS = {"MI": "mi", "Mattes": "mi", "GC": "ncc", "CC": "lncc", "MeanSquares": "mse"}
#: ANTs metrics without an engine counterpart.
UNMAPPED_METRICS = ("Demons",)
#: ANTs inputs accepted and ignored, and why they have no meaning here.
IGNORED = {
    "number_of_iterations": "each level stops on its own convergence test",
    "convergence_threshold": "each level stops on its own convergence test",
    "convergence_window_size": "each level stops on its own convergence test",
    "shrink_factors": "the pyramid is set in mm (levels_mm)",
    "smoothing_sigmas": "the pyramid is set in mm (levels_mm)",
    "sigma_units": "the pyramid is set in mm (levels_mm)",
    "sampling_strategy": "the metric uses seeded random samples",
    "sampling_percentage": "the metric uses seeded random samples",
    "metric_weight": "one metric",
    "radius_or_number_of_bins": "the engine's metrics have fixed bins/radius",
    "transform_parameters": "the engine's optimiser sets its own steps",
    "use_estimate_learning_rate_once": "the engine's optimiser sets its own steps",
    "use_histogram_matching": "no histogram matching",
    "winsorize_lower_quantile": "no intensity clipping",
    "winsorize_upper_quantile": "no intensity clipping",
    "interpolation": "warped images are resampled linearly",
    "collapse_output_transforms": "the output is always one affine transform",
    "initialize_transforms_per_stage": "the stages are one optimisation",
    "restrict_deformation": "use the engine's frozen parameter groups instead",
    "output_transform_prefix": "output names derive from the moving image",
    "write_composite_transform": "composite_transform is always written (ITK text)",
    "float": "the engine always computes in float32",
    "dimension": "taken from the images",
    "restore_state": "no restorable state",
    "save_state": "no restorable state",
    "verbose": "logging levels decide",
    "args": "no command line",
    "environ": "no command line",
}


def single(value, role: str, *, why: str):
    """The one item of a one-element list, or a plain value; a longer list is an error.

    A list repeating one value (per-stage masks for two stages) counts as one item.

    Examples
    --------
    >>> single(["/a.nii"], "fixed_image", why="multi-metric ANTs stages")
    '/a.nii'
    >>> single(["/m.nii", "/m.nii"], "fixed_image_masks", why="")
    '/m.nii'
    >>> single(["/a.nii", "/b.nii"], "fixed_image", why="one image per side")
    Traceback (most recent call last):
    ...
    niaffine.errors.InputError: fixed_image lists 2 different items (/a.nii, /b.nii): one image per side
    """
    if value is None or isinstance(value, str | Path):
        return value
    items = list(value)
    if len({str(v) for v in items}) > 1:
        raise InputError(f"{role} lists {len(items)} different items "
                         f"({', '.join(map(str, items))}): {why}")
    return items[0] if items else None


def mask_of(single_mask, per_stage, role: str):
    """The mask from ANTs' ``*_image_mask`` or ``*_image_masks`` spelling (``NULL``: none).

    >>> mask_of(None, ["NULL"], "fixed_image_masks") is None
    True
    >>> mask_of("/m.nii", None, "fixed_image_mask")
    '/m.nii'
    """
    if single_mask is not None and per_stage:
        raise InputError(f"give {role[:-1]} or {role}, not both")
    mask = single_mask or single(per_stage or None, role,
                                 why="niaffine runs one pyramid: give one mask for all stages")
    return None if mask in (None, "NULL") else mask


def dof_of_transforms(transforms: Sequence[str], dof: int, *, default_dof: int = 12) -> int:
    """Degrees of freedom from ANTs' ``transforms`` stages (the most of any stage).

    ``dof`` is the interface's own input: when it keeps its default, the stages decide;
    otherwise it must agree with them.

    Examples
    --------
    >>> dof_of_transforms(["Rigid"], 12), dof_of_transforms(["Rigid", "Affine"], 12)
    (6, 12)
    >>> dof_of_transforms([], 6)
    6
    >>> dof_of_transforms(["SyN"], 12)
    Traceback (most recent call last):
    ...
    niaffine.errors.InputError: transforms=['SyN']: niaffine is affine only (SyN is deformable); \
run ANTs for that stage
    """
    if not transforms:
        return int(dof)
    deformable = [t for t in transforms if t not in DOF_OF_TRANSFORM]
    if deformable:
        kind = ("deformable" if deformable[0] in DEFORMABLE
                else f"not one of {', '.join(DOF_OF_TRANSFORM)}")
        raise InputError(f"transforms={list(transforms)}: niaffine is affine only "
                         f"({deformable[0]} is {kind}); run ANTs for that stage")
    wanted = max(DOF_OF_TRANSFORM[t] for t in transforms)
    if int(dof) not in (default_dof, wanted):
        raise InputError(f"dof={dof} and transforms={list(transforms)} ({wanted} dof) disagree: "
                         "give one of them")
    return wanted


def metric_of(metric) -> str:
    """The engine's metric for the interface's ``metric``: its own name or ANTs' list.

    ANTs lists one metric per stage (``["Mattes"]``, ``["MI", "MI"]``, ``[["CC"]]``); the
    finest stage's is used. Several metrics in one stage (multi-metric registration of
    several image pairs) have no meaning here.

    Examples
    --------
    >>> metric_of("ncc"), metric_of(["Mattes"]), metric_of([["MI"], "CC"])
    ('ncc', 'mi', 'lncc')
    """
    if isinstance(metric, str):
        return metric
    stages = [stage if isinstance(stage, str) else single(
        stage, "metric", why="several metrics in one stage (multi-metric ANTs) have no "
        "meaning in niaffine: one fixed and one moving image") for stage in metric]
    if not stages:
        return "auto"
    last = stages[-1]
    if last not in METRIC_OF_ANTS:
        raise InputError(f"metric={list(metric)}: ANTs' {last} has no niaffine counterpart "
                         f"(use one of {', '.join(METRIC_OF_ANTS)}, or mi, nmi, cr, ncc, lncc, "
                         "mse)")
    return METRIC_OF_ANTS[last]


def ignored_inputs(inputs) -> list[str]:
    """The :data:`IGNORED` inputs set on ``inputs``, each with why it is ignored."""
    from nipype.interfaces.base import isdefined

    out = []
    for name, why in IGNORED.items():
        value = getattr(inputs, name, None)
        if value is not None and isdefined(value) and value not in ([], {}):
            out.append(f"{name} ({why})")
    return out

# SPDX-License-Identifier: Apache-2.0
"""Affine registration of two image files with niaffine's engine.

Input and output names follow nipype's ANTs ``Registration`` where the meaning is the
same (``fixed_image``, ``moving_image``, ``fixed_image_mask``, ``initial_moving_transform``,
``initial_moving_transform_com``, ``random_seed``, ``num_threads``, ``warped_image``,
``forward_transforms``, ``reverse_transforms``, ``metric_value``, ``elapsed_time``), so the
interface drops into graphs written for ANTs.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from niaffine.presets import PRESETS

from .common import derived_name, load_image, node_errors, resolve_device, torch_threads

LOGGER = logging.getLogger("niaffine.interfaces.registration")

#: ANTs' ``initial_moving_transform_com`` codes and the engine's ``init`` names.
INIT_FROM_ANTS = {0: "geometric", 1: "com", 2: "identity"}


def mask_volume_ml(mask_img) -> float:
    """Volume of the nonzero voxels of a mask image, in millilitres.

    Examples
    --------
    >>> import nibabel as nb
    >>> mask_volume_ml(nb.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.diag([2, 2, 2, 1])))
    8.0
    """
    voxels = int(np.count_nonzero(np.asanyarray(mask_img.dataobj)))
    return float(voxels * np.prod(mask_img.header.get_zooms()[:3]) / 1000.0)


def run_facts(result, *, source: str, target: str, mask_ml: float | None, extra=None) -> dict:
    """JSON-safe facts of one registration run.

    Keys: ``source``, ``target``, ``metric``, ``final_metric``, ``dof``, ``iterations`` (all
    levels), ``elapsed_s``, ``mask_volume_ml``, then ``device``, ``matrix`` and what the
    engine's ``to_dict()`` adds (``levels`` with the metric per level, parameter groups),
    and anything in ``extra``.
    """
    levels = getattr(result, "levels", None) or []
    iterations = 0
    for level in levels:
        value = level.get("iterations", 0) if isinstance(level, dict) else getattr(
            level, "iterations", 0
        )
        iterations += int(value or 0)
    facts = dict(result.to_dict()) if hasattr(result, "to_dict") else {}
    facts.update({
        "source": str(source),
        "target": str(target),
        "metric": str(result.metric),
        "final_metric": float(result.final_metric),
        "dof": int(result.dof),
        "iterations": iterations,
        "elapsed_s": float(result.elapsed_s),
        "mask_volume_ml": mask_ml,
        "device": str(getattr(result, "device", "")),
        "matrix": np.asarray(result.matrix, dtype=float).tolist(),
    })
    facts.update(extra or {})
    return facts


def register_files(
    fixed_image: str,
    moving_image: str,
    *,
    fixed_image_mask: str | None = None,
    moving_image_mask: str | None = None,
    dof: int = 12,
    metric: str = "auto",
    init: str = "com",
    initial_moving_transform: str | None = None,
    rotation_search: bool | str = "auto",
    levels_mm: tuple[float, ...] | None = None,
    preset: str = "default",
    device: str = "cpu",
    seed: int = 0,
    num_threads: int | None = None,
    write_warped: bool = True,
    newpath: str | None = None,
) -> dict:
    """Register ``moving_image`` to ``fixed_image`` and write transforms, moved image and facts.

    Parameters
    ----------
    fixed_image, moving_image : str
        3D images.
    fixed_image_mask, moving_image_mask : str, optional
        Masks on the grids of their images; the metric is evaluated inside them.
    dof : {3, 6, 7, 9, 12}
        Degrees of freedom (translation, rigid, + isotropic zoom, + zooms, + shears).
    metric : str
        ``mi``, ``cr``, ``ncc``, ``lncc``, ``mse`` or ``auto``.
    init : {"com", "geometric", "identity"}
        Initial alignment when no ``initial_moving_transform`` is given.
    initial_moving_transform : str, optional
        A transform file (ITK ``.txt``/``.tfm``, FSL ``.mat`` or ``.lta``) mapping fixed to
        moving points, the starting point of the optimisation.
    rotation_search : bool or "auto"
        Search over coarse rotations: ``"auto"`` only when the inputs turn out badly
        misaligned, ``True`` always, ``False`` never.
    levels_mm : tuple of float, optional
        Pyramid spacings in mm, coarse to fine (the engine's default when ``None``).
    preset : str
        Engine preset (:data:`niaffine.engine.PRESETS`): ``template`` for brain-to-template
        normalisation; the metric and levels given here win over it.
    device : str
        Torch device.
    seed : int
        Random seed (sampling).
    num_threads : int, optional
        Torch CPU threads.
    write_warped : bool
        Also write the moving image resampled onto the fixed grid.
    newpath : str, optional
        Output folder (default: the working directory).

    Returns
    -------
    dict
        ``forward_transform`` (ITK text, fixed -> moving points: resamples the moving image
        into fixed space), ``reverse_transform``, ``warped_image`` (or ``None``),
        ``run_facts`` (JSON file), ``facts`` (the same as a dict) and ``result`` (the
        engine's ``RegistrationResult``).
    """
    from niaffine.engine import register
    from niaffine.io import load_transform

    fixed = load_image(fixed_image, role="fixed image", ndim=(2, 3))
    moving = load_image(moving_image, role="moving image", ndim=(2, 3))
    fixed_mask = moving_mask = None
    if fixed_image_mask:
        fixed_mask = load_image(fixed_image_mask, role="fixed mask", ndim=(2, 3))
    if moving_image_mask:
        moving_mask = load_image(moving_image_mask, role="moving mask", ndim=(2, 3))
    options = {} if metric == "auto" else {"metric": metric}
    if levels_mm:
        options["levels_mm"] = tuple(float(v) for v in levels_mm)
    initial_matrix = None
    if initial_moving_transform:
        initial_matrix = load_transform(
            initial_moving_transform, reference=fixed, moving=moving
        )

    with torch_threads(num_threads):
        result = register(
            fixed,
            moving,
            dof=int(dof),
            preset=preset,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            init=init,
            initial_matrix=initial_matrix,
            rotation_search=rotation_search if rotation_search == "auto" else bool(rotation_search),
            device=device,
            seed=int(seed),
            **options,
        )
        LOGGER.info("%s -> %s: %s", moving_image, fixed_image, result.summary())
        return write_registration(
            result, fixed=fixed, moving=moving, fixed_image=fixed_image,
            moving_image=moving_image, fixed_mask=fixed_mask, device=device,
            write_warped=write_warped, newpath=newpath,
            extra={"initialization": "transform" if initial_matrix is not None else init,
                   "seed": int(seed)},
        )


def write_registration(
    result,
    *,
    fixed,
    moving,
    fixed_image: str,
    moving_image: str,
    fixed_mask=None,
    device: str = "cpu",
    write_warped: bool = True,
    newpath: str | None = None,
    prefix: str = "",
    extra: dict | None = None,
) -> dict:
    """Write the transforms, moved image and run facts of one registration result.

    Parameters
    ----------
    result : RegistrationResult
        The engine's result for ``moving`` registered to ``fixed``.
    fixed, moving : nibabel images
        The loaded images.
    fixed_image, moving_image : str
        Their paths (output names derive from ``moving_image``; both go into the facts).
    fixed_mask : nibabel image, optional
        Its volume goes into the facts.
    device : str
        Device of the resampling.
    write_warped : bool
        Also write the moving image resampled onto the fixed grid.
    newpath : str, optional
        Output folder (default: the working directory).
    prefix : str
        Put before every output name (keeps the outputs of same-named inputs apart).
    extra : dict, optional
        More run facts.

    Returns
    -------
    dict
        As :func:`register_files`.
    """
    from niaffine.engine import resample_image
    from niaffine.io import save_transform

    def out(suffix, ext):
        path = derived_name(moving_image, suffix, ext, newpath)
        return os.path.join(os.path.dirname(path), prefix + os.path.basename(path))

    forward, reverse = out("_xfm", ".txt"), out("_inverse_xfm", ".txt")
    save_transform(result.matrix, forward, reference=fixed, moving=moving)
    save_transform(np.linalg.inv(result.matrix), reverse, reference=moving, moving=fixed)
    warped = None
    if write_warped:
        warped = out("_warped", ".nii.gz")
        resample_image(moving, result.matrix, fixed, order=1, device=device).to_filename(warped)
    facts = run_facts(
        result,
        source=moving_image,
        target=fixed_image,
        mask_ml=mask_volume_ml(fixed_mask) if fixed_mask is not None else None,
        extra=extra,
    )
    facts_file = out("_registration", ".json")
    with open(facts_file, "w", encoding="utf-8") as stream:
        json.dump(facts, stream, indent=2)
    return {
        "forward_transform": forward,
        "reverse_transform": reverse,
        "warped_image": warped,
        "run_facts": facts_file,
        "facts": facts,
        "result": result,
    }


class EngineInputSpec(BaseInterfaceInputSpec):
    """Inputs shared by the interfaces that run the registration engine."""

    fixed_image = File(exists=True, mandatory=True, desc="image the moving image is aligned to")
    fixed_image_mask = File(exists=True, desc="mask on the fixed grid: metric evaluated inside")
    dof = traits.Enum(12, 9, 7, 6, 3, usedefault=True, desc="degrees of freedom")
    metric = traits.Enum(
        "auto", "mi", "nmi", "cr", "ncc", "lncc", "mse", usedefault=True,
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
    moving_image = File(exists=True, mandatory=True, desc="image that is aligned")
    moving_image_mask = File(exists=True, desc="mask on the moving grid")
    initial_moving_transform = File(
        exists=True, desc="initial transform (ITK/FSL/LTA), fixed -> moving points"
    )
    rotation_search = traits.Either(
        traits.Enum("auto"), traits.Bool, default="auto", usedefault=True,
        desc="search coarse rotations: 'auto' (when badly misaligned), True (always), False",
    )
    levels_mm = traits.List(
        traits.Float, minlen=1, desc="pyramid spacings in mm, coarse to fine (engine default)"
    )


class _AffineRegistrationOutputSpec(TraitedSpec):
    forward_transforms = traits.List(
        File(exists=True), desc="[composite_transform], as ANTs lists them"
    )
    reverse_transforms = traits.List(File(exists=True), desc="[inverse_composite_transform]")
    composite_transform = File(
        exists=True, desc="ITK text transform, fixed -> moving points (moving into fixed space)"
    )
    inverse_composite_transform = File(exists=True, desc="ITK text transform, the inverse")
    warped_image = File(desc="moving image resampled onto the fixed grid")
    metric_value = traits.Float(desc="final metric value")
    elapsed_time = traits.Float(desc="seconds spent registering")
    run_facts = File(exists=True, desc="JSON file of run facts")


class AffineRegistration(SimpleInterface):
    """Affine (3 to 12 dof) registration with niaffine's PyTorch engine.

    Examples
    --------
    >>> reg = AffineRegistration(dof=6, metric="mi")
    >>> reg.inputs.initial_moving_transform_com, reg.inputs.use_gpu
    (1, False)
    """

    input_spec = _AffineRegistrationInputSpec
    output_spec = _AffineRegistrationOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs

        def given(value):
            return value if isdefined(value) else None

        with node_errors(
            "AffineRegistration",
            moving_image=inputs.moving_image,
            fixed_image=inputs.fixed_image,
            fixed_image_mask=given(inputs.fixed_image_mask),
            initial_moving_transform=given(inputs.initial_moving_transform),
        ):
            out = register_files(
                inputs.fixed_image,
                inputs.moving_image,
                fixed_image_mask=given(inputs.fixed_image_mask),
                moving_image_mask=given(inputs.moving_image_mask),
                dof=inputs.dof,
                metric=inputs.metric,
                init=INIT_FROM_ANTS[inputs.initial_moving_transform_com],
                initial_moving_transform=given(inputs.initial_moving_transform),
                rotation_search=inputs.rotation_search,
                levels_mm=given(inputs.levels_mm),
                preset=inputs.preset,
                device=resolve_device(inputs.device, inputs.use_gpu),
                seed=inputs.random_seed,
                num_threads=inputs.num_threads,
                write_warped=inputs.output_warped_image,
                newpath=runtime.cwd,
            )
        self._results.update(
            forward_transforms=[out["forward_transform"]],
            reverse_transforms=[out["reverse_transform"]],
            composite_transform=out["forward_transform"],
            inverse_composite_transform=out["reverse_transform"],
            metric_value=out["facts"]["final_metric"],
            elapsed_time=out["facts"]["elapsed_s"],
            run_facts=out["run_facts"],
        )
        if out["warped_image"]:
            self._results["warped_image"] = out["warped_image"]
        return runtime

# SPDX-License-Identifier: Apache-2.0
"""Many moving images registered to one fixed image in one batched engine call.

The BIDS-App's ``--batch-size N`` registers the T1w brains of N subjects to the template
together: one pyramid, one optimisation loop and one metric evaluation per step for all of
them, which keeps a GPU busy. The engine optimises every item on its own, so a subject gets
the transform it gets alone (:func:`niaffine.engine.register_batch`).

One subject's failure must not cost the others theirs: a batch that fails on bad input is
registered again one by one, a batch that runs out of device memory again in halves, and
:class:`BatchAffineRegistration` reports each item's error instead of failing.
:class:`SelectBatchItem` then hands one item's outputs to its subject's graph, and fails
there (in that subject's graph only) with the item's message.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from niaffine.errors import DeviceMemoryError, InputError, RegistrationError

from .common import NodeError, load_image, node_errors, resolve_device, torch_threads
from .registration import INIT_FROM_ANTS, EngineInputSpec

LOGGER = logging.getLogger("niaffine.interfaces.batch")


def _unique_prefixes(paths: list[str]) -> list[str]:
    """``""`` for each path, or ``"item<k>_"`` for all when two base names collide.

    >>> _unique_prefixes(["/a/sub-01_T1w.nii.gz", "/b/sub-02_T1w.nii.gz"])
    ['', '']
    >>> _unique_prefixes(["/a/brain.nii.gz", "/b/brain.nii.gz"])
    ['item0_', 'item1_']
    """
    counts = Counter(os.path.basename(str(path)) for path in paths)
    if all(count == 1 for count in counts.values()):
        return [""] * len(paths)
    return [f"item{k}_" for k in range(len(paths))]


def register_in_batches(fixed, movings: dict, masks: dict, fixed_mask, options: dict) -> dict:
    """Register items ``{key: moving}`` to ``fixed`` together, retrying smaller on failure.

    Parameters
    ----------
    fixed : nibabel image
        The common fixed image.
    movings, masks : dict
        Moving images and their masks (or ``None``), by item key; the batch runs in key order.
    fixed_mask : nibabel image or None
    options : dict
        Keyword arguments of :func:`niaffine.engine.register_batch`.

    Returns
    -------
    dict
        ``{key: (RegistrationResult, batch size) or Exception}``.
    """
    from niaffine.engine import register_batch

    keys = list(movings)
    try:
        results = register_batch(
            [fixed] * len(keys), [movings[k] for k in keys],
            fixed_masks=None if fixed_mask is None else [fixed_mask] * len(keys),
            moving_masks=[masks[k] for k in keys] if any(masks[k] is not None for k in keys)
            else None,
            **options,
        )
        return {key: (result, len(keys)) for key, result in zip(keys, results)}
    except (InputError, RegistrationError) as err:
        if len(keys) == 1:
            return {keys[0]: err}
        out_of_memory = isinstance(err, DeviceMemoryError)
        parts = [keys[: len(keys) // 2], keys[len(keys) // 2:]] if out_of_memory else [
            [key] for key in keys]
        LOGGER.warning("a batch of %d registrations failed (%s); retrying %s", len(keys),
                       str(err).splitlines()[0], "in halves" if out_of_memory else "one by one")
        if out_of_memory:
            _empty_cuda_cache()
        found = {}
        for part in parts:
            found.update(register_in_batches(
                fixed, {k: movings[k] for k in part}, {k: masks[k] for k in part}, fixed_mask,
                options))
        return found


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def register_files_batch(
    fixed_image: str,
    moving_images: list[str],
    *,
    fixed_image_mask: str | None = None,
    moving_image_masks: list[str] | None = None,
    dof: int = 12,
    metric: str = "auto",
    init: str = "com",
    preset: str = "default",
    device: str = "cpu",
    seed: int = 0,
    num_threads: int | None = None,
    write_warped: bool = True,
    newpath: str | None = None,
) -> list[tuple | Exception]:
    """Register every moving image to ``fixed_image`` in one batch; write each one's outputs.

    Every item is registered with the options and seed it would get from
    :func:`niaffine.service.register_files` alone, and its outputs written by
    :func:`niaffine.service.write_outputs` (named as ``AffineRegistration`` names them).

    Parameters
    ----------
    fixed_image : str
        The common fixed image (e.g. a template brain).
    moving_images : list of str
        The moving images (any shapes, voxel sizes and orientations).
    fixed_image_mask : str, optional
        Mask on the fixed grid.
    moving_image_masks : list of str, optional
        One mask per moving image, on its grid.
    dof, metric, init, preset, device, seed, num_threads
        As :class:`niaffine.service.RegistrationOptions`.
    write_warped : bool
        Also write each moving image resampled onto the fixed grid.
    newpath : str, optional
        Output folder (default: the working directory).

    Returns
    -------
    list
        Per moving image, in order: ``(OutputPaths, RunFacts)`` of what was written (the
        facts' ``batch_size`` is the number of images in the engine call that produced
        it), or the exception that stopped that image.

    Raises
    ------
    InputError
        The fixed image or its mask cannot be used (no item could be registered).
    """
    from niaffine.runfacts import mask_volume_ml
    from niaffine.service import OutputPaths, RegistrationOptions, write_outputs

    fixed = load_image(fixed_image, role="fixed image")
    fixed_mask = load_image(fixed_image_mask, role="fixed mask") if fixed_image_mask else None
    if moving_image_masks and len(moving_image_masks) != len(moving_images):
        raise InputError(f"{len(moving_image_masks)} moving masks for {len(moving_images)} "
                         "moving images: give one per image")
    loaded, movings, masks = {}, {}, {}
    for k, path in enumerate(moving_images):
        try:
            movings[k] = load_image(path, role="moving image")
            masks[k] = (load_image(moving_image_masks[k], role="moving mask")
                        if moving_image_masks else None)
        except InputError as err:
            loaded[k] = err
            movings.pop(k, None)
    options = RegistrationOptions(dof=dof, metric=metric, init=init, preset=preset,
                                  device=device, seed=seed, num_threads=num_threads)
    with torch_threads(num_threads):
        if movings:
            loaded.update(register_in_batches(fixed, movings, masks, fixed_mask,
                                               options.engine_options()))
        prefixes = _unique_prefixes(moving_images)
        outputs: list[tuple | Exception] = []
        for k, path in enumerate(moving_images):
            found = loaded[k]
            if isinstance(found, Exception):
                LOGGER.error("%s -> %s failed: %s", path, fixed_image, found)
                outputs.append(found)
                continue
            result, batch_size = found
            LOGGER.info("%s -> %s (batch of %d): %s", path, fixed_image, batch_size,
                        result.summary())
            paths = OutputPaths.named_after(path, newpath or ".", prefix=prefixes[k],
                                            warped=write_warped)
            facts = write_outputs(result, fixed=fixed, moving=movings[k], outputs=paths, facts={
                "source": path, "target": fixed_image, "options": options,
                "fixed_mask": fixed_image_mask,
                "moving_mask": moving_image_masks[k] if moving_image_masks else None,
                "mask_volume_ml": None if fixed_mask is None else mask_volume_ml(fixed_mask),
                "batch_size": batch_size})
            outputs.append((paths, facts))
    return outputs


class _BatchAffineRegistrationInputSpec(EngineInputSpec):
    moving_images = InputMultiObject(
        File(exists=True), mandatory=True, desc="images aligned to the fixed image, together"
    )
    moving_image_masks = InputMultiObject(
        File(exists=True), desc="one mask per moving image, on its grid"
    )


class _BatchAffineRegistrationOutputSpec(TraitedSpec):
    composite_transforms = traits.List(
        traits.Either(None, File(exists=True)),
        desc="per moving image: ITK text transform, fixed -> moving points (None if it failed)",
    )
    inverse_composite_transforms = traits.List(
        traits.Either(None, File(exists=True)), desc="per moving image: the inverse"
    )
    warped_images = traits.List(
        traits.Either(None, File(exists=True)), desc="per moving image: resampled onto the fixed grid"
    )
    run_facts = traits.List(
        traits.Either(None, File(exists=True)), desc="per moving image: JSON file of run facts"
    )
    errors = traits.List(traits.Str, desc="per moving image: '' or why it failed (one line)")
    input_errors = traits.List(
        traits.Bool, desc="per moving image: whether the failure was caused by bad input"
    )


class BatchAffineRegistration(SimpleInterface):
    """Register many moving images to one fixed image in one batched engine call.

    The node succeeds when the fixed image is usable, even where some moving images fail;
    each item's outputs are ``None`` then and ``errors`` says why. Use
    :class:`SelectBatchItem` to take one item's outputs (and fail on its error).

    Examples
    --------
    >>> reg = BatchAffineRegistration(dof=12, metric="mi")
    >>> reg.inputs.initial_moving_transform_com, reg.inputs.use_gpu
    (1, False)
    """

    input_spec = _BatchAffineRegistrationInputSpec
    output_spec = _BatchAffineRegistrationOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        masks = list(inputs.moving_image_masks) if isdefined(inputs.moving_image_masks) else None
        fixed_mask = inputs.fixed_image_mask if isdefined(inputs.fixed_image_mask) else None
        with node_errors("BatchAffineRegistration", fixed_image=inputs.fixed_image,
                         fixed_image_mask=fixed_mask):
            outputs = register_files_batch(
                inputs.fixed_image,
                list(inputs.moving_images),
                fixed_image_mask=fixed_mask,
                moving_image_masks=masks,
                dof=inputs.dof,
                metric=inputs.metric,
                init=INIT_FROM_ANTS[inputs.initial_moving_transform_com],
                preset=inputs.preset,
                device=resolve_device(inputs.device, inputs.use_gpu),
                seed=inputs.random_seed,
                num_threads=inputs.num_threads,
                write_warped=inputs.output_warped_image,
                newpath=runtime.cwd,
            )

        def field(key):
            return [None if isinstance(out, Exception) or getattr(out[0], key) is None
                    else str(getattr(out[0], key)) for out in outputs]

        self._results.update(
            composite_transforms=field("transform"),
            inverse_composite_transforms=field("inverse_transform"),
            warped_images=field("warped_image"),
            run_facts=field("run_facts"),
            errors=[str(out).splitlines()[0] if isinstance(out, Exception) else ""
                    for out in outputs],
            input_errors=[isinstance(out, InputError) for out in outputs],
        )
        return runtime


class _SelectBatchItemInputSpec(BaseInterfaceInputSpec):
    index = traits.Int(mandatory=True, desc="position of the item in the batch")
    moving_images = traits.List(traits.Str, mandatory=True, desc="the batch's moving images")
    composite_transforms = traits.List(traits.Any, mandatory=True)
    inverse_composite_transforms = traits.List(traits.Any, mandatory=True)
    warped_images = traits.List(traits.Any, mandatory=True)
    run_facts = traits.List(traits.Any, mandatory=True)
    errors = traits.List(traits.Str, mandatory=True)
    input_errors = traits.List(traits.Bool, mandatory=True)


class _SelectBatchItemOutputSpec(TraitedSpec):
    composite_transform = File(exists=True, desc="ITK text transform, fixed -> moving points")
    inverse_composite_transform = File(exists=True, desc="ITK text transform, the inverse")
    warped_image = File(desc="moving image resampled onto the fixed grid")
    run_facts = File(exists=True, desc="JSON file of run facts")


class SelectBatchItem(SimpleInterface):
    """One item of a :class:`BatchAffineRegistration`, or that item's error.

    Examples
    --------
    >>> SelectBatchItem(index=1).inputs.index
    1
    """

    input_spec = _SelectBatchItemInputSpec
    output_spec = _SelectBatchItemOutputSpec

    def _run_interface(self, runtime):
        k = self.inputs.index
        if not 0 <= k < len(self.inputs.errors):
            raise NodeError(f"SelectBatchItem: index {k} outside a batch of "
                            f"{len(self.inputs.errors)}")
        if self.inputs.errors[k]:  # the item's own error, worded as the batch node's would be
            error = InputError if self.inputs.input_errors[k] else RegistrationError
            with node_errors("BatchAffineRegistration", moving_image=self.inputs.moving_images[k]):
                raise error(self.inputs.errors[k])
        self._results.update(
            composite_transform=self.inputs.composite_transforms[k],
            inverse_composite_transform=self.inputs.inverse_composite_transforms[k],
            run_facts=self.inputs.run_facts[k],
        )
        if self.inputs.warped_images[k]:
            self._results["warped_image"] = self.inputs.warped_images[k]
        return runtime

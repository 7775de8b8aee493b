# SPDX-License-Identifier: Apache-2.0
"""Resample an image through a chain of affine transforms with one interpolation.

Names follow nipype's ANTs ``ApplyTransforms`` (``input_image``, ``reference_image``,
``transforms``, ``invert_transform_flags``, ``interpolation``, ``default_value``,
``output_image``) and so does the order of ``transforms``: reference points go through
the first transform listed first, so ``[t1w2template_xfm, bold2t1w_xfm]`` brings a BOLD
image into template space.
"""

from __future__ import annotations

import logging

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from niaffine import choices

from .common import (
    derived_name,
    device_trait,
    load_image,
    node_errors,
    resolve_device,
    torch_threads,
    use_gpu_trait,
)

LOGGER = logging.getLogger("niaffine.interfaces.resampling")

#: ANTs interpolation names and spline orders (:data:`niaffine.choices.ANTS_INTERPOLATIONS`).
INTERPOLATION_ORDER = {ants: choices.INTERPOLATIONS[name]
                       for ants, name in choices.ANTS_INTERPOLATIONS.items()}


def compose_matrices(matrices, invert_flags=None) -> np.ndarray:
    """Compose world matrices listed in ANTs' order into one reference -> input matrix.

    Parameters
    ----------
    matrices : sequence of (4, 4) arrays
        Each maps points of the space before it (the reference for the first) to the
        space after it, as stored by ``AffineRegistration``.
    invert_flags : sequence of bool, optional
        Invert the matching matrix first.

    Returns
    -------
    (4, 4) array
        ``M_n @ ... @ M_2 @ M_1``.

    Examples
    --------
    >>> shift = np.eye(4); shift[0, 3] = 2.0
    >>> scale = np.diag([2.0, 1.0, 1.0, 1.0])
    >>> compose_matrices([shift, scale]) @ np.array([1.0, 0, 0, 1])
    array([6., 0., 0., 1.])
    >>> compose_matrices([shift, shift], [False, True])
    array([[1., 0., 0., 0.],
           [0., 1., 0., 0.],
           [0., 0., 1., 0.],
           [0., 0., 0., 1.]])
    """
    invert_flags = list(invert_flags or [])
    if invert_flags and len(invert_flags) != len(matrices):
        raise ValueError(
            f"{len(invert_flags)} invert_transform_flags for {len(matrices)} transforms"
        )
    total = np.eye(4)
    for index, matrix in enumerate(matrices):
        matrix = np.asarray(matrix, dtype=float)
        if invert_flags and invert_flags[index]:
            matrix = np.linalg.inv(matrix)
        total = matrix @ total
    return total


def apply_affine(
    input_image: str,
    reference_image: str,
    transforms,
    *,
    invert_transform_flags=None,
    interpolation: str = "Linear",
    default_value: float = 0.0,
    out_file: str | None = None,
    device: str = "cpu",
    num_threads: int | None = None,
) -> str:
    """Resample ``input_image`` onto the grid of ``reference_image`` through ``transforms``.

    Parameters
    ----------
    input_image : str
        3D image or 4D series (every volume goes through the same transform).
    reference_image : str
        Image whose grid (shape, affine) the output takes; only its header matters.
    transforms : list of str
        Transform files in ANTs' order (see :func:`compose_matrices`); an empty list is
        the identity. FSL ``.mat`` files need both images, so they are only accepted alone.
    invert_transform_flags : list of bool, optional
    interpolation : {"Linear", "NearestNeighbor", "BSpline"}
        ``NearestNeighbor`` keeps the data type (label images).
    default_value : float
        Value outside the input's field of view.
    out_file : str, optional
        Output path (default: ``<input stem>_resampled.nii.gz`` in the working directory).
    device : str
    num_threads : int, optional

    Returns
    -------
    out_file : str
    """
    from niaffine.engine import resample_image
    from niaffine.io import load_transform

    moving = load_image(input_image, role="input image", ndim=(3, 4))
    reference = load_image(reference_image, role="reference image", ndim=(3, 4))
    transforms = list(transforms or [])
    if len(transforms) == 1:
        matrices = [load_transform(transforms[0], reference=reference, moving=moving)]
    else:
        matrices = [load_transform(path) for path in transforms]
    matrix = compose_matrices(matrices, invert_transform_flags)
    order = INTERPOLATION_ORDER[interpolation]
    out_file = out_file or derived_name(input_image, "_resampled")

    with torch_threads(num_threads):
        out = resample_image(
            moving, matrix, reference, order=order, fill=float(default_value), device=device
        )
    if order == 0:
        data = np.asanyarray(out.dataobj).astype(moving.get_data_dtype())
    else:
        data = np.asanyarray(out.dataobj).astype(np.float32)

    import nibabel as nb

    header = reference.header.copy() if hasattr(reference, "header") else None
    img = nb.Nifti1Image(data, reference.affine, header)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1, 0)
    if data.ndim == 4:
        zooms = tuple(reference.header.get_zooms()[:3]) + (moving.header.get_zooms()[3],)
        img.header.set_zooms(zooms)
        img.header.set_xyzt_units(*moving.header.get_xyzt_units())
    img.to_filename(out_file)
    LOGGER.info("%s -> %s (%d transforms, %s)", input_image, out_file, len(transforms),
                interpolation)
    return out_file


class _ApplyAffineInputSpec(BaseInterfaceInputSpec):
    input_image = File(exists=True, mandatory=True, desc="3D image or 4D series to resample")
    reference_image = File(exists=True, mandatory=True, desc="image defining the output grid")
    transforms = InputMultiObject(
        File(exists=True), value=[], usedefault=True,
        desc="transform files, ANTs order: reference points go through the first first",
    )
    invert_transform_flags = InputMultiObject(traits.Bool(), desc="invert matching transform")
    interpolation = traits.Enum(
        *choices.ANTS_INTERPOLATIONS, usedefault=True,
        desc="interpolation (NearestNeighbor for label images)",
    )
    default_value = traits.Float(0.0, usedefault=True, desc="value outside the field of view")
    output_image = traits.Str(desc="output file name (default: <input stem><out_postfix>.nii.gz)")
    out_postfix = traits.Str(
        "_resampled", usedefault=True, desc="appended to the input's name for the output name"
    )
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch CPU threads")
    device = device_trait()
    use_gpu = use_gpu_trait()


class _ApplyAffineOutputSpec(TraitedSpec):
    output_image = File(exists=True, desc="resampled image on the reference grid")


class ApplyAffine(SimpleInterface):
    """Resample an image onto a reference grid through composed affine transforms.

    Examples
    --------
    >>> ApplyAffine(interpolation="NearestNeighbor").inputs.default_value
    0.0
    """

    input_spec = _ApplyAffineInputSpec
    output_spec = _ApplyAffineOutputSpec

    def _run_interface(self, runtime):
        import os

        inputs = self.inputs
        flags = inputs.invert_transform_flags if isdefined(inputs.invert_transform_flags) else None
        if isdefined(inputs.output_image):
            out_file = os.path.join(runtime.cwd, inputs.output_image)
        else:
            out_file = derived_name(inputs.input_image, inputs.out_postfix, newpath=runtime.cwd)
        with node_errors(
            "ApplyAffine",
            input_image=inputs.input_image,
            reference_image=inputs.reference_image,
            transforms=", ".join(inputs.transforms) or None,
        ):
            self._results["output_image"] = apply_affine(
                inputs.input_image,
                inputs.reference_image,
                inputs.transforms,
                invert_transform_flags=flags,
                interpolation=inputs.interpolation,
                default_value=inputs.default_value,
                out_file=out_file,
                device=resolve_device(inputs.device, inputs.use_gpu),
                num_threads=inputs.num_threads,
            )
        return runtime

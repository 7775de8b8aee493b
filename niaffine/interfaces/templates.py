# SPDX-License-Identifier: Apache-2.0
"""Template image, brain and brain mask for spatial normalisation, and output grids.

A template is named by an ``--output-spaces`` entry (see :mod:`niaffine.spaces`): a
TemplateFlow identifier with modifiers (``MNI152NLin6Asym:res-2``), the built-in
``MNI152NLin2009aSym``, or the path of a template image. Its registration target is
TemplateFlow's res-1 image (where it is available locally) and its outputs lie on the
space's own ``res-N`` grid, as in fMRIPrep.
"""

from __future__ import annotations

import logging
import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from niaffine import spaces as sp

from .brainmask import mask_from_stripped
from .common import derived_name, load_image, node_errors

LOGGER = logging.getLogger("niaffine.interfaces.templates")


def _save(data: np.ndarray, img: nb.Nifti1Image, path: str, dtype=None) -> str:
    """Write ``data`` with the header of ``img`` (affine included), as ``dtype``."""
    out = nb.Nifti1Image(data.astype(dtype or img.get_data_dtype()), img.affine, img.header)
    if dtype is not None:
        out.set_data_dtype(dtype)
        out.header.set_slope_inter(1, 0)
    out.to_filename(path)
    return path


def coarser_grid(img: nb.Nifti1Image, factor: int) -> tuple[tuple[int, ...], np.ndarray]:
    """The ``factor`` times coarser grid of ``img`` by TemplateFlow's res-N convention.

    The first voxel centre is kept and the step is ``factor`` voxels, so the coarse voxels
    are every ``factor``-th fine voxel and cover the same field of view (e.g. 197 voxels at
    1 mm become 99 at 2 mm); TemplateFlow's res-2 MNI grids relate to their res-1 grids so.

    Returns
    -------
    shape : tuple of int
    affine : (4, 4) array

    Examples
    --------
    >>> img = nb.Nifti1Image(np.zeros((197, 233, 189), np.uint8), np.eye(4))
    >>> shape, affine = coarser_grid(img, 2)
    >>> shape, float(affine[0, 0]), float(affine[0, 3])
    ((99, 117, 95), 2.0, 0.0)
    """
    shape = tuple((n - 1) // factor + 1 for n in img.shape[:3])
    affine = img.affine @ np.diag([factor, factor, factor, 1.0])
    return shape, affine


def _builtin_files(res: str, template_mask: str | None, newpath) -> tuple[str, str, str]:
    """Files of the built-in MNI152NLin2009aSym at res-1 (nilearn's) or res-2 (made here)."""
    from niaffine.data.templates import load_mni_brain_mask, template_path

    stem = f"tpl-{sp.BUILTIN_TEMPLATE}_res-{int(res):02d}"
    t1w = str(template_path("t1"))
    if res == "1":
        if template_mask:
            return t1w, t1w, str(template_mask)
        mask_file = derived_name(f"{stem}_desc-brain_mask.nii.gz", "", newpath=newpath)
        load_mni_brain_mask().to_filename(mask_file)
        return t1w, t1w, mask_file
    from scipy import ndimage as ndi

    factor = int(res)
    img, mask = nb.load(t1w), load_mni_brain_mask()
    shape, affine = coarser_grid(img, factor)
    sigma = 0.4246 * np.sqrt(factor**2 - 1)  # FWHM of the coarse voxel, less the fine one's
    take = (slice(None, None, factor),) * 3
    data = ndi.gaussian_filter(np.asarray(img.dataobj, np.float32), sigma)[take]
    brain = ndi.gaussian_filter(np.asarray(mask.dataobj, np.float32), sigma)[take] >= 0.5
    header = img.header.copy()
    header.set_data_shape(shape)
    coarse = nb.Nifti1Image(data, affine, header)
    coarse.set_qform(affine, code=4)
    coarse.set_sform(affine, code=4)
    t1w_file = _save(np.clip(data, 0, 255).round(), coarse,
                     derived_name(f"{stem}_T1w.nii.gz", "", newpath=newpath), np.uint8)
    mask_file = _save(brain, coarse, derived_name(f"{stem}_desc-brain_mask.nii.gz", "",
                                                  newpath=newpath), np.uint8)
    return t1w_file, t1w_file, mask_file


def _masked_files(template_file: str, mask_file: str, newpath) -> tuple[str, str, str]:
    """A template with a head and its brain mask: the brain is the template inside the mask."""
    img = load_image(template_file, role="template")
    mask_img = load_image(mask_file, role="template mask")
    if mask_img.shape[:3] != img.shape[:3] or not np.allclose(
        mask_img.affine, img.affine, atol=1e-3
    ):
        raise ValueError(f"template mask {mask_file} is not on the grid of {template_file}")
    mask = np.asanyarray(mask_img.dataobj) > 0
    brain_file = derived_name(template_file, "_brain", newpath=newpath)
    brain = np.asanyarray(img.dataobj) * mask.reshape(img.shape[:3] + (1,) * (img.ndim - 3))
    _save(brain, img, brain_file)
    return template_file, brain_file, mask_file


def template_files(
    template: str = sp.BUILTIN_TEMPLATE, template_mask: str | None = None, newpath=None, *,
    resolution: str | None = None,
) -> tuple[str, str, str]:
    """Template image, skull-stripped template and brain mask, as files.

    Parameters
    ----------
    template : str
        An ``--output-spaces`` template entry: a TemplateFlow identifier with optional
        modifiers (``MNI152NLin6Asym:res-2``, looked up in ``TEMPLATEFLOW_HOME``), the
        built-in ``MNI152NLin2009aSym`` (nilearn's 1 mm copy, skull-stripped; res-2 is
        made from it), or the path of a template image (head or brain).
    template_mask : str, optional
        Brain mask on the template's grid (for a template given by path, or to replace the
        built-in mask). Without one, a template given by path is taken as skull-stripped and
        its filled nonzero support is the mask.
    newpath : str, optional
        Folder for the files this function writes (default: working directory).
    resolution : str, optional
        TemplateFlow resolution index; default: the entry's ``res-N``, else res-1.

    Returns
    -------
    template_file : str
        The template image (TemplateFlow's or nilearn's file itself, not a copy, when one
        exists at that resolution).
    brain_file : str
        The template inside the mask (the template itself when it is skull-stripped).
    mask_file : str
        uint8 brain mask.

    Raises
    ------
    niaffine.spaces.SpaceError
        For a template or resolution not available locally.
    """
    if not os.path.isfile(str(template)):
        found = sp.resolve_template(sp.parse_space(str(template)), resolution)
        if found.source == "builtin":
            return _builtin_files(found.res, template_mask, newpath)
        return _masked_files(str(found.t1w), str(template_mask or found.mask), newpath)

    template_file = os.path.abspath(str(template))
    if template_mask:
        return _masked_files(template_file, os.path.abspath(str(template_mask)), newpath)
    img = load_image(template_file, role="template")
    mask = mask_from_stripped(np.asanyarray(img.dataobj))
    mask_file = _save(mask, img, derived_name(template_file, "_mask", newpath=newpath), np.uint8)
    return template_file, template_file, mask_file


def native_grid(template: nb.Nifti1Image, zooms) -> nb.Nifti1Image:
    """A grid image (all ones: a resampling reference must not be all zero) covering the
    template's field of view at voxel size ``zooms``.

    fMRIPrep's ``res-native``: a series keeps its own voxel size in template space. The
    first voxel centre is the template's, the axes are the template's.

    Parameters
    ----------
    template : nibabel image
        The template at any resolution (its field of view is used).
    zooms : sequence of 3 floats
        Voxel size (mm) of the series.

    Examples
    --------
    >>> tpl = nb.Nifti1Image(np.zeros((193, 229, 193), np.uint8), np.diag([1.0, 1, 1, 1]))
    >>> grid = native_grid(tpl, (2.0, 2.0, 2.5))
    >>> grid.shape, tuple(float(z) for z in grid.header.get_zooms())
    ((97, 115, 77), (2.0, 2.0, 2.5))
    """
    zooms = np.asarray(zooms, dtype=float)[:3]
    axes = template.affine[:3, :3] / np.asarray(template.header.get_zooms()[:3])
    extent = (np.array(template.shape[:3]) - 1) * np.asarray(template.header.get_zooms()[:3])
    shape = tuple(int(n) for n in np.floor(extent / zooms + 1e-6).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = axes * zooms
    affine[:3, 3] = template.affine[:3, 3]
    img = nb.Nifti1Image(np.ones(shape, np.uint8), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=4)
    img.set_sform(affine, code=4)
    return img


class _TemplateSourceInputSpec(BaseInterfaceInputSpec):
    template = traits.Str(
        sp.BUILTIN_TEMPLATE, usedefault=True,
        desc="template: TemplateFlow identifier with modifiers (MNI152NLin6Asym:res-2), "
        "the built-in MNI152NLin2009aSym, or the path of a template image",
    )
    template_mask = File(exists=True, desc="brain mask on the template grid")
    output_resolution = traits.Str(
        desc="TemplateFlow resolution index of grid_file (default: the template's res-N, "
        "else res-1); the registration target is res-1 where available")


class _TemplateSourceOutputSpec(TraitedSpec):
    template_file = File(exists=True, desc="template image (the registration target)")
    brain_file = File(exists=True, desc="template brain (template inside its mask)")
    mask_file = File(exists=True, desc="template brain mask")
    grid_file = File(exists=True, desc="template image on the output grid (res-N)")
    grid_mask_file = File(exists=True, desc="brain mask on the output grid")


class TemplateSource(SimpleInterface):
    """Provide a template's image, brain and brain mask as files, and its output grid.

    Examples
    --------
    >>> TemplateSource().inputs.template
    'MNI152NLin2009aSym'
    """

    input_spec = _TemplateSourceInputSpec
    output_spec = _TemplateSourceOutputSpec

    def _run_interface(self, runtime):
        mask = self.inputs.template_mask if isdefined(self.inputs.template_mask) else None
        template = self.inputs.template
        with node_errors("TemplateSource", template=template, template_mask=mask):
            target_res = None
            if not os.path.isfile(template):
                target_res = sp.registration_target(sp.parse_space(template)).res
            template_file, brain_file, mask_file = template_files(
                template, mask, newpath=runtime.cwd, resolution=target_res)
            grid_file, grid_mask = template_file, mask_file
            res = (self.inputs.output_resolution if isdefined(self.inputs.output_resolution)
                   else None)
            if target_res is not None:
                res = res or sp.parse_space(template).output_res()
                if res != target_res:
                    grid_file, _, grid_mask = template_files(template, None,
                                                             newpath=runtime.cwd, resolution=res)
        self._results.update(template_file=template_file, brain_file=brain_file,
                             mask_file=mask_file, grid_file=grid_file, grid_mask_file=grid_mask)
        return runtime


class _TemplateGridInputSpec(BaseInterfaceInputSpec):
    template_file = File(exists=True, mandatory=True, desc="template image (its field of view)")
    in_file = File(exists=True, mandatory=True, desc="series (or reference) whose voxel size "
                   "the grid takes")


class _TemplateGridOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="grid image (ones) on the template's field of view at "
                    "the series' voxel size (a resampling reference)")


class TemplateGrid(SimpleInterface):
    """fMRIPrep's ``res-native`` grid: the template's field of view at a series' voxel size."""

    input_spec = _TemplateGridInputSpec
    output_spec = _TemplateGridOutputSpec

    def _run_interface(self, runtime):
        with node_errors("TemplateGrid", template_file=self.inputs.template_file,
                         in_file=self.inputs.in_file):
            template = load_image(self.inputs.template_file, role="template")
            series = nb.load(self.inputs.in_file)
            out_file = derived_name(self.inputs.in_file, "_grid", newpath=runtime.cwd)
            native_grid(template, series.header.get_zooms()[:3]).to_filename(out_file)
        self._results["out_file"] = out_file
        return runtime

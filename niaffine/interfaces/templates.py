# SPDX-License-Identifier: Apache-2.0
"""Template image, brain and brain mask for spatial normalisation."""

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

from .brainmask import mask_from_stripped
from .common import derived_name, load_image, node_errors

LOGGER = logging.getLogger("niaffine.interfaces.templates")

#: Template names niaffine can provide without a file (from installed packages).
KNOWN_TEMPLATES = ("MNI152NLin2009aSym",)


def is_template_name(value: str) -> bool:
    """Whether ``value`` names a template niaffine ships (rather than a file).

    Examples
    --------
    >>> is_template_name("MNI152NLin2009aSym"), is_template_name("/data/tpl.nii.gz")
    (True, False)
    """
    return str(value) in KNOWN_TEMPLATES


def template_files(
    template: str = "MNI152NLin2009aSym", template_mask: str | None = None, newpath=None
) -> tuple[str, str, str]:
    """Template image, skull-stripped template and brain mask, as files.

    Parameters
    ----------
    template : str
        ``"MNI152NLin2009aSym"`` (the 1 mm copy nilearn ships, skull-stripped) or the
        path of a template image (head or brain).
    template_mask : str, optional
        Brain mask on the template's grid. Without one, the template is taken as
        skull-stripped and its filled nonzero support is the mask.
    newpath : str, optional
        Folder for the files this function writes (default: working directory).

    Returns
    -------
    template_file : str
        The template image (a file that already exists, not a copy).
    brain_file : str
        The template inside the mask (the template itself when no mask is given).
    mask_file : str
        uint8 brain mask.
    """
    if is_template_name(template):
        from niaffine.data.templates import load_mni_brain_mask, template_path

        template_file = str(template_path("t1"))
        if template_mask:
            mask_file = str(template_mask)
        else:
            mask_file = derived_name("tpl-MNI152NLin2009aSym_res-1_desc-brain_mask.nii.gz",
                                     "", newpath=newpath)
            load_mni_brain_mask().to_filename(mask_file)
        return template_file, template_file, mask_file

    template_file = os.path.abspath(str(template))
    img = load_image(template_file, role="template")
    if template_mask:
        mask_file = os.path.abspath(str(template_mask))
        mask_img = load_image(mask_file, role="template mask")
        if mask_img.shape[:3] != img.shape[:3] or not np.allclose(
            mask_img.affine, img.affine, atol=1e-3
        ):
            raise ValueError(f"template mask {mask_file} is not on the grid of {template_file}")
        mask = np.asanyarray(mask_img.dataobj) > 0
        brain_file = derived_name(template_file, "_brain", newpath=newpath)
        brain = np.asanyarray(img.dataobj) * mask.reshape(img.shape[:3] + (1,) * (img.ndim - 3))
        nb.Nifti1Image(brain.astype(img.get_data_dtype()), img.affine, img.header).to_filename(
            brain_file
        )
        return template_file, brain_file, mask_file

    mask = mask_from_stripped(np.asanyarray(img.dataobj))
    mask_file = derived_name(template_file, "_mask", newpath=newpath)
    out = nb.Nifti1Image(mask.astype(np.uint8), img.affine, img.header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    out.to_filename(mask_file)
    return template_file, template_file, mask_file


class _TemplateSourceInputSpec(BaseInterfaceInputSpec):
    template = traits.Str(
        "MNI152NLin2009aSym", usedefault=True, desc="template name or path of a template image"
    )
    template_mask = File(exists=True, desc="brain mask on the template grid")


class _TemplateSourceOutputSpec(TraitedSpec):
    template_file = File(exists=True, desc="template image")
    brain_file = File(exists=True, desc="template brain (template inside its mask)")
    mask_file = File(exists=True, desc="template brain mask")


class TemplateSource(SimpleInterface):
    """Provide a template's image, brain and brain mask as files.

    Examples
    --------
    >>> TemplateSource().inputs.template
    'MNI152NLin2009aSym'
    """

    input_spec = _TemplateSourceInputSpec
    output_spec = _TemplateSourceOutputSpec

    def _run_interface(self, runtime):
        mask = self.inputs.template_mask if isdefined(self.inputs.template_mask) else None
        with node_errors("TemplateSource", template=self.inputs.template, template_mask=mask):
            template_file, brain_file, mask_file = template_files(
                self.inputs.template, mask, newpath=runtime.cwd
            )
        self._results.update(template_file=template_file, brain_file=brain_file,
                             mask_file=mask_file)
        return runtime

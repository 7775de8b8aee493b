# SPDX-License-Identifier: Apache-2.0
"""Brain extraction of a T1-weighted image with deepbet (weights ship inside its wheel)."""

from __future__ import annotations

import logging

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

from .common import (
    derived_name,
    device_trait,
    load_image,
    node_errors,
    resolve_device,
    torch_threads,
    use_gpu_trait,
)

LOGGER = logging.getLogger("niaffine.interfaces.brainmask")


def mask_from_stripped(data: np.ndarray) -> np.ndarray:
    """Brain mask of an image that is already skull-stripped.

    Nonzero voxels, largest connected component, holes filled.

    Parameters
    ----------
    data : (I, J, K) array
        A skull-stripped image (zero outside the brain).

    Returns
    -------
    mask : (I, J, K) bool array

    Examples
    --------
    >>> a = np.zeros((9, 9, 9)); a[2:7, 2:7, 2:7] = 1.0; a[4, 4, 4] = 0.0; a[0, 0, 0] = 5.0
    >>> m = mask_from_stripped(a)
    >>> int(m.sum()), bool(m[4, 4, 4]), bool(m[0, 0, 0])
    (125, True, False)
    """
    from niaffine.masks import largest_component

    return largest_component(np.abs(np.nan_to_num(data)) > 0)


def extract_brain(
    in_file: str,
    *,
    out_mask: str | None = None,
    out_brain: str | None = None,
    skull_stripped: bool = False,
    threshold: float = 0.5,
    device: str = "cpu",
    num_threads: int | None = None,
) -> tuple[str, str, float]:
    """Write the brain mask and the skull-stripped image of a T1w image.

    Parameters
    ----------
    in_file : str
        T1-weighted image (head, or brain when ``skull_stripped``); 3D, or 4D
        with one volume.
    out_mask, out_brain : str, optional
        Output paths (default: named after ``in_file`` in the working directory).
    skull_stripped : bool
        The input is already skull-stripped: the mask is its filled nonzero
        support and deepbet is not run.
    threshold : float
        Threshold on deepbet's brain probability.
    device : str
        ``"cpu"`` or ``"cuda"`` (deepbet's models run there).
    num_threads : int, optional
        Torch CPU threads.

    Returns
    -------
    out_mask : str
        uint8 mask on the input grid.
    out_brain : str
        The input times the mask, in the input's data type.
    volume_ml : float
        Mask volume in millilitres.
    """
    img = load_image(in_file, role="T1w image", ndim=(3, 4))
    if img.ndim == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if img.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {img.shape}")
    out_mask = out_mask or derived_name(in_file, "_mask")
    out_brain = out_brain or derived_name(in_file, "_brain")

    if skull_stripped:
        mask = mask_from_stripped(np.asanyarray(img.dataobj))
    else:
        from deepbet import BrainExtraction as _DeepBet

        with torch_threads(num_threads):
            bet = _DeepBet(no_gpu=not str(device).startswith("cuda"))
            # deepbet works in the canonical (RAS) orientation and reorients back.
            float_img = nb.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)
            _, mask_img, _ = bet.run(float_img, threshold=threshold)
        mask = np.asanyarray(mask_img.dataobj).reshape(img.shape) > 0

    hdr = img.header.copy()
    mask_out = nb.Nifti1Image(mask.astype(np.uint8), img.affine, hdr)
    mask_out.set_data_dtype(np.uint8)
    mask_out.header.set_slope_inter(1, 0)
    mask_out.to_filename(out_mask)

    brain = np.asanyarray(img.dataobj) * mask
    brain_out = nb.Nifti1Image(brain.astype(img.get_data_dtype()), img.affine, hdr)
    brain_out.to_filename(out_brain)

    volume_ml = float(mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0)
    LOGGER.info("brain mask of %s: %.1f ml", in_file, volume_ml)
    return out_mask, out_brain, volume_ml


class _BrainExtractionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1-weighted image (head or brain)")
    skull_stripped = traits.Bool(
        False, usedefault=True, desc="input is already skull-stripped: mask its nonzero support"
    )
    threshold = traits.Range(
        low=0.0, high=1.0, value=0.5, usedefault=True, desc="threshold on brain probability"
    )
    device = device_trait()
    use_gpu = use_gpu_trait()
    num_threads = traits.Int(1, usedefault=True, desc="torch CPU threads")


class _BrainExtractionOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="brain mask (uint8, input grid)")
    out_file = File(exists=True, desc="skull-stripped image (input times mask)")
    mask_volume_ml = traits.Float(desc="mask volume in millilitres")


class BrainExtraction(SimpleInterface):
    """Brain mask and skull-stripped image of a T1w image (deepbet, CPU or CUDA).

    Examples
    --------
    >>> be = BrainExtraction(skull_stripped=True)
    >>> be.inputs.use_gpu, be.inputs.threshold
    (False, 0.5)
    """

    input_spec = _BrainExtractionInputSpec
    output_spec = _BrainExtractionOutputSpec

    def _run_interface(self, runtime):
        with node_errors("BrainExtraction", in_file=self.inputs.in_file):
            device = resolve_device(self.inputs.device, self.inputs.use_gpu)
            out_mask, out_file, volume = extract_brain(
                self.inputs.in_file,
                out_mask=derived_name(self.inputs.in_file, "_mask", newpath=runtime.cwd),
                out_brain=derived_name(self.inputs.in_file, "_brain", newpath=runtime.cwd),
                skull_stripped=self.inputs.skull_stripped,
                threshold=self.inputs.threshold,
                device=device,
                num_threads=self.inputs.num_threads if isdefined(self.inputs.num_threads) else None,
            )
        self._results.update(out_mask=out_mask, out_file=out_file, mask_volume_ml=volume)
        return runtime

# SPDX-License-Identifier: Apache-2.0
"""Small real-anatomy files for interface tests (MNI152 2009a from nilearn, downsampled)."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from niaffine.data.synthetic import t2_like
from niaffine.data.templates import load_mni_brain_mask, load_mni_gm, load_mni_t1, load_mni_wm


def downsample(img: nb.Nifti1Image, factor: int = 2, *, order: int = 1) -> nb.Nifti1Image:
    """Block average (or take every ``factor``-th voxel for masks) with the matching affine."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    shape = np.array(data.shape) // factor
    data = data[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    if order == 0:
        out = data[::factor, ::factor, ::factor]
    else:
        out = data.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean((1, 3, 5))
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] * factor
    affine[:3, 3] = nb.affines.apply_affine(img.affine, [(factor - 1) / 2.0] * 3)
    new = nb.Nifti1Image(out.astype(np.float32), affine)
    new.header.set_xyzt_units("mm")
    return new


@pytest.fixture(scope="session")
def mni_files(tmp_path_factory):
    """MNI T1 (1 mm and 2 mm), brain masks, T2-like 2 mm image, as files."""
    folder = tmp_path_factory.mktemp("mni")
    t1, mask = load_mni_t1(), load_mni_brain_mask()
    t2 = t2_like(t1, load_mni_gm(), load_mni_wm(), mask)
    files = {
        "t1_1mm": folder / "mni_T1w_1mm.nii.gz",
        "mask_1mm": folder / "mni_mask_1mm.nii.gz",
        "t1": folder / "mni_T1w.nii.gz",
        "mask": folder / "mni_mask.nii.gz",
        "t2": folder / "mni_T2w.nii.gz",
    }
    t1.to_filename(files["t1_1mm"])
    mask.to_filename(files["mask_1mm"])
    downsample(t1).to_filename(files["t1"])
    small_mask = downsample(mask)
    nb.Nifti1Image(
        (np.asarray(small_mask.dataobj) >= 0.5).astype(np.uint8), small_mask.affine
    ).to_filename(files["mask"])
    downsample(t2).to_filename(files["t2"])
    return {key: str(value) for key, value in files.items()}


def check_spec(spec_class, expected: dict) -> None:
    """Nipype-style spec check: each trait exists and carries the expected metadata."""
    traits = spec_class().traits()
    for name, metadata in expected.items():
        assert name in traits, f"{spec_class.__name__} lacks {name}"
        for key, value in metadata.items():
            if key == "exists":  # File(exists=...) lives on the trait type, not the metadata
                actual = getattr(traits[name].trait_type, "exists", None)
                if actual is None:  # list of files
                    inner = getattr(traits[name].trait_type, "item_trait", None)
                    actual = getattr(getattr(inner, "trait_type", None), "exists", None)
            else:
                actual = getattr(traits[name], key)
            assert actual == value, (name, key, actual)

# SPDX-License-Identifier: Apache-2.0
"""Small real-anatomy registration problems shared by the engine, io and CLI tests.

The MNI152 2009a T1 (nilearn's packaged copy) is resampled once per process to a 3 mm RAS grid:
66 x 78 x 64 voxels, about 1 s per registration on one CPU thread with ``FAST`` settings.
Moving images are the same anatomy pushed through a known fixed-to-moving world matrix with
:func:`niaffine.data.geometry.warp_to_grid`, so ``resample(moving, true) == fixed``.
"""

from __future__ import annotations

from functools import lru_cache

import nibabel as nib
import numpy as np

from niaffine.data import geometry, synthetic, templates

#: Registration settings for the 3 mm problems: two levels, 20k samples.
FAST = {"levels_mm": (6.0, 3.0), "max_samples": 20_000}
FIXED_SHAPE = (66, 78, 64)
FIXED_VOXEL = 3.0
FIELD_CENTRE = (0.0, -18.0, 22.0)
#: Extent (mm) of the moving fields of view, centred on the moved brain.
MOVING_EXTENT_MM = (200.0, 220.0, 200.0)


@lru_cache(maxsize=1)
def _mni_1mm():
    return templates.load_mni_t1(), templates.load_mni_brain_mask()


@lru_cache(maxsize=1)
def _t2_1mm():
    t1, mask = _mni_1mm()
    return synthetic.t2_like(t1, templates.load_mni_gm(), templates.load_mni_wm(), mask)


def source_image(contrast: str = "T1") -> nib.Nifti1Image:
    """The 1 mm template (T1) or its T2-like contrast: the anatomy every case is made from."""
    return _mni_1mm()[0] if contrast == "T1" else _t2_1mm()


def _copy(img: nib.Nifti1Image) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.array(img.dataobj), img.affine.copy(), img.header.copy())


@lru_cache(maxsize=4)
def _fixed(contrast: str, orientation: str):
    t1, mask = _mni_1mm()
    grid = geometry.make_grid(shape=FIXED_SHAPE, voxel_size=FIXED_VOXEL, orientation=orientation,
                              centre=FIELD_CENTRE)
    img = geometry.warp_to_grid(source_image(contrast), np.eye(4), grid, FIXED_SHAPE)
    soft = np.asarray(geometry.warp_to_grid(mask, np.eye(4), grid, FIXED_SHAPE).dataobj)
    mask_img = nib.Nifti1Image((soft >= 0.5).astype(np.uint8), grid)
    return img, mask_img


def fixed_3mm(contrast: str = "T1", orientation: str = "RAS"):
    """``(image, brain mask)`` of the template on the 3 mm fixed grid (private copies)."""
    img, mask = _fixed(contrast, orientation)
    return _copy(img), _copy(mask)


def brain_centre() -> np.ndarray:
    """World centre of mass (mm) of the brain mask on the fixed grid."""
    _, mask = _fixed("T1", "RAS")
    vox = np.argwhere(np.asarray(mask.dataobj) > 0).mean(axis=0)
    return nib.affines.apply_affine(mask.affine, vox)


def about_centre(linear, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """World matrix applying ``linear`` about the brain centre, then ``translation`` (mm)."""
    c = brain_centre()
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = c + np.asarray(translation, dtype=float) - np.asarray(linear) @ c
    return m


def true_affine(seed: int, dof: int, *, rotation_deg: float = 15.0, translation_mm: float = 15.0,
                **kwargs) -> np.ndarray:
    """A random fixed-to-moving matrix about the brain centre (``random_affine``)."""
    return geometry.random_affine(np.random.default_rng(seed), dof=dof, centre=brain_centre(),
                                  max_rotation_deg=rotation_deg, max_translation_mm=translation_mm,
                                  **kwargs)


def moving_image(true, *, voxel_size=3.0, orientation="RAS", oblique_deg=0.0, contrast="T1",
                 extent_mm=MOVING_EXTENT_MM) -> nib.Nifti1Image:
    """The template seen through ``true`` on a grid centred on the moved brain."""
    spacing = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    shape = tuple(int(s) for s in np.ceil(np.asarray(extent_mm) / spacing))
    centre = nib.affines.apply_affine(true, brain_centre())
    grid = geometry.make_grid(shape=shape, voxel_size=spacing, orientation=orientation,
                              oblique_deg=oblique_deg, centre=centre)
    return geometry.warp_to_grid(source_image(contrast), true, grid, shape)


def moving_mask(true, moving: nib.Nifti1Image) -> nib.Nifti1Image:
    """The brain mask pushed through ``true`` onto ``moving``'s grid."""
    soft = geometry.warp_to_grid(_mni_1mm()[1], true, moving.affine, moving.shape)
    return nib.Nifti1Image((np.asarray(soft.dataobj) >= 0.5).astype(np.uint8), moving.affine)


def error_mm(true, estimate, mask=None) -> float:
    """Mean displacement (mm) between two fixed-to-moving matrices over the fixed brain mask."""
    if mask is None:
        mask = _fixed("T1", "RAS")[1]
    return geometry.mean_displacement(true, estimate, mask)


def save(img: nib.Nifti1Image, path) -> str:
    """Write ``img`` to ``path`` (float32) and return the path as a string."""
    nib.save(img, str(path))
    return str(path)

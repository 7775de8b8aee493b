# SPDX-License-Identifier: Apache-2.0
"""Synthetic registration cases built from real anatomy (the packaged MNI152 2009a template).

A case is the 1 mm MNI T1 (fixed) and the same anatomy seen through a known random affine on
another grid (moving): other orientation, anisotropic voxels, oblique axes, a cropped field of
view, optionally T2-like contrast, a synthetic scalp, a bias field and Rician noise. The ground
truth ``true_matrix`` maps fixed world points to moving world points (RAS mm, the
ITK / nitransforms convention used by `niaffine.engine.register`).

Only numpy, scipy and nibabel are used, never `niaffine.engine`, so these cases are an
independent check of the engine.

Examples
--------
>>> import numpy as np
>>> case = make_case(np.random.default_rng(1), contrast="T2")  # doctest: +SKIP
>>> result = register(case.fixed, case.moving)                  # doctest: +SKIP
>>> mean_displacement(case.true_matrix, result.matrix, case.fixed_mask)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .geometry import (
    _float_image,
    direction_matrix,
    displacements,
    make_grid,
    max_displacement,
    mean_displacement,
    random_affine,
    warp_to_grid,
)
from .templates import load_mni_brain_mask, load_mni_gm, load_mni_t1, load_mni_wm

LOGGER = logging.getLogger(__name__)

__all__ = [
    "Case",
    "make_case",
    "t2_like",
    "add_scalp",
    "bias_field",
    "add_noise",
    "random_affine",
    "make_grid",
    "warp_to_grid",
    "displacements",
    "mean_displacement",
    "max_displacement",
]

CONTRASTS = ("T1", "T2")

# Layers outside the brain for `add_scalp`: (name, mean thickness mm, T1 level, T2 level),
# levels as fractions of the brain's 99th intensity percentile.
_SCALP_LAYERS = (
    ("csf", 2.5, 0.12, 1.00),
    ("inner table", 2.0, 0.03, 0.03),
    ("diploe", 2.5, 0.45, 0.35),
    ("outer table", 1.5, 0.03, 0.03),
    ("fat", 4.0, 1.10, 0.85),
    ("skin", 1.5, 0.50, 0.40),
)


def _as_array(img_or_array) -> np.ndarray:
    if isinstance(img_or_array, np.ndarray):
        return img_or_array
    return np.asarray(img_or_array.dataobj, dtype=np.float32)


def _smooth_field(shape: Sequence[int], rng: np.random.Generator, n_control: int = 4):
    """Random smooth field with maximum magnitude 1, as a separable sum of Gaussian bumps.

    ``n_control`` bumps per axis; the field is a tensor product of per-axis bases applied to a
    random coefficient cube, so no full-size coordinate arrays are made.
    """
    field_ = rng.standard_normal((n_control,) * 3).astype(np.float32)
    for axis, size in enumerate(shape):
        x = np.linspace(0.0, 1.0, int(size))[:, None]
        centres = np.linspace(0.0, 1.0, n_control)[None, :]
        width = 1.0 / max(n_control - 1, 1)
        basis = np.exp(-0.5 * ((x - centres) / width) ** 2).astype(np.float32)
        field_ = np.moveaxis(np.tensordot(field_, basis, axes=([axis], [1])), -1, axis)
    peak = float(np.abs(field_).max())
    if peak > 0:
        field_ /= peak
    return field_


def t2_like(t1, gm, wm, mask) -> nib.Nifti1Image:
    """An image with T2-weighted-like contrast: CSF bright, grey matter mid, white matter dark.

    With the tissue maps scaled to probabilities, ``csf = clip(mask - gm - wm, 0, 1)`` and the
    intensity is ``255 * (1.0 csf + 0.5 gm + 0.3 wm + 0.1 (1 - t1 / max(t1)))`` inside the mask
    (the small inverted-T1 term keeps detail the tissue maps lack), zero outside.

    Parameters
    ----------
    t1, gm, wm, mask : nibabel image
        Skull-stripped T1, grey- and white-matter maps (0-255 or 0-1), brain mask, on one grid.

    Returns
    -------
    img : nibabel.Nifti1Image
        float32 image on the grid of ``t1``.
    """
    t1_data, gm_data, wm_data = _as_array(t1), _as_array(gm), _as_array(wm)
    inside = _as_array(mask) > 0
    if not (t1_data.shape == gm_data.shape == wm_data.shape == inside.shape):
        raise ValueError("t1, gm, wm and mask must share one grid")
    gm_p = gm_data / (255.0 if gm_data.max() > 1.0 else 1.0)
    wm_p = wm_data / (255.0 if wm_data.max() > 1.0 else 1.0)
    csf = np.clip(inside - gm_p - wm_p, 0.0, 1.0)
    t1_max = max(float(t1_data.max()), 1e-6)
    out = 1.0 * csf + 0.5 * gm_p + 0.3 * wm_p + 0.1 * (1.0 - t1_data / t1_max)
    out *= 255.0 * inside
    return _float_image(np.clip(out, 0.0, None), t1.affine)


def add_scalp(
    brain_img,
    rng: np.random.Generator,
    *,
    mask=None,
    margin_mm: float = 30.0,
    contrast: str = "T1",
) -> nib.Nifti1Image:
    """A head image: the brain wrapped in synthetic CSF, skull and scalp layers.

    Around the brain mask, at increasing distance: CSF (dark on T1, bright on T2), inner
    table (dark), diploe (mid), outer table (dark), subcutaneous fat (bright) and skin, then
    air. Layer thicknesses (about 14 mm in all) vary smoothly over the head by up to 30 %.
    The grid is the brain's grid padded by ``margin_mm`` on every side. Distances are computed
    on a grid about 2 mm coarse to keep memory modest. The shell closes under the brainstem
    (no neck).

    Parameters
    ----------
    brain_img : nibabel image
        Skull-stripped brain (zero outside).
    rng : numpy.random.Generator
        Source of randomness (thickness variation).
    mask : nibabel image, optional
        Brain mask on the grid of ``brain_img``; default: non-zero voxels, holes filled.
    margin_mm : float
        Padding added around the input grid; must exceed the shell thickness.
    contrast : {"T1", "T2"}
        Picks the intensity of each layer.

    Returns
    -------
    img : nibabel.Nifti1Image
        float32 head image on the padded grid.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    data = _as_array(brain_img)
    brain = _as_array(mask) > 0 if mask is not None else ndi.binary_fill_holes(data > 0)
    spacing = nib.affines.voxel_sizes(brain_img.affine)
    pad = np.ceil(margin_mm / spacing).astype(int)
    shape = tuple(np.array(data.shape) + 2 * pad)
    affine = np.array(brain_img.affine, dtype=float)
    affine[:3, 3] = affine[:3, :3] @ (-pad) + affine[:3, 3]

    # distance (mm) from the brain on a coarse grid of blocks (any brain voxel -> brain block)
    factor = np.maximum(1, np.round(2.0 / spacing)).astype(int)
    coarse_shape = -(-np.array(shape) // factor)
    padded = np.zeros(tuple(coarse_shape * factor), dtype=bool)
    sl = tuple(slice(p, p + n) for p, n in zip(pad, data.shape))
    padded[sl] = brain
    blocks = padded.reshape(coarse_shape[0], factor[0], coarse_shape[1], factor[1],
                            coarse_shape[2], factor[2]).any(axis=(1, 3, 5))
    del padded
    distance = ndi.distance_transform_edt(~blocks, sampling=spacing * factor).astype(np.float32)
    distance /= 1.0 + 0.3 * _smooth_field(coarse_shape, rng, n_control=5)
    fine = ndi.zoom(distance, factor, order=1, mode="nearest", grid_mode=True,
                    output=np.float32)[: shape[0], : shape[1], : shape[2]]
    del distance

    reference = float(np.percentile(data[brain], 99)) if brain.any() else 1.0
    column = 2 if contrast == "T1" else 3
    head = np.zeros(shape, dtype=np.float32)
    outer = 0.0
    for layer in _SCALP_LAYERS:
        inner, outer = outer, outer + layer[1]
        head[(fine > inner) & (fine <= outer)] = layer[column] * reference
    head[sl] = np.where(brain, data, head[sl])
    LOGGER.debug("scalp added: grid %s, shell %.1f mm", shape, outer)
    return _float_image(head, affine)


def bias_field(shape_or_img, rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
    """Smooth multiplicative intensity non-uniformity.

    Parameters
    ----------
    shape_or_img : (3,) sequence of int or nibabel image
        Shape of the field (the image's shape for an image).
    rng : numpy.random.Generator
        Source of randomness.
    strength : float
        The field lies in ``[1 - strength, 1 + strength]`` (both bounds reached); < 1.

    Returns
    -------
    field : ndarray
        float32, to multiply the image with.

    Examples
    --------
    >>> f = bias_field((8, 9, 10), np.random.default_rng(0), strength=0.2)
    >>> f.shape, bool(0.79 < f.min() and f.max() < 1.21)
    ((8, 9, 10), True)
    """
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"strength must be in [0, 1), got {strength}")
    shape = shape_or_img.shape[:3] if hasattr(shape_or_img, "shape") else tuple(shape_or_img)
    return 1.0 + np.float32(strength) * _smooth_field(shape, rng)


def add_noise(img, rng: np.random.Generator, sigma_fraction: float = 0.02, *,
              kind: str = "rician") -> nib.Nifti1Image:
    """Add Rician (magnitude) or Gaussian noise.

    Parameters
    ----------
    img : nibabel image
        Noise-free image.
    rng : numpy.random.Generator
        Source of randomness.
    sigma_fraction : float
        Noise standard deviation as a fraction of the 99th percentile of the non-zero voxels.
    kind : {"rician", "gaussian"}
        Rician: ``sqrt((s + n1)^2 + n2^2)`` (non-negative, as in magnitude images);
        Gaussian: ``s + n1``.

    Returns
    -------
    img : nibabel.Nifti1Image
        float32 noisy image on the same grid.
    """
    if kind not in ("rician", "gaussian"):
        raise ValueError(f"kind must be 'rician' or 'gaussian', got {kind!r}")
    data = np.array(_as_array(img), dtype=np.float32)
    nonzero = data[data > 0]
    sigma = np.float32(sigma_fraction * (np.percentile(nonzero, 99) if nonzero.size else 1.0))
    data += sigma * rng.standard_normal(data.shape, dtype=np.float32)
    if kind == "rician":
        imaginary = sigma * rng.standard_normal(data.shape, dtype=np.float32)
        np.hypot(data, imaginary, out=data)
    return _float_image(data, img.affine)


@dataclass(frozen=True)
class Case:
    """One synthetic registration problem with its ground truth.

    Attributes
    ----------
    fixed : nibabel.Nifti1Image
        The MNI152 2009a T1 at 1 mm (skull-stripped, float32).
    fixed_mask : nibabel.Nifti1Image
        Its brain mask (uint8).
    moving : nibabel.Nifti1Image
        The same anatomy through ``true_matrix`` on another grid.
    moving_mask : nibabel.Nifti1Image or None
        Brain mask on the moving grid (uint8).
    true_matrix : (4, 4) array
        Fixed-to-moving world matrix (RAS mm): resampling ``moving`` with it gives ``fixed``.
    contrast : {"T1", "T2"}
        Contrast of ``moving``.
    info : dict
        Generation settings (grid, orientation, oblique angle, margins, ...), JSON-safe.
    """

    fixed: nib.Nifti1Image
    fixed_mask: nib.Nifti1Image
    moving: nib.Nifti1Image
    moving_mask: nib.Nifti1Image | None
    true_matrix: np.ndarray
    contrast: str
    info: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def _brain_points_and_centre() -> tuple[np.ndarray, np.ndarray]:
    """World points of the template's brain outline (subsampled) and its centre of mass."""
    mask_img = load_mni_brain_mask()
    mask = np.asarray(mask_img.dataobj) > 0
    surface = mask & ~ndi.binary_erosion(mask)
    points = nib.affines.apply_affine(mask_img.affine, np.argwhere(surface)[::4].astype(float))
    centre = nib.affines.apply_affine(mask_img.affine, np.array(ndi.center_of_mass(mask)))
    points.flags.writeable = False
    centre.flags.writeable = False
    return points, centre


def make_case(
    rng: np.random.Generator,
    *,
    contrast: str = "T1",
    dof: int = 12,
    moving_voxel_size: float | Sequence[float] = (1.2, 1.0, 1.5),
    orientation: str = "LPS",
    oblique_deg: float | Sequence[float] | None = None,
    crop: bool = True,
    bias: bool = True,
    noise: bool = True,
    scalp: bool = False,
    moving_shape: Sequence[int] | None = None,
    max_rotation_deg: float = 30.0,
    max_translation_mm: float = 30.0,
    max_scale: float = 0.10,
    max_shear: float = 0.05,
    order: int = 3,
) -> Case:
    """A random registration problem: the MNI T1 against the same anatomy moved and re-imaged.

    Draws, in this order and only from ``rng`` (so a seed reproduces a case): the affine
    (`random_affine` about the brain's centre of mass), the oblique angle (when
    ``oblique_deg`` is None: uniform in ±15° about the x axis), the field-of-view margins, the
    scalp, the bias field and the noise. The moving grid has the requested orientation and
    voxel sizes and holds the moved brain plus a margin: 4-12 mm per side with ``crop``
    (smaller than the template's field of view), 40 mm without.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    contrast : {"T1", "T2"}
        Moving contrast: the template T1 or the T2-like image of `t2_like`.
    dof : {3, 6, 7, 9, 12}
        Degrees of freedom of the true transform.
    moving_voxel_size : float or (3,) sequence of float
        Moving voxel sizes (mm).
    orientation : str
        Moving axis codes (e.g. ``"LPS"``, ``"LIA"``).
    oblique_deg : float, (3,) sequence of float or None
        Moving grid tilt, see `make_grid`; None draws it.
    crop, bias, noise, scalp : bool
        Tight field of view; 20 % bias field; 2 % Rician noise; synthetic skull and scalp
        around the moving brain (the fixed image stays skull-stripped).
    moving_shape : (3,) sequence of int, optional
        Fixed moving grid size (e.g. to batch cases), centred on the moved brain; by default
        the size follows the brain's extent and the margins. A warning is logged when this
        size cuts the brain.
    max_rotation_deg, max_translation_mm, max_scale, max_shear : float
        Ranges for `random_affine`.
    order : {1, 3}
        Interpolation used to make the moving image.

    Returns
    -------
    case : Case
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    fixed = load_mni_t1()
    fixed_mask = load_mni_brain_mask()
    points, centre = _brain_points_and_centre()

    true_matrix = random_affine(
        rng, max_rotation_deg=max_rotation_deg, max_translation_mm=max_translation_mm,
        max_scale=max_scale, max_shear=max_shear, dof=dof, centre=centre,
    )
    if oblique_deg is None:
        oblique_deg = float(rng.uniform(-15.0, 15.0))
    margins = rng.uniform(4.0, 12.0, size=(2, 3)) if crop else np.full((2, 3), 40.0)

    # moving grid: the moved brain's extent along the grid axes, plus margins
    directions = direction_matrix(orientation, oblique_deg)
    along = nib.affines.apply_affine(true_matrix, points) @ directions
    low, high = along.min(axis=0) - margins[0], along.max(axis=0) + margins[1]
    spacing = np.broadcast_to(np.asarray(moving_voxel_size, dtype=float), (3,))
    shape = tuple(int(s) for s in np.ceil((high - low) / spacing).astype(int) + 1)
    if moving_shape is not None:
        if np.any((np.asarray(moving_shape) - 1) * spacing < (high - low) - margins.sum(axis=0)):
            LOGGER.warning("moving_shape %s cuts the brain (needs %s)", moving_shape, shape)
        shape = tuple(int(s) for s in moving_shape)
    grid = make_grid(shape=shape, voxel_size=spacing, orientation=orientation,
                     oblique_deg=oblique_deg, centre=directions @ ((low + high) / 2.0))

    source = fixed
    if contrast == "T2":
        source = t2_like(fixed, load_mni_gm(), load_mni_wm(), fixed_mask)
    if scalp:
        source = add_scalp(source, rng, mask=fixed_mask, contrast=contrast)
    moving = warp_to_grid(source, true_matrix, grid, shape, order=order)
    del source
    data = np.asarray(moving.dataobj)
    np.clip(data, 0.0, None, out=data)  # cubic overshoot
    if bias:
        data *= bias_field(shape, rng, strength=0.2)
    if noise:
        moving = add_noise(moving, rng, sigma_fraction=0.02)
    moving_mask = warp_to_grid(fixed_mask, true_matrix, grid, shape, order=1)
    moving_mask = nib.Nifti1Image((np.asarray(moving_mask.dataobj) >= 0.5).astype(np.uint8),
                                  grid, moving_mask.header)
    moving_mask.set_data_dtype(np.uint8)

    info = {
        "dof": int(dof), "orientation": orientation,
        "voxel_size": [float(v) for v in spacing], "shape": list(shape),
        "oblique_deg": np.atleast_1d(oblique_deg).astype(float).tolist(),
        "crop": bool(crop), "bias": bool(bias), "noise": bool(noise), "scalp": bool(scalp),
        "margins_mm": margins.tolist(), "centre": centre.tolist(),
    }
    LOGGER.debug("synthetic case: %s", info)
    return Case(fixed=fixed, fixed_mask=fixed_mask, moving=moving, moving_mask=moving_mask,
                true_matrix=true_matrix, contrast=contrast, info=info)

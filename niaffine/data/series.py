# SPDX-License-Identifier: Apache-2.0
"""Simulated 4D series with known head motion, made from real anatomy (the MNI152 2009a).

Two kinds of series, both fully parameterised (grid, voxel size, obliquity, length, motion path,
contrast, noise, drift, eddy-current model), so that tests and benchmarks can vary them:

- :func:`make_bold_series`: an EPI-like (T2*-like) run: CSF bright, grey matter above white
  matter, an optional dim scalp, a static bias field, slow signal drift and Rician noise.
- :func:`make_dwi_series`: b=0 volumes interleaved with diffusion-weighted volumes (one or more
  shells) whose contrast differs from the b=0 (CSF dark, white matter depending on the gradient
  direction through a smooth fibre-orientation field), with eddy-current distortions (scale,
  shear and shift along the phase-encoding axis, linear in the gradient vector).

Volume ``t`` is the anatomy seen through the true world matrix ``true_matrices[t]`` (anatomy world
points to the volume's world points, the ITK convention of everything else) and sampled on the
series grid. The anatomy is first blurred by a Gaussian point-spread function as wide as the
voxels (``psf_fwhm``; 0 samples the 1 mm anatomy at points, which aliases).

Errors are measured with :func:`volume_errors`: the mean and largest displacement over the brain
of each volume's volume-0-to-volume-t map, estimated against true, so that the choice of the
reference drops out. :func:`bvec_errors_deg` checks rotated b-vectors the same way. (Motion
paths, gradient directions and these error measures live in :mod:`niaffine.data.series_truth`
and are re-exported here.)

Only numpy, scipy and nibabel are used here (never :mod:`niaffine.engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .geometry import direction_matrix, make_grid, rotation_matrix, warp_to_grid
from .series_truth import (
    MotionPath,
    bvec_errors_deg,
    bvecs_to_world,
    gradient_directions,
    random_motion,
    volume_errors,
    world_to_bvecs,
)
from .synthetic import bias_field, t2_like
from .templates import load_mni_brain_mask, load_mni_gm, load_mni_t1, load_mni_wm

LOGGER = logging.getLogger(__name__)

__all__ = [
    "MotionPath",
    "SeriesCase",
    "random_motion",
    "make_bold_series",
    "make_dwi_series",
    "gradient_directions",
    "bvecs_to_world",
    "world_to_bvecs",
    "volume_errors",
    "bvec_errors_deg",
]

#: Apparent diffusion coefficients (mm^2/s) of the tissue classes of the DWI model.
ADC_CSF, ADC_GM = 3.0e-3, 0.8e-3
#: White matter: diffusivity along and across the local fibre direction.
ADC_WM_PARALLEL, ADC_WM_PERPENDICULAR = 1.7e-3, 0.3e-3


@dataclass(frozen=True)
class SeriesCase:
    """A simulated series and its ground truth.

    Attributes
    ----------
    series : nibabel.Nifti1Image
        4D float32 series.
    true_matrices : (T, 4, 4) array
        Anatomy (MNI world) points to each volume's world points, eddy distortion included.
    head_matrices : (T, 4, 4) array
        The rigid part (head pose) alone; equal to ``true_matrices`` for BOLD.
    anatomy_mask : nibabel.Nifti1Image
        Brain mask of the anatomy (1 mm MNI grid): where errors are measured.
    mask : nibabel.Nifti1Image
        The brain mask at volume 0's pose on the series grid (uint8).
    motion : MotionPath
    bvals : (T,) array or None
    bvecs : (3, T) array or None
        FSL convention: unit vectors in the series' voxel axes (x flipped when the
        voxel-to-world determinant is positive); zero for b=0 volumes.
    kind : {"bold", "dwi"}
    info : dict
        Generation settings (JSON-safe).
    """

    series: nib.Nifti1Image
    true_matrices: np.ndarray
    head_matrices: np.ndarray
    anatomy_mask: nib.Nifti1Image
    mask: nib.Nifti1Image
    motion: MotionPath
    bvals: np.ndarray | None = None
    bvecs: np.ndarray | None = None
    kind: str = "bold"
    info: dict = field(default_factory=dict)


@lru_cache(maxsize=2)
def _anatomy(source_mm: float):
    """T1, GM, WM, brain mask and T2-like image of the MNI anatomy at ``source_mm`` (read-only)."""
    t1, gm, wm, mask = load_mni_t1(), load_mni_gm(), load_mni_wm(), load_mni_brain_mask()
    t2 = t2_like(t1, gm, wm, mask)
    arrays = [np.asarray(img.dataobj, dtype=np.float32) for img in (t1, gm, wm, mask, t2)]
    affine = np.asarray(t1.affine, dtype=float)
    factor = int(round(source_mm))
    if factor > 1:
        arrays = [_block_mean(a, factor) for a in arrays]
        affine = affine @ np.diag([factor, factor, factor, 1.0])
        affine[:3, 3] = nib.affines.apply_affine(t1.affine, [(factor - 1) / 2.0] * 3)
    for a in arrays:
        a.flags.writeable = False
    return tuple(arrays), affine


def _block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    shape = np.array(data.shape) // factor
    data = data[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return data.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean((1, 3, 5))


def _brain_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.array(ndi.center_of_mass(mask > 0.5)))


def _psf(data: np.ndarray, affine: np.ndarray, fwhm_mm: float) -> np.ndarray:
    if fwhm_mm <= 0:
        return np.array(data, dtype=np.float32)
    voxel = nib.affines.voxel_sizes(affine)
    sigma = fwhm_mm / np.sqrt(8 * np.log(2)) / voxel
    return ndi.gaussian_filter(np.asarray(data, dtype=np.float32), sigma, mode="constant")


def _series_grid(rng, *, anatomy_points, placement, voxel_size, orientation, oblique_deg,
                 shape, margin_mm):
    """Grid (affine, shape) of the series around the placed brain, and the obliquity used."""
    if oblique_deg is None:
        oblique_deg = float(rng.uniform(-20.0, 20.0))
    directions = direction_matrix(orientation, oblique_deg)
    spacing = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    along = nib.affines.apply_affine(placement, anatomy_points) @ directions
    low, high = along.min(axis=0) - margin_mm, along.max(axis=0) + margin_mm
    if shape is None:
        shape = tuple(int(s) for s in np.ceil((high - low) / spacing).astype(int) + 1)
    affine = make_grid(shape=shape, voxel_size=spacing, orientation=orientation,
                       oblique_deg=oblique_deg, centre=directions @ ((low + high) / 2.0))
    return affine, tuple(int(s) for s in shape), oblique_deg


def _placement(rng, centre, max_deg: float, max_mm: float) -> np.ndarray:
    """A random pose of the head in the scanner (anatomy world to scanner world)."""
    r = rotation_matrix(np.deg2rad(rng.uniform(-max_deg, max_deg, 3)))
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = centre + rng.uniform(-max_mm, max_mm, 3) - r @ centre
    return out


def _drift(n: int, amount: float, rng) -> np.ndarray:
    """Global signal scale per volume: a linear trend plus a slow oscillation, ``amount`` at most."""
    t = np.linspace(0.0, 1.0, n)
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.6 * t + 0.4 * np.sin(2 * np.pi * 1.5 * t + phase) - 0.4 * np.sin(phase)
    peak = np.abs(wave).max()
    return 1.0 + amount * wave / (peak if peak > 0 else 1.0)


def _noisy(data: np.ndarray, sigma: float, rng) -> np.ndarray:
    """Rician noise of standard deviation ``sigma`` per channel."""
    if sigma <= 0:
        return data
    real = data + sigma * rng.standard_normal(data.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(data.shape, dtype=np.float32)
    return np.hypot(real, imag)


def _image(data: np.ndarray, affine: np.ndarray, tr: float) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    zooms = tuple(nib.affines.voxel_sizes(affine)) + ((float(tr),) if data.ndim == 4 else ())
    img.header.set_zooms(zooms)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _common(rng, n_volumes, *, source_mm, voxel_size, orientation, oblique_deg, shape,
            margin_mm, motion, placement_deg, placement_mm, psf_fwhm):
    """Anatomy, grid, motion, true head matrices and their settings (the ``info`` shared by
    BOLD and DWI series; ``psf_fwhm`` defaults to the mean voxel size)."""
    arrays, src_affine = _anatomy(float(source_mm))
    brain = arrays[3] > 0.5
    centre = _brain_centre(brain, src_affine)
    placement = _placement(rng, centre, placement_deg, placement_mm)
    outline = brain & ~ndi.binary_erosion(brain)
    points = nib.affines.apply_affine(src_affine, np.argwhere(outline)[::3].astype(float))
    grid, shape, oblique = _series_grid(
        rng, anatomy_points=points, placement=placement, voxel_size=voxel_size,
        orientation=orientation, oblique_deg=oblique_deg, shape=shape, margin_mm=margin_mm)
    head_centre = nib.affines.apply_affine(placement, centre)
    if motion is None:
        motion = {}
    if isinstance(motion, dict):
        motion = random_motion(rng, n_volumes, centre=head_centre, **motion)
    if len(motion) != n_volumes:
        raise ValueError(f"the motion path has {len(motion)} volumes, the series {n_volumes}")
    head = motion.matrices() @ placement
    voxels = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    info = {
        "n_volumes": int(n_volumes), "shape": list(shape), "voxel_size": voxels.tolist(),
        "orientation": orientation, "oblique_deg": np.atleast_1d(oblique).astype(float).tolist(),
        "psf_fwhm": float(voxels.mean()) if psf_fwhm is None else psf_fwhm,
        "source_mm": source_mm, "jumps": list(motion.jumps),
    }
    return arrays, src_affine, grid, shape, motion, head, info


def _masks(arrays, src_affine, head0, grid, shape):
    anatomy_mask = nib.Nifti1Image((arrays[3] > 0.5).astype(np.uint8), src_affine)
    soft = warp_to_grid(nib.Nifti1Image(arrays[3], src_affine), head0, grid, shape)
    mask = nib.Nifti1Image((np.asarray(soft.dataobj) >= 0.5).astype(np.uint8), grid)
    return anatomy_mask, mask


def make_bold_series(
    rng: np.random.Generator,
    *,
    n_volumes: int = 60,
    voxel_size: float | Sequence[float] = 3.0,
    orientation: str = "LAS",
    oblique_deg: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    margin_mm: float = 12.0,
    motion: MotionPath | dict | None = None,
    scalp: float = 0.0,
    contrast: str = "T2",
    noise: float = 0.02,
    drift: float = 0.04,
    bias: float = 0.15,
    psf_fwhm: float | None = None,
    source_mm: float = 1.0,
    tr: float = 2.0,
    placement_deg: float = 5.0,
    placement_mm: float = 5.0,
) -> SeriesCase:
    """A simulated BOLD run with known rigid head motion.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness (a seed reproduces a series).
    n_volumes : int
    voxel_size : float or (3,) sequence of float
        Voxel sizes (mm) of the series grid.
    orientation : str
        Axis codes of the series grid (``"LAS"``, ``"RAS"``, ``"LPS"``, ...).
    oblique_deg : float, (3,) sequence of float or None
        Tilt of the grid (see :func:`niaffine.data.geometry.direction_matrix`); None draws
        one in +-20 degrees about the x axis.
    shape : (3,) sequence of int, optional
        Grid size; by default the placed brain's extent plus ``margin_mm`` per side (a small
        shape cuts the brain, as a partial-coverage acquisition does).
    margin_mm : float
    motion : MotionPath, dict or None
        The head motion, or keyword arguments of :func:`random_motion` (defaults: a random
        walk with two jumps of 2-3 mm and 2-3 degrees).
    scalp : float
        Intensity (fraction of the brain's 99th percentile) of a uniform shell of tissue
        6-12 mm around the brain, as a fat-suppressed EPI shows the scalp; 0: brain only.
    contrast : {"T2", "T1"}
        EPI-like T2* contrast (CSF bright, GM > WM), or the T1 itself.
    noise : float
        Rician noise standard deviation as a fraction of the brain's 99th percentile.
    drift : float
        Largest relative change of the global signal over the run (linear trend plus a slow
        oscillation).
    bias : float
        Strength of a static smooth multiplicative bias field (0: none).
    psf_fwhm : float, optional
        FWHM (mm) of the Gaussian point-spread function; default: the mean voxel size.
    source_mm : {1, 2}
        Resolution of the anatomy the volumes are rendered from (2: faster, for quick tests).
    tr : float
        Repetition time written in the header (s).
    placement_deg, placement_mm : float
        Range of the random head pose in the scanner at volume 0.

    Returns
    -------
    SeriesCase
    """
    if contrast not in ("T2", "T1"):
        raise ValueError(f"contrast must be T2 or T1, got {contrast!r}")
    arrays, src_affine, grid, shape, motion, head, geometry = _common(
        rng, n_volumes, source_mm=source_mm, voxel_size=voxel_size, orientation=orientation,
        oblique_deg=oblique_deg, shape=shape, margin_mm=margin_mm, motion=motion,
        placement_deg=placement_deg, placement_mm=placement_mm, psf_fwhm=psf_fwhm)
    t1, _, _, brain, t2 = arrays
    base = np.array(t2 if contrast == "T2" else t1, dtype=np.float32)
    reference_level = float(np.percentile(base[brain > 0.5], 99))
    if scalp > 0:
        base += scalp * reference_level * _shell(brain > 0.5, src_affine, rng)
    base = _psf(base, src_affine, geometry["psf_fwhm"])
    source = nib.Nifti1Image(base, src_affine)
    field_ = bias_field(shape, rng, strength=bias) if bias > 0 else np.ones(shape, np.float32)
    scale = _drift(n_volumes, drift, rng)
    sigma = noise * reference_level
    data = np.empty(tuple(shape) + (n_volumes,), dtype=np.float32)
    for t in range(n_volumes):
        vol = np.asarray(warp_to_grid(source, head[t], grid, shape, order=1).dataobj)
        data[..., t] = _noisy(vol * field_ * scale[t], sigma, rng)
    anatomy_mask, mask = _masks(arrays, src_affine, head[0], grid, shape)
    info = {"kind": "bold", **geometry, "contrast": contrast, "noise": noise, "drift": drift,
            "bias": bias, "scalp": scalp}
    LOGGER.debug("simulated BOLD series: %s", info)
    return SeriesCase(_image(data, grid, tr), head, head.copy(), anatomy_mask, mask, motion,
                      kind="bold", info=info)


def _shell(brain: np.ndarray, affine: np.ndarray, rng) -> np.ndarray:
    """A shell of tissue 6-12 mm outside the brain (thickness varying smoothly)."""
    spacing = nib.affines.voxel_sizes(affine)
    distance = ndi.distance_transform_edt(~brain, sampling=spacing)
    inner = 6.0 + 2.0 * rng.uniform()
    return ((distance > inner) & (distance <= inner + 5.0)).astype(np.float32)


def _fibre_field(shape, rng, n_control: int = 6) -> np.ndarray:
    """A smooth random unit-vector field ``(3, *shape)`` (the local fibre direction)."""
    out = np.empty((3,) + tuple(shape), dtype=np.float32)
    for c in range(3):
        coarse = rng.normal(size=(n_control,) * 3)
        out[c] = ndi.zoom(coarse, np.array(shape) / n_control, order=3, mode="nearest",
                          grid_mode=True)[: shape[0], : shape[1], : shape[2]]
    out /= np.maximum(np.linalg.norm(out, axis=0), 1e-6)
    return out


def make_dwi_series(
    rng: np.random.Generator,
    *,
    n_b0: int = 4,
    directions: int | np.ndarray = 24,
    bvalues: float | Sequence[float] = 1000.0,
    voxel_size: float | Sequence[float] = 2.5,
    orientation: str = "LAS",
    oblique_deg: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    margin_mm: float = 10.0,
    motion: MotionPath | dict | None = None,
    eddy_scale: float = 0.01,
    eddy_shift_mm: float = 1.0,
    pe_axis: int = 1,
    noise: float = 0.02,
    drift: float = 0.02,
    bias: float = 0.15,
    psf_fwhm: float | None = None,
    source_mm: float = 1.0,
    placement_deg: float = 5.0,
    placement_mm: float = 5.0,
) -> SeriesCase:
    """A simulated diffusion series: b=0 volumes and diffusion-weighted shells, with motion and eddy.

    The b=0 signal is T2-like; at b > 0 each tissue is attenuated by ``exp(-b D)`` (CSF 3.0,
    GM 0.8, WM 0.3 across and 1.7 along a smooth random fibre direction, in 1e-3 mm^2/s), the
    gradient direction taken relative to the moving head. Eddy currents distort each
    diffusion-weighted volume along the phase-encoding axis ``p`` of its grid:
    ``x -> x + p (k . (x - c) + s)`` with ``k = K g`` (scale along ``p`` and two shears) and
    ``s = w . g`` (shift) linear in the gradient vector ``g`` (``K``, ``w`` random, of sizes
    ``eddy_scale`` and ``eddy_shift_mm``), so that opposite gradients distort oppositely.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_b0 : int
        b=0 volumes, the first at volume 0 and the others spread through the run.
    directions : int or (N, 3) array
        Gradient directions per shell: a number spreads them evenly over a half sphere and
        shuffles their order (as acquisition schemes spread successive directions), an array
        is used in its order.
    bvalues : float or sequence of float
        One b-value per shell (s/mm^2).
    pe_axis : {0, 1, 2}
        Voxel axis of the phase encoding (1: j, as for axial AP/PA acquisitions).
    voxel_size, orientation, oblique_deg, shape, margin_mm, motion, noise, drift, bias, \
psf_fwhm, source_mm, placement_deg, placement_mm
        As :func:`make_bold_series` (the noise fraction refers to the b=0 signal).

    Returns
    -------
    SeriesCase
        With ``bvals``, ``bvecs`` (FSL convention, the series' voxel frame),
        ``true_matrices`` (eddy included) and ``head_matrices`` (rigid head pose only).
    """
    shells = np.atleast_1d(np.asarray(bvalues, dtype=float))
    if np.isscalar(directions):
        dirs = rng.permutation(gradient_directions(int(directions)))
    else:
        dirs = np.asarray(directions, dtype=float)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    weighted = [(b, g) for b in shells for g in dirs]
    n_volumes = int(n_b0) + len(weighted)
    b0_at = np.unique(np.round(np.linspace(0, n_volumes, int(n_b0), endpoint=False)).astype(int))
    bvals, world_dirs, it = np.zeros(n_volumes), np.zeros((n_volumes, 3)), iter(weighted)
    for t in range(n_volumes):
        if t not in b0_at:
            bvals[t], world_dirs[t] = next(it)
    arrays, src_affine, grid, shape, motion, head, geometry = _common(
        rng, n_volumes, source_mm=source_mm, voxel_size=voxel_size, orientation=orientation,
        oblique_deg=oblique_deg, shape=shape, margin_mm=margin_mm, motion=motion,
        placement_deg=placement_deg, placement_mm=placement_mm, psf_fwhm=psf_fwhm)
    t1, gm, wm, brain, _ = arrays
    inside = brain > 0.5
    gm_p, wm_p = gm / 255.0, wm / 255.0
    csf = np.clip(inside - gm_p - wm_p, 0.0, 1.0)
    detail = 0.1 * (1.0 - t1 / max(float(t1.max()), 1e-6)) * inside
    fibres = _fibre_field(t1.shape, rng)
    fwhm = geometry["psf_fwhm"]

    pe = grid[:3, pe_axis] / np.linalg.norm(grid[:3, pe_axis])
    fov_centre = nib.affines.apply_affine(grid, (np.array(shape) - 1) / 2.0)
    coupling = rng.uniform(-1.0, 1.0, (3, 3)) * eddy_scale / np.sqrt(3.0)
    shift_coupling = rng.uniform(-1.0, 1.0, 3) * eddy_shift_mm / np.sqrt(3.0)
    true = head.copy()
    for t in range(n_volumes):
        if bvals[t] > 0:
            eddy = np.eye(4)
            k = coupling @ world_dirs[t]
            eddy[:3, :3] += np.outer(pe, k)
            eddy[:3, 3] = pe * (shift_coupling @ world_dirs[t]) - np.outer(pe, k) @ fov_centre
            true[t] = eddy @ head[t]

    level = None
    field_ = bias_field(shape, rng, strength=bias) if bias > 0 else np.ones(shape, np.float32)
    scale = _drift(n_volumes, drift, rng)
    data = np.empty(tuple(shape) + (n_volumes,), dtype=np.float32)
    for t in range(n_volumes):
        b = bvals[t]
        signal = 255.0 * (csf * np.exp(-b * ADC_CSF) + 0.5 * gm_p * np.exp(-b * ADC_GM)
                          + detail * np.exp(-b * ADC_GM))
        if b > 0:
            # the gradient direction in the anatomy's frame: the head has rotated
            g_anat = np.linalg.solve(head[t][:3, :3], world_dirs[t])
            cos2 = np.tensordot(g_anat.astype(np.float32), fibres, axes=1) ** 2
            adc = ADC_WM_PERPENDICULAR + (ADC_WM_PARALLEL - ADC_WM_PERPENDICULAR) * cos2
            signal = signal + 255.0 * 0.3 * wm_p * np.exp(-b * adc)
        else:
            signal = signal + 255.0 * 0.3 * wm_p
        if level is None:
            level = float(np.percentile(signal[inside], 99))
        source = nib.Nifti1Image(_psf(signal * inside, src_affine, fwhm), src_affine)
        vol = np.asarray(warp_to_grid(source, true[t], grid, shape, order=1).dataobj)
        data[..., t] = _noisy(vol * field_ * scale[t], noise * level, rng)
    anatomy_mask, mask = _masks(arrays, src_affine, head[0], grid, shape)
    bvecs = np.zeros((3, n_volumes))
    weighted_at = bvals > 0
    bvecs[:, weighted_at] = world_to_bvecs(world_dirs[weighted_at], grid)
    info = {"kind": "dwi", **geometry, "b0_volumes": b0_at.tolist(), "bvalues": shells.tolist(),
            "pe_axis": int(pe_axis), "eddy_scale": eddy_scale, "eddy_shift_mm": eddy_shift_mm,
            "noise": noise, "drift": drift, "bias": bias}
    LOGGER.debug("simulated DWI series: %s", info)
    return SeriesCase(_image(data, grid, 1.0), true, head, anatomy_mask, mask, motion,
                      bvals=bvals, bvecs=bvecs, kind="dwi", info=info)

# SPDX-License-Identifier: Apache-2.0
"""Series realignment: every volume of a 4D series registered to one reference, batched.

:func:`register_series` is to a BOLD or DWI run what :func:`~niaffine.engine.register` is to two
images: it returns one world (RAS mm) matrix per volume, mapping **reference points to the
volume's points** (ITK convention), which resamples each volume into the reference space.

How (all through :func:`~niaffine.engine.register_batch`, many volumes per call):

- Reference: by default a robust one. A first pass registers every volume to one volume (the
  most typical of the first ten for BOLD, the first b=0 for DWI); the reference is then the
  voxel-wise median (mean for fewer than five volumes) of the realigned volumes (b=0 ones for
  DWI), on that volume's grid, and a second pass registers every volume to it, starting from
  the first pass. A given volume index or image is used as is (one pass).
- Levels suit small EPI volumes: spacings are multiples of the reference's voxel size
  (4, 2, 1 by default, finer than the voxels collapses onto them) and every level is smoothed
  by a Gaussian as wide as its spacing. Without that smoothing, linear interpolation between
  two images on the same grid has a cusp at every whole-voxel shift (zero motion included),
  which stalls the optimiser and biases the estimates towards those shifts. Every voxel inside
  the mask is sampled (they are few).
- Chunking: the volumes registered per engine call follow from a memory budget (CPU cost
  grows with the sample points, so chunks cost no speed there; on CUDA as few calls as fit).
- Failures stay local: a chunk that fails is split until the failing volume is alone; that
  volume is marked failed and takes its nearest good neighbour's matrix. Volumes whose final
  metric is far worse than the others' (robust z-score > 3.5) are registered again from their
  neighbours' transforms and keep whichever result is better.
- DWI (``bvals`` given): b=0 volumes carry no eddy-current distortion and are registered
  rigidly with normalised cross-correlation; diffusion-weighted ones (another contrast) with
  ``dof`` (12 by default for DWI) and mutual information.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch

from ..errors import DeviceMemoryError, InputError, RegistrationError
from . import metrics as M
from . import motion as motion_maths
from .register import register_batch, resolve_device
from .series_levels import SeriesLevels, level_spacing, reference_level
from .series_reference import (
    first_reference,
    head_mask,
    reference_image,
    reference_mask,
    robust_reference,
    series_array,
    volume_image,
    volume_kinds,
)

LOGGER = logging.getLogger(__name__)

#: Level spacings, as multiples of the reference's (smallest) voxel size, coarse to fine.
DEFAULT_LEVELS = (4.0, 2.0, 1.0)
#: Gaussian blur (standard deviation) of every level, as a fraction of its spacing.
DEFAULT_SMOOTHING = 1.0
#: Sample points per volume and level: a random subset of the mask's voxels beyond this.
DEFAULT_SAMPLES = 20_000
#: Largest b-value treated as b=0 (s/mm^2).
B0_THRESHOLD = 50.0
#: Robust z-score of a volume's final metric above which it is retried and flagged.
OUTLIER_Z = 3.5
#: Outliers are only looked for among at least this many volumes of one kind.
OUTLIER_MIN_VOLUMES = 8
#: Default memory budget (MiB) for one engine call on the CPU; on CUDA half the free memory.
CPU_BUDGET_MB = 1024.0
#: Bytes per sample point and volume in one engine call (points, values, gradients, subsets).
_BYTES_PER_POINT = 320
#: Bytes per voxel and volume (the volume, the stacked reference and masks, level copies).
_BYTES_PER_VOXEL = 28


@dataclass(frozen=True)
class SeriesResult:
    """The outcome of a series realignment.

    Attributes
    ----------
    matrices : (T, 4, 4) array
        Reference-world to volume-world matrices (resample volume ``t`` into the reference).
    reference : nibabel.Nifti1Image
        The reference image of the last pass (3D, float32, on the reference grid).
    reference_mask : nibabel.Nifti1Image
        Where the metric was evaluated (uint8, reference grid).
    reference_source : str
        How the reference was made (``"robust median of 60 volumes realigned to volume 3"``,
        ``"volume 0"``, ``"image"``).
    reference_volume : int or None
        The volume whose frame the reference has (None for a given image).
    dof : int
    metrics : tuple of str
        Metric per volume.
    final_metric : (T,) array
        Loss at the finest level per volume (lower is better; NaN for failed volumes).
    iterations : (T,) array
        Optimiser iterations per volume, all levels and passes.
    failed : dict
        ``{volume: reason}`` for volumes that could not be registered (their matrix is the
        nearest good volume's).
    outliers : tuple of int
        Volumes whose final metric stayed far worse than the others' (flagged, kept).
    bvals : (T,) array or None
    elapsed_s : float
    device : str
    passes : int
    volumes_per_call : int
    links : dict
        DWI: how each shell is tied to the b=0 frame (``"continuity"``, ``"mi"``).
    pe_direction : (3,) array or None
        The phase-encoding direction used for rigid parts (given or estimated).
    """

    matrices: np.ndarray
    reference: nib.Nifti1Image
    reference_mask: nib.Nifti1Image
    reference_source: str
    reference_volume: int | None
    dof: int
    metrics: tuple
    final_metric: np.ndarray
    iterations: np.ndarray
    failed: dict = field(default_factory=dict)
    outliers: tuple = ()
    bvals: np.ndarray | None = None
    elapsed_s: float = 0.0
    device: str = "cpu"
    passes: int = 1
    volumes_per_call: int = 1
    links: dict = field(default_factory=dict)
    pe_direction: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.matrices)

    def parameters(self, *, pe_direction="result") -> np.ndarray:
        """``(T, 6)`` motion parameters (MCFLIRT/fMRIPrep convention, see
        :mod:`niaffine.engine.motion`): translations (mm) and rotations (rad) about the
        reference's centre. For 12-dof matrices, of their rigid part."""
        matrices = self.rigid_matrices(pe_direction=pe_direction)
        return motion_maths.motion_parameters(matrices, self.reference.affine,
                                              self.reference.shape)

    def rigid_matrices(self, *, pe_direction="result") -> np.ndarray:
        """``(T, 4, 4)`` rigid parts of the matrices, agreeing with them at the reference's
        centre (see :func:`niaffine.engine.motion.rigid_part`); read across
        ``pe_direction`` (by default the result's own, else polar parts)."""
        if isinstance(pe_direction, str):
            pe_direction = self.pe_direction
        centre = self.reference.affine @ np.r_[(np.array(self.reference.shape[:3]) - 1) / 2, 1]
        return np.stack([motion_maths.rigid_part(m, pe_direction=pe_direction,
                                                 centre_world=centre[:3])
                         for m in self.matrices])

    def framewise_displacement(self, *, pe_direction="result") -> np.ndarray:
        """Power's framewise displacement (mm, NaN for the first volume)."""
        return motion_maths.framewise_displacement(self.parameters(pe_direction=pe_direction))

    def rms_displacement(self, *, relative: bool = True, pe_direction="result") -> np.ndarray:
        """Jenkinson's RMS displacement (mm): from the previous volume or the reference."""
        return motion_maths.rms_displacement(self.rigid_matrices(pe_direction=pe_direction),
                                             self.reference.affine, self.reference.shape,
                                             relative=relative)

    def to_dict(self) -> dict:
        """JSON-safe summary (matrices, reference, per-volume metric and flags, timing)."""
        fd = self.framewise_displacement()
        return {
            "volumes": len(self),
            "matrices": self.matrices.tolist(),
            "reference_source": self.reference_source,
            "reference_volume": self.reference_volume,
            "dof": self.dof,
            "metrics": list(self.metrics),
            "final_metric": [None if not np.isfinite(v) else float(v) for v in self.final_metric],
            "iterations": self.iterations.astype(int).tolist(),
            "failed": {str(k): v for k, v in self.failed.items()},
            "outliers": list(self.outliers),
            "mean_fd_mm": float(np.nanmean(fd)) if len(self) > 1 else 0.0,
            "max_fd_mm": float(np.nanmax(fd)) if len(self) > 1 else 0.0,
            "elapsed_s": self.elapsed_s,
            "device": self.device,
            "passes": self.passes,
            "volumes_per_call": self.volumes_per_call,
            "links": dict(self.links),
        }

    def summary(self) -> str:
        """One line: volumes, dof, reference, motion, failures, time."""
        fd = self.framewise_displacement()
        motion = (f"mean FD {np.nanmean(fd):.3f} mm (max {np.nanmax(fd):.3f})" if len(self) > 1
                  else "one volume")
        flags = ""
        if self.failed:
            flags += f" | {len(self.failed)} failed volume(s): {sorted(self.failed)}"
        if self.outliers:
            flags += f" | outlier volume(s): {list(self.outliers)}"
        return (f"{len(self)} volumes, dof {self.dof}, reference {self.reference_source} | "
                f"{motion}{flags} | {self.elapsed_s:.1f} s on {self.device}")


def register_series(
    series,
    *,
    reference=None,
    mask=None,
    dof: int | None = None,
    metric: str = "auto",
    bvals=None,
    bvecs=None,
    pe_direction="auto",
    link: str = "auto",
    eddy_model: bool = True,
    b0_threshold: float = B0_THRESHOLD,
    levels: Sequence[float] = DEFAULT_LEVELS,
    smoothing: float = DEFAULT_SMOOTHING,
    passes: int = 2,
    max_samples: int | None = DEFAULT_SAMPLES,
    max_iterations: int = 100,
    tolerance: float = 1e-9,
    tolerance_mm: float = 1e-3,
    volumes_per_call: int | None = None,
    memory_mb: float | None = None,
    device: str | torch.device = "auto",
    retry_outliers: bool = True,
    seed: int = 0,
    callback: Callable | None = None,
) -> SeriesResult:
    """Register every volume of a 4D series to one reference.

    Parameters
    ----------
    series : nibabel image
        4D series (BOLD or DWI); volumes along the fourth axis.
    reference : None, int or nibabel image
        None: a robust reference built from the series (two passes, see the module
        docstring); an int: that volume (one pass); an image: that 3D image on any grid
        (one pass).
    mask : nibabel image, optional
        Binary mask on the reference's grid where the metric is evaluated; default: the
        head in the reference (see :func:`~niaffine.engine.series_reference.head_mask`).
    dof : int, optional
        Degrees of freedom: 6 (rigid; the default for BOLD) or 12 (the default for the
        diffusion-weighted volumes of a DWI); 3, 7 and 9 also work.
    metric : str
        ``auto`` (normalised cross-correlation for BOLD and b=0 volumes, mutual information
        for diffusion-weighted ones), or one metric of
        :func:`~niaffine.engine.register_batch` for every volume.
    bvals : (T,) array, optional
        b-values: the series is a DWI (b=0 reference, contrast-aware metric).
    bvecs : (3, T) array, optional
        FSL b-vectors of a DWI (the series' voxel frame): enable the eddy-shift model of the
        b=0 continuity link.
    pe_direction : (3,) array or "auto", optional
        World direction of the series' phase-encoding axis: rigid parts are read across it
        (see :func:`niaffine.engine.motion.rigid_part`). ``auto`` (DWI): the voxel axis along
        which the 12-dof transforms distort (see
        :func:`niaffine.engine.series_dwi.phase_encoding_from_matrices`), recorded in
        ``SeriesResult.pe_direction``.
    link : {"auto", "continuity", "mi"}
        How diffusion-weighted shells are tied to the b=0 frame: ``mi`` keeps what mutual
        information between contrasts gives; ``continuity`` corrects it from the interspersed
        b=0 volumes (see :mod:`niaffine.engine.series_dwi`); ``auto`` does so wherever at least
        three b=0 / diffusion-weighted neighbour pairs exist.
    eddy_model : bool
        DWI at 12 dof with a phase-encoding direction: project each diffusion-weighted
        volume's matrix onto the eddy-current model (distortion along the phase-encoding axis
        only, linear in the gradient where it fits; see
        :func:`niaffine.engine.series_dwi.eddy_projection`).
    b0_threshold : float
        Largest b-value counted as b=0.
    levels : sequence of float
        Pyramid spacings as multiples of the reference's smallest voxel size, coarse to fine.
    smoothing : float
        Gaussian blur (standard deviation) of every level as a fraction of its spacing.
    passes : int
        With a robust reference: 1 stops after the first pass (a one-volume reference), 2 adds
        the pass against the robust reference.
    max_samples : int or None
        Sample points per volume and level (None: every voxel in the mask). A 3 mm brain
        has about 60 000 voxels; 20 000 random ones (seeded) estimate the motion as well.
    max_iterations : int
        Iteration cap per level.
    tolerance, tolerance_mm : float
        A level stops when the metric changes by less than ``tolerance`` (relative) or no
        parameter moves by more than ``tolerance_mm`` in an iteration. Smoothed levels
        change the metric little per millimetre, hence a tighter relative tolerance than
        :func:`~niaffine.engine.register_batch`'s.
    volumes_per_call : int, optional
        Volumes per engine call; by default as many as ``memory_mb`` holds.
    memory_mb : float, optional
        Memory budget of one engine call (default 1024 MiB on the CPU, half the free
        memory on CUDA).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    retry_outliers : bool
        Register volumes with an outlying final metric again from their neighbours' transforms.
    seed : int
        Seeds the sampling of points when ``max_samples`` is set.
    callback : callable, optional
        ``callback(stage, done, total)`` after every chunk of volumes (``stage`` names the
        pass, ``done`` counts the volumes finished in it).

    Returns
    -------
    SeriesResult

    Raises
    ------
    InputError
        Not a 4D series, NaN or infinite values (the message lists the volumes), b-values
        that do not match the volumes, no b=0 volume, a reference index out of range, a mask
        on another grid.
    RegistrationError
        No volume could be registered.
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    data, affine, name = series_array(series)
    n_volumes = data.shape[0]
    kinds = volume_kinds(n_volumes, bvals, b0_threshold, name)
    is_dwi = bvals is not None
    dof = int(dof if dof is not None else (12 if is_dwi else 6))
    metrics = _metrics(kinds, metric)
    dofs = [dof if kind == "dw" or not is_dwi else 6 for kind in kinds]
    constant = {t: "the volume is constant (no signal)" for t in range(n_volumes)
                if not np.ptp(data[t]) > 0}
    usable = [t for t in range(n_volumes) if t not in constant]
    if not usable:
        raise InputError(f"{name}: every volume is constant (all zero?)")
    vols = SeriesLevels(data, affine, name, dev)
    settings = _Settings(levels=tuple(float(v) for v in levels), smoothing=float(smoothing),
                         max_samples=max_samples, max_iterations=int(max_iterations),
                         tolerance=float(tolerance), tolerance_mm=float(tolerance_mm),
                         device=dev, seed=int(seed), callback=callback)

    robust = reference is None
    if robust:
        anchor = first_reference(data, kinds, usable)
        ref_img, source = volume_image(data[anchor], affine), f"volume {anchor}"
    elif isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        anchor = int(reference)
        if not 0 <= anchor < n_volumes:
            raise InputError(f"{name}: reference volume {anchor} is outside 0..{n_volumes - 1}")
        if anchor in constant:
            raise InputError(f"{name}: reference volume {anchor} is constant")
        ref_img, source = volume_image(data[anchor], affine), f"volume {anchor}"
    else:
        anchor, ref_img, source = None, reference_image(reference), "image"
    mask_img = reference_mask(mask, ref_img) if mask is not None else head_mask(ref_img)
    chunk = int(volumes_per_call or volumes_per_call_for(
        mask_img, data.shape[1:], _budget_mb(memory_mb, dev), settings.max_samples))

    state = _State(n_volumes)
    todo = [t for t in usable if robust or t != anchor]
    target = _Target(ref_img, mask_img, dev)
    _realign(state, vols, todo, target, dofs, metrics, settings, chunk, "pass 1")
    n_passes = 1
    if robust and passes >= 2 and len(usable) > 1:
        anchor_grid = ref_img
        for label, members in _pass2_groups(kinds, bvals, [t for t in usable
                                                           if t not in state.failed]):
            group_ref = robust_reference(data, state.matrices, affine, members, anchor_grid)
            group_mask = (reference_mask(mask, group_ref) if mask is not None
                          else head_mask(group_ref))
            group_target = _Target(group_ref, group_mask, dev)
            # pass 1 left every volume within a fraction of a voxel: the finest level suffices
            _realign(state, vols, members, group_target, dofs, metrics, settings, chunk,
                     f"pass 2 ({label})" if is_dwi else "pass 2", levels=settings.levels[-1:])
            if label in ("all", "b=0"):
                ref_img, mask_img, target = group_ref, group_mask, group_target
                source = (f"{'median' if len(members) >= 5 else 'mean'} of {len(members)} "
                          f"{'b=0 ' if is_dwi else ''}volumes realigned to volume {anchor}")
        n_passes = 2
    groups = ([[t for t in usable if kinds[t] == k] for k in ("b0", "dw")] if is_dwi
              else [usable])
    if retry_outliers:
        _retry_outliers(state, groups, vols, target, dofs, metrics, settings, chunk)
    links = {}
    if isinstance(pe_direction, str):
        if pe_direction != "auto":
            raise InputError(f"pe_direction={pe_direction!r}: give a world direction or 'auto'")
        pe_direction = None
        if is_dwi and dof > 6 and any(kind == "dw" for kind in kinds):
            from .series_dwi import phase_encoding_from_matrices

            pe_direction = phase_encoding_from_matrices(
                state.matrices, np.array([kind == "dw" for kind in kinds]), affine)
    gradients = _gradients(bvecs, affine) if is_dwi else None
    weighted = [t for t in usable if kinds[t] == "dw" and t not in state.failed]
    if pe_direction is not None and dof == 12 and weighted and eddy_model:
        from .series_dwi import eddy_projection

        r2 = eddy_projection(state.matrices, weighted, pe_direction, _centre(ref_img), gradients)
        LOGGER.info("eddy-current model along %s: linear fit R^2 %s", np.round(pe_direction, 3),
                    "n/a" if r2 is None else f"{r2:.3f}")
    if is_dwi and link != "mi":
        links = _link_shells(state, kinds, bvals, gradients, pe_direction, usable, ref_img,
                             link)
    failed = {**state.failed, **constant}
    if len(failed) == n_volumes:
        raise RegistrationError(f"{name}: no volume could be registered "
                                f"({next(iter(failed.values()))})")
    for t, reason in sorted(failed.items()):
        LOGGER.warning("%s volume %d: %s; it takes its neighbour's transform", name, t, reason)
    return SeriesResult(
        matrices=_fill_failed(state.matrices, failed), reference=ref_img,
        reference_mask=mask_img, reference_source=source, reference_volume=anchor, dof=dof,
        metrics=tuple(metrics), final_metric=state.losses, iterations=state.iterations,
        failed=failed, outliers=tuple(sorted(state.outliers)),
        bvals=None if bvals is None else np.asarray(bvals, dtype=float).ravel(),
        elapsed_s=time.perf_counter() - start, device=str(dev), passes=n_passes,
        volumes_per_call=chunk, links=links,
        pe_direction=None if pe_direction is None else np.asarray(pe_direction, dtype=float),
    )


def _centre(img) -> np.ndarray:
    """World centre of an image's field of view."""
    return (img.affine @ np.r_[(np.array(img.shape[:3]) - 1) / 2, 1])[:3]


def _gradients(bvecs, affine):
    """World unit gradient directions ``(T, 3)`` of FSL b-vectors (None without them)."""
    from .motion import _bvec_frame

    if bvecs is None:
        return None
    vectors = np.asarray(bvecs, dtype=float)
    if vectors.ndim != 2 or vectors.shape[0] != 3:
        raise InputError(f"bvecs must be (3, T), got {vectors.shape}")
    norms = np.maximum(np.linalg.norm(vectors, axis=0), 1e-12)
    return (_bvec_frame(affine) @ (vectors / norms)).T


def _link_shells(state, kinds, bvals, gradients, pe_direction, usable, ref_img, link):
    """Apply the b=0 continuity link to each shell (or all shells together); ``{shell: how}``."""
    from .series_dwi import continuity_link

    if link not in ("auto", "continuity"):
        raise InputError(f"link={link!r} is not one of auto, continuity, mi")
    dw = np.array([kind == "dw" for kind in kinds])
    centre = _centre(ref_img)
    good = [t for t in usable if t not in state.failed]
    shells = [(label, m) for label, m in _pass2_groups(kinds, bvals, good) if label != "b=0"]
    options = {"gradients": gradients, "pe_direction": pe_direction, "centre": centre}
    common = continuity_link(state.matrices, dw, [t for _, m in shells for t in m], **options)
    links = {}
    for label, members in shells:
        correction, how = continuity_link(state.matrices, dw, members, **options), "continuity"
        if correction is None and common is not None:
            correction, how = common, "continuity (all shells)"
        if correction is None:
            links[label] = "mi"
            if link == "continuity":
                LOGGER.warning("%s: too few b=0 neighbours for a continuity link", label)
            continue
        state.matrices[members] = state.matrices[members] @ correction
        links[label] = how
    return links


@dataclass(frozen=True)
class _Settings:
    levels: tuple
    smoothing: float
    max_samples: int | None
    max_iterations: int
    tolerance: float
    tolerance_mm: float
    device: torch.device
    seed: int
    callback: Callable | None


class _State:
    """Per-volume matrices, final losses, iteration counts, failures and outliers."""

    def __init__(self, n_volumes: int):
        self.matrices = np.tile(np.eye(4), (n_volumes, 1, 1))
        self.losses = np.full(n_volumes, np.nan)
        self.iterations = np.zeros(n_volumes, dtype=int)
        self.failed: dict[int, str] = {}
        self.outliers: set[int] = set()


def _pass2_groups(kinds, bvals, usable) -> list[tuple[str, list[int]]]:
    """The volumes of each second-pass reference: all of them (BOLD); the b=0 volumes, then
    each shell (b-values within 100 s/mm^2 of one another) of a DWI.

    >>> _pass2_groups(["b0", "dw", "dw", "b0", "dw"], [0, 1000, 2000, 0, 990], [0, 1, 2, 3, 4])
    [('b=0', [0, 3]), ('b=1000', [1, 4]), ('b=2000', [2])]
    """
    if bvals is None:
        return [("all", list(usable))]
    values = np.asarray(bvals, dtype=float).ravel()
    groups = [("b=0", [t for t in usable if kinds[t] == "b0"])]
    shells: dict[int, list[int]] = {}
    for t in usable:
        if kinds[t] == "dw":
            shells.setdefault(int(round(values[t] / 100.0)) * 100, []).append(t)
    groups += [(f"b={b}", members) for b, members in sorted(shells.items())]
    return [(label, members) for label, members in groups if members]


def _metrics(kinds: list[str], metric: str) -> list[str]:
    name = str(metric).lower()
    if name == "auto":
        return ["mi" if kind == "dw" else "ncc" for kind in kinds]
    if name not in SERIES_METRICS:
        raise InputError(f"metric={metric!r} is not one of auto, {', '.join(SERIES_METRICS)}")
    return [name] * len(kinds)


def _scaled(function, scale: float, offset: float, name: str):
    """``scale * (function + offset)``: a loss whose gradients are of order one per mm.

    The engine's optimiser takes a first steepest-descent step as long as the gradient (in
    loss per mm), capped at 1: with raw correlations (losses near -1, gradients ~1e-3 per mm
    near the answer) the first step moves a thousandth of a millimetre and passes for
    convergence.
    """

    def loss(fixed, moving, weight):
        return scale * (function(fixed, moving, weight) + offset)

    loss.__name__ = name
    return loss


#: The metrics of a series realignment, scaled so that the optimiser's first step is useful.
SERIES_METRICS = {
    "ncc": _scaled(M.ncc, 1000.0, 1.0, "ncc"),
    "mse": _scaled(M.mse, 1000.0, 0.0, "mse"),
    "mi": _scaled(lambda f, m, w: M.mutual_information(f, m, w, bins=32), 100.0, 0.0, "mi"),
    "nmi": _scaled(lambda f, m, w: M.mutual_information(f, m, w, bins=32, normalised=True),
                   100.0, 0.0, "nmi"),
    "cr": _scaled(lambda f, m, w: M.correlation_ratio(f, m, w, bins=32), 100.0, 1.0, "cr"),
}


def _budget_mb(memory_mb, device: torch.device) -> float:
    if memory_mb is not None:
        return float(memory_mb)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free / 2**20
    return CPU_BUDGET_MB


def volumes_per_call_for(mask_img, shape, budget_mb: float, max_samples=None) -> int:
    """How many volumes one engine call may hold within ``budget_mb`` (at least one).

    >>> import nibabel as nib
    >>> m = nib.Nifti1Image(np.ones((40, 40, 30), np.uint8), np.eye(4))
    >>> volumes_per_call_for(m, (40, 40, 30), 1024.0)
    64
    """
    points = int(np.count_nonzero(np.asanyarray(mask_img.dataobj)))
    if max_samples is not None:
        points = min(points, int(max_samples))
    per_volume = points * _BYTES_PER_POINT + int(np.prod(shape)) * _BYTES_PER_VOXEL
    return max(1, int(budget_mb * 2**20 // max(per_volume, 1)))


def _realign(state: _State, vols, todo, target, dofs, metrics, settings, chunk,
             stage, levels=None) -> None:
    """Register the volumes ``todo`` to the reference, from ``state.matrices``, in place."""
    groups: dict = {}
    for t in todo:
        groups.setdefault((dofs[t], metrics[t]), []).append(t)
    done = 0
    for (dof, metric), members in groups.items():
        for lo in range(0, len(members), chunk):
            items = members[lo:lo + chunk]
            found = _register_chunk(items, state.matrices, vols, target, dof, metric,
                                    settings, levels)
            for t, outcome in found.items():
                if isinstance(outcome, Exception):
                    state.failed[t] = str(outcome).splitlines()[0]
                    continue
                state.failed.pop(t, None)
                state.matrices[t], state.losses[t], its = outcome
                state.iterations[t] += its
            done += len(items)
            LOGGER.info("%s: %d/%d volumes", stage, done, len(todo))
            if settings.callback is not None:
                settings.callback(stage, done, len(todo))


def _register_chunk(items, matrices, vols: SeriesLevels, target: _Target, dof, metric,
                    settings, levels=None) -> dict:
    """``{volume: (matrix, final loss, iterations) or Exception}``; a failing chunk is split.

    ``levels`` (default: every level of ``settings``) are multiples of the reference's voxel.
    """
    current = {t: matrices[t] for t in items}
    iterations = dict.fromkeys(items, 0)
    try:
        for factor in levels or settings.levels:
            spacing = factor * target.voxel
            sigma = settings.smoothing * spacing
            fixed, fixed_mask = target.level(spacing, sigma)
            results = register_batch(
                [fixed] * len(items), vols.volumes(items, spacing, sigma),
                fixed_masks=[fixed_mask] * len(items),
                initial_matrices=[current[t] for t in items], dof=dof,
                metric=SERIES_METRICS[metric],
                init="identity", levels_mm=(level_spacing(fixed),), smoothing_mm=0.0,
                edge_mm=0.0, max_samples=settings.max_samples,
                max_iterations=settings.max_iterations, tolerance=settings.tolerance,
                tolerance_mm=settings.tolerance_mm, device=settings.device, seed=settings.seed)
            for t, res in zip(items, results):
                current[t] = res.matrix
                iterations[t] += sum(res.iterations)
    except (InputError, RegistrationError) as err:
        if len(items) == 1:
            return {items[0]: err}
        if isinstance(err, DeviceMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        LOGGER.warning("%d volumes failed together (%s); splitting", len(items),
                       str(err).splitlines()[0])
        half = len(items) // 2
        found = _register_chunk(items[:half], matrices, vols, target, dof, metric, settings,
                                levels)
        found.update(_register_chunk(items[half:], matrices, vols, target, dof, metric,
                                     settings, levels))
        return found
    return {t: (current[t], r.final_metric, iterations[t]) for t, r in zip(items, results)}


class _Target:
    """The reference and its mask, with their levels made on first use."""

    def __init__(self, image, mask, device):
        self.image, self.mask, self.device = image, mask, device
        self.voxel = float(np.min(nib.affines.voxel_sizes(image.affine)))
        self._levels: dict = {}

    def level(self, spacing_mm: float, sigma_mm: float):
        key = (round(spacing_mm, 6), round(sigma_mm, 6))
        if key not in self._levels:
            self._levels[key] = reference_level(self.image, self.mask, spacing_mm, sigma_mm,
                                                self.device)
        return self._levels[key]


def outlying(values: np.ndarray) -> np.ndarray:
    """Which final losses are far worse than the others: a robust z-score (median, 1.4826 MAD)
    above :data:`OUTLIER_Z` and a loss worse than the median by half the median's size. Never
    with fewer than :data:`OUTLIER_MIN_VOLUMES` finite values.

    >>> outlying(np.array([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02, 5.0])).tolist()
    [False, False, False, False, False, False, False, False, True]
    """
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=bool)
    if finite.sum() < OUTLIER_MIN_VOLUMES:
        return out
    median = np.median(values[finite])
    mad = 1.4826 * np.median(np.abs(values[finite] - median))
    excess = values[finite] - median
    out[finite] = (excess > OUTLIER_Z * max(mad, 1e-12)) & (excess > 0.5 * abs(median))
    return out


def _retry_outliers(state: _State, groups, vols, target, dofs, metrics, settings,
                    chunk) -> None:
    """Register outlier volumes again from their neighbours' transforms; keep the best."""
    for group in groups:
        group = [t for t in group if t not in state.failed]
        suspects = [t for t, bad in zip(group, outlying(state.losses[group])) if bad]
        if not suspects:
            continue
        LOGGER.info("retrying outlier volumes %s from their neighbours' transforms", suspects)
        good = [t for t in group if t not in suspects]
        for side in (-1, 1):
            trial = state.matrices.copy()
            for t in suspects:
                neighbours = [g for g in good if (g - t) * side > 0]
                if neighbours:
                    trial[t] = state.matrices[min(neighbours, key=lambda g: abs(g - t))]
            found = _register_chunk(suspects, trial, vols, target, dofs[suspects[0]],
                                    metrics[suspects[0]], settings)
            for t, outcome in found.items():
                if not isinstance(outcome, Exception) and outcome[1] < state.losses[t]:
                    state.matrices[t], state.losses[t] = outcome[0], outcome[1]
                    state.iterations[t] += outcome[2]
        state.outliers.update(t for t, bad in zip(group, outlying(state.losses[group])) if bad)


def _fill_failed(matrices: np.ndarray, failed: dict) -> np.ndarray:
    """Failed volumes take the matrix of the nearest good volume (earlier one on ties)."""
    out = matrices.copy()
    good = [t for t in range(len(matrices)) if t not in failed]
    for t in failed:
        out[t] = matrices[min(good, key=lambda g: (abs(g - t), g))]
    return out

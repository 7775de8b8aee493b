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
  the first pass. A given volume index or image is used as is (one pass). The first of two
  passes samples half as many points per volume as the second: it only has to bring the
  volumes within a fraction of a voxel of one another for the median, and the second pass
  refines every volume at the full count (on four simulated BOLD runs 11 % faster, mean
  error 0.014-0.032 mm against 0.017-0.035; four DWIs 10 % faster, 0.063-0.103 against
  0.061-0.104 mm).
- Levels suit small EPI volumes: spacings are multiples of the reference's voxel size
  (4, 2, 1 by default, finer than the voxels collapses onto them) and every level is smoothed
  by a Gaussian as wide as its spacing. Without that smoothing, linear interpolation between
  two images on the same grid has a cusp at every whole-voxel shift (zero motion included),
  which stalls the optimiser and biases the estimates towards those shifts. Levels coarser than
  the finest stop early, as a registration's coarse levels do (``coarse_tolerance``).
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
from dataclasses import replace

import numpy as np
import torch

from .. import choices
from ..errors import InputError, RegistrationError
from .initialise import geometric_centre
from .register import COARSE_TOLERANCE, resolve_device
from .series_levels import SeriesLevels
from .series_passes import (
    SERIES_METRICS,
    Settings,
    State,
    Target,
    budget_mb,
    fill_failed,
    realign,
    retry_outlier_volumes,
    volumes_per_call_for,
)
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
from .series_result import SeriesResult

LOGGER = logging.getLogger(__name__)

#: Level spacings, as multiples of the reference's (smallest) voxel size, coarse to fine.
DEFAULT_LEVELS = (4.0, 2.0, 1.0)
#: Gaussian blur (standard deviation) of every level, as a fraction of its spacing.
DEFAULT_SMOOTHING = 1.0
#: Sample points per volume and level: a random subset of the mask's voxels beyond this.
DEFAULT_SAMPLES = choices.SERIES_SAMPLES
#: Largest b-value treated as b=0 (s/mm^2).
B0_THRESHOLD = 50.0
#: How diffusion-weighted shells are tied to the b=0 frame (``link``).
LINKS = ("auto", "continuity", "reference", "mi")
#: With two passes, the first samples ``max_samples // FIRST_PASS_DIVISOR`` points per volume.
FIRST_PASS_DIVISOR = 2


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
    tolerance_mm: float = 5e-3,
    coarse_tolerance: float = COARSE_TOLERANCE,
    volumes_per_call: int | None = None,
    memory_mb: float | None = None,
    device: str | torch.device = "auto",
    retry_outliers: bool = True,
    coarse_first: bool = True,
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
    link : {"auto", "continuity", "reference", "mi"}
        How diffusion-weighted shells are tied to the b=0 frame: ``mi`` keeps what mutual
        information between contrasts gives; ``continuity`` corrects it from the interspersed
        b=0 volumes; ``reference`` by registering the shell's reference to the b=0 reference
        without the brain's edge (see :mod:`niaffine.engine.series_dwi`); ``auto`` uses the
        continuity link wherever at least three b=0 / diffusion-weighted neighbour pairs
        agree, else the reference link.
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
        has about 60 000 voxels; 15 000 random ones (seeded) estimate the motion about as well
        (:data:`niaffine.choices.SERIES_SAMPLES` says where fewer fell short).
        The first of two passes uses half as many (see the module docstring).
    max_iterations : int
        Iteration cap per level.
    tolerance, tolerance_mm : float
        A level stops when the metric changes by less than ``tolerance`` (relative) or no
        parameter moves by more than ``tolerance_mm`` in an iteration. Smoothed levels
        change the metric little per millimetre, hence a tighter relative tolerance than
        :func:`~niaffine.engine.register_batch`'s. These apply at the finest level.
    coarse_tolerance : float
        Relative tolerance of the coarser levels, which also stop when no parameter moves by
        more than 1/500 of their spacing (as :func:`~niaffine.engine.register_batch`'s coarse
        levels do): they only hand the next level a start.
    volumes_per_call : int, optional
        Volumes per engine call; by default as many as ``memory_mb`` holds.
    memory_mb : float, optional
        Memory budget of one engine call (default 1024 MiB on the CPU, half the free
        memory on CUDA).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    retry_outliers : bool
        Register volumes with an outlying final metric again from their neighbours' transforms.
    coarse_first : bool
        BOLD with two passes: stop the first a level short of the finest (the second pass
        starts there anyway, from transforms good enough for the robust reference). Not for
        DWI, whose shell references need the first pass's finest level.
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
    settings = Settings(levels=tuple(float(v) for v in levels), smoothing=float(smoothing),
                         max_samples=max_samples, max_iterations=int(max_iterations),
                         tolerance=float(tolerance), tolerance_mm=float(tolerance_mm),
                         coarse_tolerance=float(coarse_tolerance), device=dev, seed=int(seed),
                         callback=callback)

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
        mask_img, data.shape[1:], budget_mb(memory_mb, dev), settings.max_samples))

    state = State(n_volumes)
    todo = [t for t in usable if robust or t != anchor]
    target = Target(ref_img, mask_img, dev)
    second_pass = robust and passes >= 2 and len(usable) > 1
    # before a second pass, the first stops a level short: the robust reference needs the
    # volumes within a fraction of a voxel, and the second pass starts at the finest level
    short = second_pass and coarse_first and not is_dwi and len(settings.levels) > 1
    # the first pass of two only has to bring the volumes within a fraction of a voxel for
    # the robust reference; the second refines at the full sample count
    first = (replace(settings, max_samples=max(1, settings.max_samples // FIRST_PASS_DIVISOR))
             if second_pass and settings.max_samples else settings)
    realign(state, vols, todo, target, dofs, metrics, first, chunk, "pass 1",
            levels=settings.levels[:-1] if short else None)
    n_passes = 1
    groups = [([t for t in usable if kinds[t] == kind], target) for kind in dict.fromkeys(kinds)]
    if second_pass:
        anchor_grid, groups = ref_img, []
        for label, members in _pass2_groups(kinds, bvals, [t for t in usable
                                                           if t not in state.failed]):
            group_ref = robust_reference(data, state.matrices, affine, members, anchor_grid)
            group_mask = (reference_mask(mask, group_ref) if mask is not None
                          else head_mask(group_ref))
            group_target = Target(group_ref, group_mask, dev)
            # pass 1 left every volume within a fraction of a voxel: the finest level suffices
            realign(state, vols, members, group_target, dofs, metrics, settings, chunk,
                    f"pass 2 ({label})" if is_dwi else "pass 2", levels=settings.levels[-1:])
            groups.append((members, group_target))
            if label in ("all", "b=0"):
                ref_img, mask_img = group_ref, group_mask
                source = (f"{'median' if len(members) >= 5 else 'mean'} of {len(members)} "
                          f"{'b=0 ' if is_dwi else ''}volumes realigned to volume {anchor}")
        n_passes = 2
    if retry_outliers:
        retry_outlier_volumes(state, groups, vols, dofs, metrics, settings)
    links = {}
    gradients = _gradients(bvecs, affine) if is_dwi else None
    dw_mask = np.array([kind == "dw" and t not in state.failed for t, kind in enumerate(kinds)])
    if isinstance(pe_direction, str):
        if pe_direction != "auto":
            raise InputError(f"pe_direction={pe_direction!r}: give a world direction or 'auto'")
        pe_direction = None
        if is_dwi and dof > 6 and dw_mask.any():
            pe_direction = _find_phase_encoding(state.matrices, dw_mask, gradients, affine,
                                                _centre(ref_img))
    weighted = list(np.flatnonzero(dw_mask))
    if dof == 12 and weighted and eddy_model and (pe_direction is not None
                                                  or gradients is not None):
        from .series_dwi import eddy_projection

        # per shell: eddy fields grow with the gradient's strength, hence with the b-value
        for label, members in _pass2_groups(kinds, bvals, weighted):
            r2 = eddy_projection(state.matrices, members, pe_direction, _centre(ref_img),
                                 gradients)
            LOGGER.info("%s: eddy-current model along %s, linear fit R^2 %s", label,
                        "no one axis" if pe_direction is None else np.round(pe_direction, 3),
                        "n/a" if r2 is None else f"{r2:.3f}")
    if is_dwi and link != "mi":
        links = _link_shells(state, kinds, bvals, gradients, pe_direction, usable, ref_img,
                             link, references=(data, affine, mask_img, dev, int(seed)))
    failed = {**state.failed, **constant}
    if len(failed) == n_volumes:
        raise RegistrationError(f"{name}: no volume could be registered "
                                f"({next(iter(failed.values()))})")
    for t, reason in sorted(failed.items()):
        LOGGER.warning("%s volume %d: %s; it takes its neighbour's transform", name, t, reason)
    return SeriesResult(
        matrices=fill_failed(state.matrices, failed), reference=ref_img,
        reference_mask=mask_img, reference_source=source, reference_volume=anchor, dof=dof,
        metrics=tuple(metrics), final_metric=state.losses, iterations=state.iterations,
        failed=failed, outliers=tuple(sorted(state.outliers)),
        bvals=None if bvals is None else np.asarray(bvals, dtype=float).ravel(),
        elapsed_s=time.perf_counter() - start, device=str(dev), passes=n_passes,
        volumes_per_call=chunk, links=links,
        pe_direction=None if pe_direction is None else np.asarray(pe_direction, dtype=float),
    )


def _find_phase_encoding(matrices, dw, gradients, affine, centre):
    """The phase-encoding axis from the 12-dof distortions, else from the eddy shifts."""
    from .series_dwi import phase_encoding_from_matrices, phase_encoding_from_shifts

    found = phase_encoding_from_matrices(matrices, dw, affine)
    if found is None and gradients is not None:
        found = phase_encoding_from_shifts(matrices, dw, gradients, affine, centre)
    LOGGER.info("phase-encoding axis: %s", "not found" if found is None else np.round(found, 3))
    return found


def _centre(img) -> np.ndarray:
    """World centre of an image's field of view."""
    return geometric_centre(img.shape[:3], img.affine)


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


def _link_shells(state, kinds, bvals, gradients, pe_direction, usable, ref_img, link,
                 references=None):
    """Tie each shell to the b=0 frame; ``{shell: how}`` (see :mod:`~niaffine.engine.series_dwi`).

    ``auto``: the b=0 continuity link of the shell, else of all shells together, else the
    reference link (``references`` = ``(data, affine, b=0 mask, device, seed)``); ``continuity``
    or ``reference``: that link only. A shell that gets none keeps what mutual information gave.
    """
    from .series_dwi import continuity_link, reference_link

    if link not in LINKS:
        raise InputError(f"link={link!r} is not one of {', '.join(LINKS)}")
    dw = np.array([kind == "dw" for kind in kinds])
    centre = _centre(ref_img)
    good = [t for t in usable if t not in state.failed]
    shells = [(label, m) for label, m in _pass2_groups(kinds, bvals, good) if label != "b=0"]
    options = {"gradients": gradients, "pe_direction": pe_direction, "centre": centre}
    common = (continuity_link(state.matrices, dw, [t for _, m in shells for t in m], **options)
              if link != "reference" else None)
    links = {}
    for label, members in shells:
        correction, how = None, "mi"
        if link != "reference":
            correction, how = continuity_link(state.matrices, dw, members, **options), "continuity"
            if correction is None and common is not None:
                correction, how = common, "continuity (all shells)"
        if correction is None and link != "continuity" and references is not None:
            data, affine, b0_mask, device, seed = references
            shell_ref = robust_reference(data, state.matrices, affine, members, ref_img)
            correction, how = reference_link(ref_img, b0_mask, shell_ref, device=device,
                                             seed=seed), "reference"
        if correction is None:
            links[label] = "mi"
            if link != "auto":
                LOGGER.warning("%s: no %s link could be made", label, link)
            continue
        state.matrices[members] = state.matrices[members] @ correction
        links[label] = how
    return links


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

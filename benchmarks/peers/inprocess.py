# SPDX-License-Identifier: Apache-2.0
"""Tools called from Python: niaffine, ANTsPy, torchreg and elastix (itk-elastix).

Every runner takes nibabel images in memory and returns ``(matrix, seconds, extra)``: the
fixed-to-moving RAS world matrix (see `benchmarks.peers.common`), the wall time of the tool's
registration call alone and a JSON-safe dict of details.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from niaffine.data.geometry import warp_to_grid

from .common import (
    ants_transform_to_world,
    common_grid,
    elastix_parameters_to_world,
    save_inputs,
    torchreg_theta_to_world,
)


def _robust_unit(data: np.ndarray) -> np.ndarray:
    top = np.percentile(data[data > 0], 99.5) if np.any(data > 0) else 1.0
    return np.clip(data / np.float32(top), 0.0, None).astype(np.float32)


def run_niaffine(fixed, moving, *, dof=12, device="cpu", seed=0, fixed_mask=None,
                 moving_mask=None, threads=2, options=None, **_):
    """niaffine ``register(..., metric="auto")``; ``options`` go to `register` as they are.

    niaffine is imported before torch, as a user's program does: its threading policy
    (``niaffine.threads``) takes effect only if it is set before torch loads.
    """
    from niaffine.engine import register  # noqa: I001 - first, see above

    import torch

    torch.set_num_threads(int(threads))
    kwargs = {"dof": dof, "metric": "auto", "device": device, "seed": seed, **(options or {})}
    start = time.perf_counter()
    result = register(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, **kwargs)
    seconds = time.perf_counter() - start
    extra = {"summary": result.summary(), "device": str(result.device), "options": options or {}}
    return np.asarray(result.matrix, dtype=float), seconds, extra


def run_ants(fixed, moving, *, dof=12, seed=0, fixed_mask=None, moving_mask=None,
             workdir=None, **_):
    """ANTsPy ``registration(type_of_transform="Affine", aff_metric="mattes")``.

    Images go through uncompressed NIfTI files (ANTs reads the NIfTI orientation itself).
    ANTsPy's default initialisation (centres of mass) is kept. The affine metric is Mattes
    MI for both contrasts (ANTsPy's default, required for T2-like to T1).
    """
    import ants

    if dof != 12:
        raise ValueError("the ANTs runner implements dof=12 (type_of_transform='Affine') only")
    # seeds ANTs' random sampling without ants.config.set_ants_deterministic(), which would
    # also force a single thread
    ants.config._random_seed = int(seed)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = save_inputs(tmp, fixed, moving, fixed_mask, moving_mask)
        images = {name: ants.image_read(path) for name, path in paths.items()}
        metric = "mattes"
        start = time.perf_counter()
        out = ants.registration(
            images["fixed"], images["moving"], type_of_transform="Affine", aff_metric=metric,
            mask=images.get("fixed_mask"), moving_mask=images.get("moving_mask"),
            outprefix=os.path.join(tmp, "ants_"),
        )
        seconds = time.perf_counter() - start
        transforms = out["fwdtransforms"]
        if len(transforms) != 1:
            raise RuntimeError(f"ANTs returned {len(transforms)} transforms, expected 1")
        matrix = ants_transform_to_world(transforms[0])
    return matrix, seconds, {"aff_metric": metric}


def run_torchreg(fixed, moving, *, dof=12, device="cpu", seed=0, threads=2, **_):
    """torchreg ``AffineRegistration`` (its defaults; shears on for 12 dof) on a common grid.

    Both images are resampled (linear) onto a RAS grid covering both fields of view, with the
    finer of the two images' smallest voxel sizes (at least 1 mm), and scaled to their 99.5th
    percentile; torchreg has no masks. The resampling time is reported as ``prep_s``, not in
    ``seconds``.
    """
    import torch
    import torchreg

    if dof not in (9, 12):
        raise ValueError("the torchreg runner implements dof 9 and 12 only")
    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    prep = time.perf_counter()
    spacing = max(1.0, min(float(np.min(img.header.get_zooms()[:3])) for img in (fixed, moving)))
    grid, shape = common_grid([fixed, moving], spacing=spacing)
    tensors = []
    for img in (fixed, moving):
        data = np.asarray(warp_to_grid(img, np.eye(4), grid, shape, order=1).dataobj)
        tensors.append(torch.from_numpy(_robust_unit(data))[None, None].to(dev))
    prep_s = time.perf_counter() - prep
    reg = torchreg.AffineRegistration(is_3d=True, with_shear=dof == 12, verbose=False)
    start = time.perf_counter()
    reg(tensors[1], tensors[0], return_moved=False)
    theta = reg.get_affine()[0].cpu().numpy()
    seconds = time.perf_counter() - start
    matrix = torchreg_theta_to_world(theta, grid, shape)
    return matrix, seconds, {"prep_s": prep_s, "grid_shape": list(shape), "grid_mm": spacing}


def elastix_parameter_object():
    """itk-elastix's default ``affine`` parameter map, unchanged but for the result image.

    ``WriteResultImage`` is turned off: it only decides whether elastix resamples the moving
    image after registering (a B-spline resampling that is not part of the registration).
    """
    import itk

    params = itk.ParameterObject.New()
    default = params.GetDefaultParameterMap("affine")
    default["WriteResultImage"] = ["false"]
    params.AddParameterMap(default)
    return params


def _elastix_error(log: Path) -> str:
    """The error lines of an elastix log (what went wrong), or a note that there is none."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no elastix.log"
    start = next((i for i, line in enumerate(lines) if "ERROR" in line or "Description" in line),
                 max(0, len(lines) - 5))
    return " ".join(line.strip() for line in lines[start:start + 6] if line.strip())[:600]


def run_elastix(fixed, moving, *, dof=12, fixed_mask=None, moving_mask=None, workdir=None,
                threads=2, **_):
    """elastix (itk-elastix) with ``GetDefaultParameterMap("affine")``.

    Its defaults: ``AffineTransform`` from the identity, rotation centre at the fixed image's
    centre, Mattes MI (32 bins) on 2048 random samples per iteration, adaptive stochastic
    gradient descent with automatic step and scales, 4 resolutions, 256 iterations each.
    Masks, when given, go to elastix as its fixed and moving masks.
    """
    import itk

    if dof != 12:
        raise ValueError("the elastix runner implements dof=12 (AffineTransform) only")
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = save_inputs(tmp, fixed, moving, fixed_mask, moving_mask)
        images = {name: itk.imread(path, itk.UC if name.endswith("mask") else itk.F)
                  for name, path in paths.items()}
        masks = {key: images[key] for key in ("fixed_mask", "moving_mask") if key in images}
        params = elastix_parameter_object()
        start = time.perf_counter()
        try:
            _, result = itk.elastix_registration_method(
                images["fixed"], images["moving"], parameter_object=params,
                log_to_console=False, log_to_file=True, output_directory=tmp,
                number_of_threads=int(threads), **masks)
        except RuntimeError as err:  # the reason is in elastix's log, not in the exception
            raise RuntimeError(f"elastix failed: {_elastix_error(Path(tmp) / 'elastix.log')}"
                               ) from err
        seconds = time.perf_counter() - start
    if result.GetNumberOfParameterMaps() != 1:
        raise RuntimeError(f"elastix returned {result.GetNumberOfParameterMaps()} transforms")
    parameter_map = result.GetParameterMap(0)
    matrix = elastix_parameters_to_world(parameter_map)
    extra = {"centre_lps": [float(v) for v in parameter_map["CenterOfRotationPoint"]]}
    return matrix, seconds, extra

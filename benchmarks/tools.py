# SPDX-License-Identifier: Apache-2.0
"""The registration tools under comparison, each reduced to one call that returns a world matrix.

Every runner takes nibabel images already in memory and returns a fixed-to-moving world matrix
(RAS mm, ``x_moving = M @ x_fixed``, the convention of `niaffine.engine` and nitransforms) plus
the seconds spent in the tool's registration call and a few tool-specific details.

Conversions:

- ANTsPy writes its affine as an ITK ``GenericAffine`` file (LPS, with a centre); nitransforms
  reads it (``linear.load(path, fmt="itk")``) and returns the same fixed-to-moving map in RAS.
- torchreg optimises ``theta`` (3 x 4) in PyTorch's normalised grid coordinates of two tensors
  of equal shape (``align_corners=True``): output point ``p`` samples the moving tensor at
  ``theta @ p``. Both images are first resampled onto one RAS 1 mm grid ``G`` covering both
  fields of view, so the world matrix is ``G @ V @ theta @ inv(V) @ inv(G)``, with ``V`` the
  normalised-to-voxel map of that grid (`torchreg_theta_to_world`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable

import nibabel as nib
import numpy as np

from niaffine.data.geometry import warp_to_grid

LOGGER = logging.getLogger(__name__)

TOOLS = ("niaffine", "ants", "torchreg")


def limit_threads(threads: int) -> None:
    """Limit every tool to ``threads`` (environment first, then torch if present).

    The environment variables only bind libraries loaded afterwards: the benchmark sets them
    in the environment of each worker process before anything is imported.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a niaffine dependency
        return
    torch.set_num_threads(threads)


# --- coordinate conversions (pure numpy, tested on their own) --------------------------------

def normalised_to_voxel(shape) -> np.ndarray:
    """``V``: PyTorch normalised grid coordinates ``(x, y, z, 1)`` to voxels ``(i, j, k, 1)``.

    For a tensor ``[B, C, D, H, W]`` made from an array ``a[i, j, k]``, ``x`` runs along ``k``
    (W), ``y`` along ``j`` (H) and ``z`` along ``i`` (D); with ``align_corners=True`` -1 and +1
    are the centres of the first and last voxels.

    Examples
    --------
    >>> v = normalised_to_voxel((5, 7, 9))
    >>> (v @ [-1.0, -1.0, 1.0, 1.0]).tolist()
    [4.0, 0.0, 0.0, 1.0]
    """
    half = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    v = np.zeros((4, 4))
    for voxel_axis, grid_axis in ((0, 2), (1, 1), (2, 0)):
        v[voxel_axis, grid_axis] = half[voxel_axis]
        v[voxel_axis, 3] = half[voxel_axis]
    v[3, 3] = 1.0
    return v


def torchreg_theta_to_world(theta: np.ndarray, grid_affine: np.ndarray, shape) -> np.ndarray:
    """World fixed-to-moving matrix from a torchreg ``theta`` found on a common grid.

    Parameters
    ----------
    theta : (3, 4) array
        torchreg affine (normalised coordinates of the common grid, output to input).
    grid_affine : (4, 4) array
        Voxel-to-world affine of the common grid both tensors were sampled on.
    shape : (3,) sequence of int
        Shape of that grid.

    Returns
    -------
    matrix : (4, 4) array
    """
    t = np.eye(4)
    t[:3, :] = np.asarray(theta, dtype=float).reshape(3, 4)
    gv = np.asarray(grid_affine, dtype=float) @ normalised_to_voxel(shape)
    return gv @ t @ np.linalg.inv(gv)


def world_to_torchreg_theta(matrix: np.ndarray, grid_affine: np.ndarray, shape) -> np.ndarray:
    """Inverse of `torchreg_theta_to_world`: the ``theta`` (3, 4) of a world matrix."""
    gv = np.asarray(grid_affine, dtype=float) @ normalised_to_voxel(shape)
    return (np.linalg.inv(gv) @ np.asarray(matrix, dtype=float) @ gv)[:3, :]


def common_grid(images, spacing: float = 1.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A RAS grid at ``spacing`` mm whose field of view covers every image's field of view."""
    corners = []
    for img in images:
        s = np.asarray(img.shape[:3], dtype=float)
        box = np.array([[a, b, c] for a in (-0.5, s[0] - 0.5) for b in (-0.5, s[1] - 0.5)
                        for c in (-0.5, s[2] - 0.5)])
        corners.append(nib.affines.apply_affine(img.affine, box))
    corners = np.concatenate(corners)
    low, high = corners.min(axis=0), corners.max(axis=0)
    shape = tuple(int(n) for n in np.ceil((high - low) / spacing).astype(int))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = low + spacing / 2.0
    return affine, shape


def ants_transform_to_world(path: str | os.PathLike) -> np.ndarray:
    """RAS fixed-to-moving matrix of an ANTs/ITK affine file (``.mat`` or ``.txt``)."""
    from nitransforms import linear

    xfm = linear.load(str(path), fmt="itk")
    matrix = np.asarray(xfm.matrix, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"expected one affine in {path}, got matrix of shape {matrix.shape}")
    return matrix


# --- runners --------------------------------------------------------------------------------

def _robust_unit(data: np.ndarray) -> np.ndarray:
    top = np.percentile(data[data > 0], 99.5) if np.any(data > 0) else 1.0
    return np.clip(data / np.float32(top), 0.0, None).astype(np.float32)


def run_niaffine(fixed, moving, *, contrast, dof=12, device="cpu", seed=0, fixed_mask=None,
                 moving_mask=None, **_):
    """niaffine ``register(..., metric="auto")``."""
    from niaffine.engine import register

    start = time.perf_counter()
    result = register(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask,
                      dof=dof, metric="auto", device=device, seed=seed)
    seconds = time.perf_counter() - start
    extra = {"summary": result.summary(), "device": str(result.device)}
    return np.asarray(result.matrix, dtype=float), seconds, extra


def run_ants(fixed, moving, *, contrast, dof=12, seed=0, fixed_mask=None, moving_mask=None,
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
        paths = {}
        for name, img in (("fixed", fixed), ("moving", moving), ("fixed_mask", fixed_mask),
                          ("moving_mask", moving_mask)):
            if img is not None:
                paths[name] = os.path.join(tmp, f"{name}.nii")
                nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine,
                                         img.header), paths[name])
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


def run_torchreg(fixed, moving, *, contrast, dof=12, device="cpu", seed=0, **_):
    """torchreg ``AffineRegistration`` (its defaults; shears on for 12 dof) on a common grid.

    Both images are resampled (linear) onto a RAS 1 mm grid covering both fields of view and
    scaled to their 99.5th percentile; torchreg has no masks. The resampling time is reported
    as ``prep_s``, not in ``seconds``.
    """
    import torch
    import torchreg

    if dof not in (9, 12):
        raise ValueError("the torchreg runner implements dof 9 and 12 only")
    torch.manual_seed(seed)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    prep = time.perf_counter()
    grid, shape = common_grid([fixed, moving], spacing=1.0)
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
    return matrix, seconds, {"prep_s": prep_s, "grid_shape": list(shape)}


RUNNERS: dict[str, Callable] = {
    "niaffine": run_niaffine,
    "ants": run_ants,
    "torchreg": run_torchreg,
}

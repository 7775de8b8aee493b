# SPDX-License-Identifier: Apache-2.0
"""Starting points: image centres, centres of mass, and a coarse rotation search."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch

from .. import choices
from .frames import voxel_centres

LOGGER = logging.getLogger(__name__)

INITS = choices.INITS  # identity, geometric (image centres), com (centres of mass)


def geometric_centre(shape, affine) -> np.ndarray:
    """World coordinates of the centre of an image's field of view.

    >>> geometric_centre((3, 5, 7), np.diag([2.0, 2.0, 2.0, 1.0]))
    array([2., 4., 6.])
    """
    centre_vox = (np.asarray(shape, dtype=float) - 1) / 2
    affine = np.asarray(affine, dtype=float)
    return affine[:-1, :-1] @ centre_vox + affine[:-1, -1]


def centre_of_mass(data: torch.Tensor, affine, weight: torch.Tensor | None = None) -> np.ndarray:
    """Intensity-weighted world centre of ``(C, *shape)`` data (channels summed).

    Parameters
    ----------
    data : (C, *shape) tensor
        Non-negative intensities.
    affine : (n + 1, n + 1) array
    weight : (1, *shape) tensor, optional
        A mask restricting the computation.
    """
    mass = data.clamp_min(0).sum(0).reshape(-1).double().cpu()
    if weight is not None:
        mass = mass * weight.reshape(-1).double().cpu()
    total = float(mass.sum())
    if total <= 0:
        return geometric_centre(data.shape[1:], affine)
    points = voxel_centres(data.shape[1:], affine, dtype=torch.float64)
    return ((points * mass[:, None]).sum(0) / total).numpy()


def rotation_candidates(max_deg: float, step_deg: float, ndim: int) -> np.ndarray:
    """Rotation vectors (radians) on a grid of Euler angles within ``+-max_deg``.

    >>> rotation_candidates(30, 30, 3).shape
    (27, 3)
    >>> rotation_candidates(90, 45, 2).shape
    (5, 1)
    """
    steps = int(np.floor(max_deg / step_deg + 1e-9))
    angles = np.deg2rad(np.arange(-steps, steps + 1) * step_deg)
    if ndim == 2:
        return angles[:, None]
    from scipy.spatial.transform import Rotation

    triples = np.array(list(itertools.product(angles, repeat=3)))
    return Rotation.from_euler("xyz", triples).as_rotvec()

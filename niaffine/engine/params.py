# SPDX-License-Identifier: Apache-2.0
"""Constrained affine parameters: translation, rotation, zoom and shear groups.

A transform maps fixed-space world points ``x`` to moving-space world points::

    y = L (x - c) + c + t,    L = R(r) @ diag(exp(z)) @ S(s)

with ``c`` a fixed centre (the fixed image's centre of mass by default), ``t`` a translation in
mm, ``R`` an exactly orthogonal rotation built from a rotation vector ``r`` (axis times angle, in
radians; one angle in 2D), ``exp(z)`` the zooms and ``S`` a unit upper-triangular shear.

The optimiser does not see radians or log-zooms: every group is stored multiplied by a
``radius`` (mm, about the size of the object), so that one unit of any parameter moves points
near the object's edge by about one millimetre. This is what makes a first-order or quasi-Newton
optimiser well conditioned (the role of ANTs' scales estimator).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..choices import DOF_GROUPS, PARAMETER_GROUPS
from ..errors import InputError

#: Parameter groups (the dof table, :data:`DOF_GROUPS`, is in :mod:`niaffine.choices`).
GROUPS = PARAMETER_GROUPS


def group_sizes(ndim: int) -> dict[str, int]:
    """Number of parameters in each group for 2D or 3D transforms."""
    return {
        "translation": ndim,
        "rotation": 3 if ndim == 3 else 1,
        "zoom": ndim,
        "shear": 3 if ndim == 3 else 1,
    }


def active_groups(dof: int, ndim: int, frozen=()) -> tuple[str, ...]:
    """Groups optimised for ``dof`` degrees of freedom, minus the ``frozen`` ones.

    >>> active_groups(6, 3)
    ('translation', 'rotation')
    >>> active_groups(12, 3, frozen=("shear",))
    ('translation', 'rotation', 'zoom')
    """
    try:
        groups = DOF_GROUPS[ndim][int(dof)]
    except KeyError:
        allowed = ", ".join(str(d) for d in DOF_GROUPS[ndim])
        raise InputError(f"dof={dof} is not supported in {ndim}D (choose one of {allowed})") from None
    unknown = set(frozen) - set(GROUPS)
    if unknown:
        raise InputError(f"unknown parameter group(s) to freeze: {', '.join(sorted(unknown))}")
    return tuple(g for g in groups if g not in set(frozen))


def is_isotropic_zoom(dof: int, ndim: int) -> bool:
    """Whether ``dof`` asks for one zoom shared by every axis (7 dof in 3D, 4 in 2D)."""
    return (ndim, int(dof)) in ((3, 7), (2, 4))


def rotation_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Exactly orthogonal rotation matrices from rotation vectors (Rodrigues' formula).

    Parameters
    ----------
    rotvec : (B, 3) tensor
        Axis times angle (radians); or ``(B, 1)`` angles for 2D rotations.

    Returns
    -------
    (B, 3, 3) or (B, 2, 2) tensor

    Examples
    --------
    >>> r = rotation_matrix(torch.tensor([[0.0, 0.0, np.pi / 2]], dtype=torch.float64))
    >>> torch.allclose(r[0] @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
    ...                torch.tensor([0.0, 1, 0], dtype=torch.float64))
    True
    """
    if rotvec.shape[-1] == 1:
        c, s = torch.cos(rotvec[:, 0]), torch.sin(rotvec[:, 0])
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    theta2 = (rotvec * rotvec).sum(-1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(safe2)
    # sin(t)/t and (1 - cos(t))/t^2 with their Taylor series near zero.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / safe2)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)],
        -2,
    )
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a[:, None, None] * k + b[:, None, None] * (k @ k)


def shear_matrix(shear: torch.Tensor, ndim: int) -> torch.Tensor:
    """Unit upper-triangular shear matrices ``(B, n, n)`` from ``(B, 3)`` (or ``(B, 1)``) shears."""
    b = shear.shape[0]
    out = torch.eye(ndim, dtype=shear.dtype, device=shear.device).repeat(b, 1, 1)
    rows, cols = torch.triu_indices(ndim, ndim, offset=1)
    out = out.index_put((torch.arange(b).repeat_interleave(len(rows)), rows.repeat(b), cols.repeat(b)),
                        shear.reshape(-1))
    return out


def decompose_linear(linear: np.ndarray) -> dict[str, np.ndarray]:
    """Split a linear map into rotation vector, zooms and shears (``L = R diag(z) S``).

    Parameters
    ----------
    linear : (n, n) array
        The linear part of an affine matrix, ``n`` 2 or 3.

    Returns
    -------
    dict
        ``rotation`` (rotation vector, or ``(1,)`` angle in 2D), ``zoom`` and ``shear``.

    Raises
    ------
    InputError
        When the map contains a reflection (negative determinant) or is singular.

    Examples
    --------
    >>> parts = decompose_linear(np.diag([2.0, 1.0, 0.5]))
    >>> parts["zoom"], parts["rotation"], parts["shear"]
    (array([2. , 1. , 0.5]), array([0., 0., 0.]), array([0., 0., 0.]))
    """
    linear = np.asarray(linear, dtype=float)
    ndim = linear.shape[0]
    if not np.isfinite(linear).all() or np.linalg.det(linear) <= 0:
        raise InputError("the transform is singular or contains a reflection (det <= 0)")
    q, u = np.linalg.qr(linear)
    signs = np.sign(np.diag(u))
    q, u = q * signs, signs[:, None] * u
    zoom = np.diag(u).copy()
    shear_full = u / zoom[:, None]
    shear = shear_full[np.triu_indices(ndim, k=1)]
    if ndim == 3:
        rotation = rotvec_from_matrix(q)
    else:
        rotation = np.array([np.arctan2(q[1, 0], q[0, 0])])
    return {"rotation": rotation + 0.0, "zoom": zoom, "shear": shear + 0.0}


def matrix_from_rotvec(rotvec) -> np.ndarray:
    """The 3x3 rotation of a rotation vector (axis times angle, radians; Rodrigues' formula).

    NumPy twin of :func:`rotation_matrix` for one vector, without torch or scipy (whose
    import costs a one-off 40 ms in every registration that would use it).

    >>> np.round(matrix_from_rotvec([0.0, 0.0, np.pi / 2]) @ [1.0, 0.0, 0.0], 12) + 0.0
    array([0., 1., 0.])
    """
    v = np.asarray(rotvec, dtype=float).reshape(3)
    angle = float(np.linalg.norm(v))
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    if angle < 1e-12:
        return np.eye(3) + k
    k /= angle
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def rotvec_from_matrix(rotation) -> np.ndarray:
    """The rotation vector (angle in [0, pi]) of a 3x3 rotation matrix; inverse of
    :func:`matrix_from_rotvec`, accurate at small angles and near half a turn.

    >>> np.round(rotvec_from_matrix(matrix_from_rotvec([0.3, -0.2, 0.1])), 12).tolist()
    [0.3, -0.2, 0.1]
    """
    r = np.asarray(rotation, dtype=float).reshape(3, 3)
    skew = 0.5 * np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    sine = float(np.linalg.norm(skew))
    cosine = float(np.clip(0.5 * (np.trace(r) - 1.0), -1.0, 1.0))
    angle = float(np.arctan2(sine, cosine))
    if angle < 1e-6:
        return skew  # sin(angle) ~ angle
    if cosine > -0.5:  # away from half a turn the skew part is well conditioned
        return skew * (angle / sine)
    # near half a turn the skew part vanishes: the axis comes from the symmetric part,
    # (R + R^T) / 2 = cos I + (1 - cos) a a^T, its sign from the skew part
    sym = 0.5 * (r + r.T) - cosine * np.eye(3)
    column = int(np.argmax(np.diag(sym)))
    axis = sym[:, column] / np.sqrt(max(sym[column, column], 1e-300))
    axis /= np.linalg.norm(axis)
    if axis @ skew < 0:
        axis = -axis
    return axis * angle


class AffineParameters(nn.Module):
    """Batched affine transform made of separately optimisable parameter groups.

    Parameters
    ----------
    centre : (B, n) array
        World centre ``c`` of rotations, zooms and shears, per batch item.
    radius : (B,) array
        Scale (mm) applied to rotation, log-zoom and shear so each unit moves points ~1 mm.
    dof : int
        Degrees of freedom; selects the groups that are optimised.
    frozen : sequence of str
        Groups held at their initial value even if ``dof`` includes them.
    initial : (B, n + 1, n + 1) array, optional
        Initial world matrices; decomposed into the groups. Groups that are not optimised keep
        their initial values (identity when no initial matrix is given).
    """

    def __init__(self, centre, radius, *, dof: int = 12, frozen=(), initial=None):
        super().__init__()
        centre = torch.as_tensor(np.asarray(centre, dtype=float))
        self.ndim = centre.shape[-1]
        self.dof = int(dof)
        self.active = active_groups(dof, self.ndim, frozen)
        self.isotropic = is_isotropic_zoom(dof, self.ndim)
        self.register_buffer("centre", centre)
        self.register_buffer("radius", torch.as_tensor(np.asarray(radius, dtype=float)).reshape(-1, 1))
        batch = centre.shape[0]
        values = {g: np.zeros((batch, n)) for g, n in group_sizes(self.ndim).items()}
        if initial is not None:
            for b, matrix in enumerate(np.asarray(initial, dtype=float)):
                for group, value in self.matrix_to_groups(matrix, centre[b].numpy()).items():
                    values[group][b] = value
        if self.isotropic:
            values["zoom"] = values["zoom"].mean(axis=1, keepdims=True)
        for group in GROUPS:
            scaled = torch.as_tensor(values[group])
            if group != "translation":
                scaled = scaled * self.radius
            self.register_parameter(group, nn.Parameter(scaled, requires_grad=group in self.active))

    @staticmethod
    def matrix_to_groups(matrix: np.ndarray, centre: np.ndarray) -> dict[str, np.ndarray]:
        """Unscaled group values (``translation`` mm, ``rotation`` rad, log ``zoom``, ``shear``)."""
        n = matrix.shape[0] - 1
        linear = matrix[:n, :n]
        parts = decompose_linear(linear)
        translation = matrix[:n, n] - centre + linear @ centre
        return {
            "translation": translation,
            "rotation": parts["rotation"],
            "zoom": np.log(parts["zoom"]),
            "shear": parts["shear"],
        }

    def groups(self) -> dict[str, torch.Tensor]:
        """Unscaled group values: translation (mm), rotation (rad), log-zoom, shear."""
        zoom = self.zoom / self.radius
        if self.isotropic:
            zoom = zoom.expand(-1, self.ndim)
        return {
            "translation": self.translation,
            "rotation": self.rotation / self.radius,
            "zoom": zoom,
            "shear": self.shear / self.radius,
        }

    def forward(self) -> torch.Tensor:
        """World matrices ``(B, n + 1, n + 1)`` (float64) mapping fixed to moving points."""
        g = self.groups()
        rot = rotation_matrix(g["rotation"])
        linear = rot @ torch.diag_embed(torch.exp(g["zoom"])) @ shear_matrix(g["shear"], self.ndim)
        offset = self.centre + g["translation"] - (linear @ self.centre[..., None])[..., 0]
        top = torch.cat([linear, offset[..., None]], dim=-1)
        bottom = torch.zeros_like(top[:, :1, :])
        bottom[..., -1] = 1.0
        return torch.cat([top, bottom], dim=1)

    def optimised(self) -> list[nn.Parameter]:
        """The parameters the optimiser moves."""
        return [getattr(self, g) for g in self.active]

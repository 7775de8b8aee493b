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
import torch.nn.functional as F
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
        return torch.stack([c, -s, s, c], -1).reshape(-1, 2, 2)
    return rodrigues(rotvec, torch, torch.eye(3, dtype=rotvec.dtype, device=rotvec.device))


def rodrigues(v, xp, eye):
    """Rotation matrices ``(B, 3, 3)`` of rotation vectors ``(B, 3)`` in NumPy or torch
    (``xp``, with ``eye`` its 3x3 identity): ``R = I + a K + b K^2`` with ``K = [v]x``, and as
    ``K^2 = v v^T - theta^2 I``, ``R = (1 - b theta^2) I + a K + b v v^T`` (few operations:
    this runs at every evaluation, and on small levels their count is what costs)."""
    theta2 = (v * v).sum(-1)[:, None, None]
    small = theta2 < 1e-8
    safe2 = xp.where(small, xp.ones_like(theta2), theta2)
    theta = xp.sqrt(safe2)
    # sin(t)/t and (1 - cos(t))/t^2 with their Taylor series near zero.
    a = xp.where(small, 1 - theta2 / 6, xp.sin(theta) / theta)
    b = xp.where(small, 0.5 - theta2 / 24, (1 - xp.cos(theta)) / safe2)
    x, y, w = v[:, 0], v[:, 1], v[:, 2]
    zero = xp.zeros_like(x)
    k = xp.stack([zero, -w, y, w, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    return (1 - b * theta2) * eye + a * k + b * (v[:, :, None] * v[:, None, :])


def shear_matrix(shear: torch.Tensor, ndim: int) -> torch.Tensor:
    """Unit upper-triangular shear matrices ``(B, n, n)`` from ``(B, 3)`` (or ``(B, 1)``) shears."""
    one = torch.ones_like(shear[:, 0])
    zero = torch.zeros_like(one)
    if ndim == 2:
        return torch.stack([one, shear[:, 0], zero, one], -1).reshape(-1, 2, 2)
    return upper_shear(shear, torch)


def upper_shear(s, xp):
    """3D unit upper-triangular shear matrices ``(B, 3, 3)`` of ``(B, 3)`` shears (entries
    (0, 1), (0, 2), (1, 2), torch.triu_indices' order) in NumPy or torch (``xp``)."""
    one = xp.ones_like(s[:, 0])
    zero = xp.zeros_like(one)
    return xp.stack([one, s[:, 0], s[:, 1], zero, one, s[:, 2], zero, zero, one],
                    -1).reshape(-1, 3, 3)


def _affine_from_groups(translation, rotvec, log_zoom, shear, centre, ndim: int):
    """``[[L, c + t - L c], [0, 1]]`` with ``L = R(rotvec) diag(exp(log_zoom)) S(shear)``
    through autograd (2D, and the reference the 3D closed form is tested against)."""
    # diag(zoom) @ shear scales the shear matrix's rows
    linear = rotation_matrix(rotvec) @ (torch.exp(log_zoom)[..., None]
                                        * shear_matrix(shear, ndim))
    offset = centre + translation - (linear @ centre[..., None])[..., 0]
    out = F.pad(torch.cat([linear, offset[..., None]], dim=-1), (0, 0, 0, 1))
    out[:, -1, -1] = 1.0
    return out


def _matrix_3d(t, v, z, s, c, xp, eye):
    """The 3D world matrices of unscaled groups, in NumPy or torch (``xp``): the matrices,
    ``R`` and ``A = diag(exp(z)) S``. Only operations both libraries spell alike."""
    rot = rodrigues(v, xp, eye)
    zero, one = xp.zeros_like(v[:, 0]), xp.ones_like(v[:, 0])
    shear = upper_shear(s, xp)
    zoom_shear = xp.exp(z)[:, :, None] * shear
    linear = rot @ zoom_shear
    offset = c + t - (linear @ c[:, :, None])[:, :, 0]
    bottom = xp.stack([zero, zero, zero, one], -1)[:, None, :]
    out = xp.concatenate([xp.concatenate([linear, offset[:, :, None]], -1), bottom], 1)
    return out, rot, zoom_shear


def _matrix_3d_backward(grad, v, rot, zoom_shear, z, c, xp, eye):
    """Gradients of :func:`_matrix_3d` for ``(t, v, z, s)`` (see :class:`_AffineMatrix3D`)."""
    grad_offset = grad[:, :3, 3]
    g = grad[:, :3, :3] - grad_offset[:, :, None] * c[:, None, :]
    rtg = rot.swapaxes(1, 2) @ g
    grad_zoom = (rtg * zoom_shear).sum(-1)
    zrtg = xp.exp(z)[:, :, None] * rtg
    grad_shear = xp.stack([zrtg[:, 0, 1], zrtg[:, 0, 2], zrtg[:, 1, 2]], -1)
    p = g @ (rot @ zoom_shear).swapaxes(1, 2)
    q = xp.stack([p[:, 2, 1] - p[:, 1, 2], p[:, 0, 2] - p[:, 2, 0], p[:, 1, 0] - p[:, 0, 1]], -1)
    q_cross_v = xp.stack([q[:, 1] * v[:, 2] - q[:, 2] * v[:, 1],
                          q[:, 2] * v[:, 0] - q[:, 0] * v[:, 2],
                          q[:, 0] * v[:, 1] - q[:, 1] * v[:, 0]], -1)
    theta2 = (v * v).sum(-1)[:, None]
    small = theta2 < 1e-12
    general = (v * (v * q).sum(-1)[:, None]
               + ((eye - rot).swapaxes(1, 2) @ q_cross_v[:, :, None])[:, :, 0])
    grad_rot = xp.where(small, q, general / xp.where(small, xp.ones_like(theta2), theta2))
    return grad_offset, grad_rot, grad_zoom, grad_shear


class _AffineMatrix3D(torch.autograd.Function):
    """3D world matrices from unscaled parameter groups, with an analytic backward.

    An evaluation at a coarse level is dominated by the count of small operations, and
    building a 4x4 matrix through autograd took about 190 tensor operations forward and
    backward (2 ms on this project's CPUs). Here the matrix and its gradients are closed
    form, computed with NumPy on the CPU (small arrays: about a microsecond per operation)
    and with torch on other devices. With ``G = dLoss/dL - dLoss/do c^T`` (``o`` the offset)
    and ``A = diag(z) S``: translation ``dLoss/do``; log-zoom ``rowsum((R^T G) * A)``; shear
    ``diag(z) R^T G`` at its upper-triangular entries; rotation vector ``v`` (Gallego & Yezzi
    2015, ``dR/dv_i = [(v_i v + v x (I - R) e_i) / |v|^2]_x R``):
    ``(v (v . q) + (I - R)^T (q x v)) / |v|^2`` with ``q = vee(P - P^T)``, ``P = G A^T R^T``
    (``q`` itself at ``v = 0``). Checked against autograd through :func:`rotation_matrix`
    and :func:`shear_matrix` in the tests.
    """

    @staticmethod
    def forward(ctx, translation, rotvec, log_zoom, shear, centre):
        inputs = (translation, rotvec, log_zoom, shear, centre)
        ctx.on_cpu = translation.device.type == "cpu"
        if ctx.on_cpu:
            arrays = [x.detach().numpy() for x in inputs]
            eye = np.eye(3)
            out, rot, zoom_shear = _matrix_3d(*arrays, np, eye)
            ctx.arrays = (arrays[1], rot, zoom_shear, arrays[2], arrays[4], eye)
            return torch.from_numpy(out)
        eye = torch.eye(3, dtype=translation.dtype, device=translation.device)
        out, rot, zoom_shear = _matrix_3d(*inputs, torch, eye)
        ctx.save_for_backward(rotvec, rot, zoom_shear, log_zoom, centre, eye)
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.on_cpu:
            grads = _matrix_3d_backward(grad.detach().numpy(), *ctx.arrays[:5], np,
                                        ctx.arrays[5])
            return (*(torch.from_numpy(np.ascontiguousarray(g)) for g in grads), None)
        *saved, eye = ctx.saved_tensors
        return (*_matrix_3d_backward(grad, *saved, torch, eye), None)


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
    return rodrigues(np.asarray(rotvec, dtype=float).reshape(1, 3), np, np.eye(3))[0]


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
        parts = (g["translation"], g["rotation"], g["zoom"], g["shear"], self.centre)
        if self.ndim == 3:
            return _AffineMatrix3D.apply(*parts)
        return _affine_from_groups(*parts, self.ndim)

    def optimised(self) -> list[nn.Parameter]:
        """The parameters the optimiser moves."""
        return [getattr(self, g) for g in self.active]

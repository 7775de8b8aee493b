# SPDX-License-Identifier: Apache-2.0
"""Similarity metrics as pure tensor functions, written as losses (lower is better).

Point metrics take the fixed and moving intensities at the same sample points and one weight
per point (0 for points outside the moving image or its mask):

``fixed``, ``moving`` : ``(B, C, N)`` tensors; ``weight`` : ``(B, N)`` tensor; returns ``(B,)``.

Intensities are expected in ``[0, 1]`` (see :func:`niaffine.engine.volume.robust_normalise`);
the histogram-based metrics (mutual information, correlation ratio) rely on it. Channels are
summed, so several contrasts register jointly. :func:`lncc` works on dense grids instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import choices
from ..threads import one_thread

EPS = 1e-8


def _wmean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the last axis; ``x`` is ``(B, C, N)``, ``weight`` is ``(B, N)``."""
    w = weight[:, None, :]
    return (x * w).sum(-1) / w.sum(-1).clamp_min(EPS)


def mse(fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared intensity difference, summed over channels.

    >>> f = torch.rand(1, 1, 100)
    >>> float(mse(f, f, torch.ones(1, 100)))
    0.0
    """
    return _wmean((fixed - moving) ** 2, weight).sum(-1)


def ncc(fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Negative global normalised cross-correlation, summed over channels (-1 is a perfect fit).

    >>> f = torch.rand(2, 1, 100)
    >>> torch.allclose(ncc(f, 3 * f + 1, torch.ones(2, 100)), -torch.ones(2), atol=1e-5)
    True
    """
    fc = fixed - _wmean(fixed, weight)[..., None]
    mc = moving - _wmean(moving, weight)[..., None]
    cov = _wmean(fc * mc, weight)
    var = _wmean(fc * fc, weight) * _wmean(mc * mc, weight)
    return -(cov / torch.sqrt(var + EPS)).sum(-1)


def parzen_weights(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Soft bin memberships ``(..., N, bins)`` of values in ``[0, 1]``.

    A Gaussian window of one bin width (standard deviation half a bin) is used: smooth, so the
    histogram is differentiable, and narrow enough to keep the histogram sharp.
    """
    centres = torch.linspace(0.0, 1.0, bins, dtype=values.dtype, device=values.device)
    sigma = 0.5 / (bins - 1)
    p = torch.exp(-0.5 * ((values[..., None] - centres) / sigma) ** 2)
    return p / p.sum(-1, keepdim=True).clamp_min(EPS)


def cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline kernel (support ``|t| < 2``).

    >>> cubic_bspline(torch.tensor([0.0, 1.0, 2.0]))
    tensor([0.6667, 0.1667, 0.0000])
    """
    a = t.abs()
    inner = 2.0 / 3.0 - a**2 + 0.5 * a**3
    outer = (2.0 - a).clamp_min(0) ** 3 / 6.0
    return torch.where(a < 1, inner, outer)


def _cubic_bspline_weights(t: torch.Tensor) -> tuple:
    """Weights of the bins ``m0 - 1 ... m0 + 2`` at the fraction ``t = u - m0`` (4 tensors).

    >>> [round(float(w), 4) for w in _cubic_bspline_weights(torch.tensor(0.0))]
    [0.1667, 0.6667, 0.1667, 0.0]
    """
    t2, s = t * t, 1.0 - t
    first, last = s * s * s / 6.0, t2 * t / 6.0
    second = 3.0 * last - t2 + 2.0 / 3.0
    return first, second, 1.0 - first - second - last, last  # they sum to one


def _cubic_bspline_slopes(t: torch.Tensor) -> tuple:
    """Derivatives ``d/dt`` of :func:`_cubic_bspline_weights` (4 tensors)."""
    t2, s = t * t, 1.0 - t
    first, last = -0.5 * s * s, 0.5 * t2
    second = 1.5 * t2 - 2.0 * t
    return first, second, -(first + second + last), last  # they sum to zero


def _window_offsets(bins: int) -> list[int]:
    """Flat-histogram offsets of a sample's 8 bins from its first: 2 fixed rows x 4 columns."""
    return [row * bins + col for row in range(2) for col in range(4)]


class _SparseHistogram(torch.autograd.Function):
    """Joint histogram from fixed bin rows and moving bin coordinates, with a lean backward.

    A sample's 8 bins lie at fixed offsets from its first bin (2 fixed rows of 4 moving
    columns). Each of the 8 window products (one fixed weight times one moving weight, a
    contiguous array over the samples) is added at the samples' first bins into its own row
    of an ``(8, bins**2)`` table; the table's rows, shifted by their offsets, add up to the
    histogram. The backward gathers the histogram gradient the same way (8 shifted views,
    one index per sample) and weights it by the B-spline slopes: the histogram is linear in
    the window weights, and only the moving windows depend on the parameters. Every array is
    contiguous over the samples: products over ``(N, 2, 4)`` layouts, whose innermost axes
    are 2 and 4 long, cost twice as much.

    Both passes run on one CPU thread: these memory-bound scatters, gathers and products ran
    slower split across two passive OpenMP threads (:mod:`niaffine.threads`) than on one,
    forward and backward: 1.34 against 0.99 ms for 14 000 samples, 11.4 against 4.7 ms for
    100 000, 20.7 against 18.9 ms for 30 x 10 000.
    """

    @staticmethod
    def forward(ctx, um, rows, fixed_low, fixed_high, size):
        bins, cells = size[-1], math.prod(size)
        with one_thread(um.device):
            # the first of the 4 moving bins; um = bins - 2 (t = 0 at the last bin) is the
            # same window as t = 1 one bin lower, which keeps all 4 bins inside the row
            m0 = um.detach().floor().clamp_(max=bins - 3)
            t = um - m0
            index = rows + m0.long() - 1
            weights = _cubic_bspline_weights(t)
            table = torch.zeros(8, cells, dtype=um.dtype, device=um.device)
            for j, (fixed_w, moving_w) in enumerate(
                    (f, m) for f in (fixed_low, fixed_high) for m in weights):
                table[j].index_add_(0, index, fixed_w * moving_w)
            flat = torch.zeros(cells + bins + 3, dtype=um.dtype, device=um.device)
            for j, offset in enumerate(_window_offsets(bins)):
                flat[offset:offset + cells] += table[j]
        ctx.save_for_backward(t, index, fixed_low, fixed_high)
        return flat[:cells].reshape(size)

    @staticmethod
    def backward(ctx, grad):
        t, index, fixed_low, fixed_high = ctx.saved_tensors
        bins, cells = grad.shape[-1], grad.numel()
        with one_thread(t.device):
            padded = torch.cat([grad.reshape(-1), grad.new_zeros(bins + 3)])
            gathered = [padded[o:o + cells].index_select(0, index)
                        for o in _window_offsets(bins)]
            out = None
            for col, slope in enumerate(_cubic_bspline_slopes(t)):
                per_bin = (gathered[col] * fixed_low).addcmul_(gathered[4 + col], fixed_high)
                out = per_bin.mul_(slope) if out is None else out.addcmul_(per_bin, slope)
        return out, None, None, None, None


def bspline_joint_histogram(fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor,
                            bins: int) -> torch.Tensor:
    """Joint histogram ``(B, C, bins, bins)`` with sparse windows (Mattes et al.).

    Fixed intensities are binned linearly (2 bins each), moving intensities with a cubic
    B-spline window (4 bins each), so the histogram is differentiable in the moving intensities
    and costs 8 additions per sample whatever the number of bins. Values in ``[0, 1]`` map to
    bin coordinates ``[1, bins - 2]``, which keeps every window inside the histogram.

    Examples
    --------
    >>> f, m = torch.rand(2, 1, 500), torch.rand(2, 1, 500, requires_grad=True)
    >>> h = bspline_joint_histogram(f, m, torch.ones(2, 500), 16)
    >>> h.shape, round(float(h.sum()), 3)
    (torch.Size([2, 1, 16, 16]), 1000.0)
    >>> torch.autograd.gradcheck(lambda x: bspline_joint_histogram(
    ...     f.double(), x, torch.ones(2, 500, dtype=torch.float64), 16),
    ...     (0.05 + 0.9 * torch.rand(2, 1, 500, dtype=torch.float64)).requires_grad_())
    True
    """
    b, c, n = fixed.shape
    span = bins - 3
    uf = 1.0 + fixed.detach().clamp(0, 1) * span
    f0 = uf.floor().clamp(0, bins - 2)
    ff = uf - f0
    base = (torch.arange(b * c, device=fixed.device) * bins * bins).reshape(b, c, 1)
    rows = (f0.long() * bins + base).reshape(-1)
    w = weight.detach()[:, None, :]
    low = ((1.0 - ff) * w).reshape(-1).to(moving.dtype)
    high = (ff * w).reshape(-1).to(moving.dtype)
    um = 1.0 + moving.clamp(0, 1) * span
    return _SparseHistogram.apply(um.reshape(-1), rows, low, high, (b, c, bins, bins))


def gaussian_joint_histogram(fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor,
                             bins: int) -> torch.Tensor:
    """Joint histogram ``(B, C, bins, bins)`` with dense Gaussian Parzen windows."""
    pf = parzen_weights(fixed.clamp(0, 1), bins) * weight[:, None, :, None]
    pm = parzen_weights(moving.clamp(0, 1), bins)
    return pf.transpose(-1, -2) @ pm


def mutual_information(
    fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor, *, bins: int = 32,
    window: str = "bspline", normalised: bool = False,
) -> torch.Tensor:
    """Negative mutual information from a differentiable joint histogram.

    Parameters
    ----------
    fixed, moving : (B, C, N) tensors with values in ``[0, 1]``
    weight : (B, N) tensor
    bins : int
        Histogram bins per image (32 as in ANTs' Mattes MI).
    window : {"bspline", "gaussian"}
        Sparse B-spline windows (fast, the default) or dense Gaussian Parzen windows.
    normalised : bool
        Return the negative normalised MI ``(H(F) + H(M)) / H(F, M)``, less one (a constant
        shift that keeps the loss's relative changes visible to convergence tests), instead.

    Examples
    --------
    >>> f = torch.rand(1, 1, 5000)
    >>> w = torch.ones(1, 5000)
    >>> same, other = mutual_information(f, f, w), mutual_information(f, torch.rand(1, 1, 5000), w)
    >>> bool(same < other)
    True
    >>> bool(torch.allclose(same, mutual_information(f, f, w, window="gaussian"), atol=0.5))
    True
    """
    histogram = {"bspline": bspline_joint_histogram, "gaussian": gaussian_joint_histogram}[window]
    joint = histogram(fixed, moving, weight, bins)
    joint = joint / joint.sum((-1, -2), keepdim=True).clamp_min(EPS)
    marg_f = joint.sum(-1)
    marg_m = joint.sum(-2)
    h_joint = -(joint * torch.log(joint + EPS)).sum((-1, -2))
    h_f = -(marg_f * torch.log(marg_f + EPS)).sum(-1)
    h_m = -(marg_m * torch.log(marg_m + EPS)).sum(-1)
    if normalised:
        # NMI - 1 = MI / H(F, M): the same optimum as NMI, but a loss whose relative changes
        # the convergence tests can see (NMI itself stays near 1 while MI changes tenfold).
        return -((h_f + h_m - h_joint) / h_joint.clamp_min(EPS)).sum(-1)
    return -(h_f + h_m - h_joint).sum(-1)


def correlation_ratio(
    fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor, *, bins: int = 32
) -> torch.Tensor:
    """Negative correlation ratio ``1 - E[Var(M | F)] / Var(M)`` (FLIRT's default cost).

    Fixed intensities are binned linearly; within each bin the variance of the moving
    intensities is measured. ``-1`` means the moving image is a function of the fixed one.

    >>> f = torch.rand(1, 1, 5000)
    >>> float(correlation_ratio(f, f ** 2, torch.ones(1, 5000))) < -0.95
    True
    """
    b, c, n = fixed.shape
    u = fixed.clamp(0, 1) * (bins - 1)
    f0 = u.floor().clamp(0, bins - 2)
    frac = u - f0
    base = (torch.arange(b * c, device=fixed.device) * bins).reshape(b, c, 1)
    w = weight[:, None, :]
    index = torch.cat([(f0.long() + base).reshape(-1), (f0.long() + 1 + base).reshape(-1)])
    parts = [((1 - frac) * w).reshape(-1), (frac * w).reshape(-1)]

    def per_bin(x):
        vals = torch.cat([parts[0] * x.reshape(-1), parts[1] * x.reshape(-1)])
        out = torch.zeros(b * c * bins, dtype=moving.dtype, device=moving.device)
        return out.index_add(0, index, vals).reshape(b, c, bins)

    count = per_bin(torch.ones_like(moving)).clamp_min(EPS)
    mean_k = per_bin(moving) / count
    second_k = per_bin(moving**2) / count
    within = ((second_k - mean_k**2).clamp_min(0) * count).sum(-1) / count.sum(-1)
    mean = _wmean(moving, weight)
    total = (_wmean(moving**2, weight) - mean**2).clamp_min(EPS)
    return -(1.0 - within / total).sum(-1)


def lncc(
    fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor, *, window: int = 5
) -> torch.Tensor:
    """Negative local normalised cross-correlation on dense grids.

    Parameters
    ----------
    fixed, moving : (B, C, *spatial) tensors
    weight : (B, 1, *spatial) tensor
    window : int
        Side of the cubic (square in 2D) window, in voxels.

    >>> f = torch.rand(1, 1, 12, 12, 12)
    >>> float(lncc(f, 2 * f, torch.ones(1, 1, 12, 12, 12))) < -0.99
    True
    """
    ndim = fixed.ndim - 2
    pool = F.avg_pool3d if ndim == 3 else F.avg_pool2d
    pad = window // 2

    def local(x):
        return pool(x, window, stride=1, padding=pad, count_include_pad=False)

    mf, mm = local(fixed), local(moving)
    cov = local(fixed * moving) - mf * mm
    vf = (local(fixed * fixed) - mf * mf).clamp_min(0)
    vm = (local(moving * moving) - mm * mm).clamp_min(0)
    dims = tuple(range(2, fixed.ndim))
    # A guard relative to the images' typical local variance keeps LNCC scale-invariant.
    guard = 1e-6 * vf.mean(dims, keepdim=True) * vm.mean(dims, keepdim=True) + 1e-30
    cc = cov * cov / (vf * vm + guard)
    per_channel = (cc * weight).sum(dims) / weight.sum(dims).clamp_min(EPS)
    return -per_channel.sum(-1)


#: Point metrics by name (``lncc`` is dense and handled separately).
POINT_METRICS = {
    "mse": mse,
    "ncc": ncc,
    "mi": mutual_information,
    "nmi": lambda f, m, w: mutual_information(f, m, w, normalised=True),
    "cr": correlation_ratio,
}
#: Every metric name (:data:`niaffine.choices.METRICS`): the point metrics and ``lncc``.
METRICS = choices.METRICS

# SPDX-License-Identifier: Apache-2.0
"""Similarity metrics: minimal at alignment, monotone in the shift, finite gradients."""

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from niaffine.engine import metrics as M

SHIFTS = (0.0, 0.5, 1.0, 2.0, 3.0)
POINT = {
    "mse": M.mse,
    "ncc": M.ncc,
    "mi": M.mutual_information,
    "nmi": M.POINT_METRICS["nmi"],
    "cr": M.correlation_ratio,
}


def _smooth_volume(seed=0, shape=(32, 32, 32)) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    vol = ndi.gaussian_filter(rng.standard_normal(shape), 2.0)
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    return torch.as_tensor(vol, dtype=torch.float64)


def _sample(vol: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of a ``(X, Y, Z)`` volume at ``(N, 3)`` voxel coordinates -> ``(N,)``."""
    shape = torch.tensor(vol.shape, dtype=vol.dtype)
    grid = (2 * voxels / (shape - 1) - 1).flip(-1)  # grid_sample order: last axis first
    out = F.grid_sample(vol[None, None], grid.reshape(1, -1, 1, 1, 3), mode="bilinear",
                        align_corners=True)
    return out.reshape(-1)


@pytest.fixture(scope="module")
def volume_and_points():
    vol = _smooth_volume()
    rng = np.random.default_rng(1)
    points = torch.as_tensor(rng.uniform(6, 25, (6000, 3)))
    return vol, points


def _loss_at(metric, vol, points, shift, axis=0, **kwargs):
    fixed = _sample(vol, points)[None, None]
    offset = torch.zeros(3, dtype=points.dtype)
    offset[axis] = shift
    moving = _sample(vol, points + offset)[None, None]
    return float(metric(fixed, moving, torch.ones(1, points.shape[0], dtype=points.dtype), **kwargs))


@pytest.mark.parametrize("name", sorted(POINT))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_point_metric_minimal_at_identity_and_monotone(name, sign, volume_and_points):
    vol, points = volume_and_points
    losses = [_loss_at(POINT[name], vol, points, sign * s, axis=1) for s in SHIFTS]
    assert np.argmin(losses) == 0
    assert np.all(np.diff(losses) > 0), losses


@pytest.mark.parametrize("name", sorted(POINT))
def test_point_metric_gradient_is_finite_and_points_back(name, volume_and_points):
    vol, points = volume_and_points
    fixed = _sample(vol, points)[None, None]
    for shift in (1.0, -1.0):
        t = torch.tensor([0.0, 0.0, shift], dtype=torch.float64, requires_grad=True)
        moving = _sample(vol, points + t)[None, None]
        loss = POINT[name](fixed, moving, torch.ones(1, points.shape[0], dtype=torch.float64))
        loss.sum().backward()
        grad = t.grad.numpy()
        assert np.isfinite(grad).all()
        # Going further from the alignment costs more: the gradient points away from it.
        assert np.sign(grad[2]) == np.sign(shift), grad


def test_bspline_and_gaussian_mutual_information_rank_shifts_alike(volume_and_points):
    vol, points = volume_and_points
    shifts = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
    bspline = [_loss_at(M.mutual_information, vol, points, s, window="bspline") for s in shifts]
    gauss = [_loss_at(M.mutual_information, vol, points, s, window="gaussian") for s in shifts]
    assert np.array_equal(np.argsort(bspline), np.argsort(gauss))
    assert np.argsort(bspline).tolist() == list(range(len(shifts)))
    # Same quantity, different Parzen windows: values of the same size.
    assert np.allclose(bspline, gauss, rtol=0.35)


def test_metrics_ignore_zero_weight_points(volume_and_points):
    vol, points = volume_and_points
    fixed = _sample(vol, points)[None, None]
    moving = _sample(vol, points + torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))[None, None]
    weight = torch.ones(1, points.shape[0], dtype=torch.float64)
    weight[:, ::3] = 0
    corrupted = moving.clone()
    corrupted[..., ::3] = torch.rand(corrupted[..., ::3].shape, dtype=torch.float64)
    keep = weight[0] > 0
    for name, metric in POINT.items():
        a = metric(fixed, corrupted, weight)
        b = metric(fixed[..., keep], moving[..., keep], weight[:, keep])
        assert torch.allclose(a, b, atol=1e-6), name


def test_metrics_batch_items_are_independent_and_channels_add(volume_and_points):
    vol, points = volume_and_points
    n = points.shape[0]
    f = _sample(vol, points)
    m1 = _sample(vol, points + torch.tensor([0.7, 0, 0], dtype=torch.float64))
    m2 = _sample(vol, points + torch.tensor([0, 1.3, 0], dtype=torch.float64))
    w = torch.ones(1, n, dtype=torch.float64)
    for name, metric in POINT.items():
        batched = metric(torch.stack([f, f])[:, None], torch.stack([m1, m2])[:, None], w.expand(2, n))
        one = metric(f[None, None], m1[None, None], w)
        two = metric(f[None, None], m2[None, None], w)
        assert torch.allclose(batched, torch.cat([one, two]), atol=1e-6), name
        channels = metric(torch.stack([f, f])[None], torch.stack([m1, m2])[None], w)
        assert torch.allclose(channels, one + two, atol=1e-6), name


def test_similarity_metrics_reach_their_perfect_values():
    f = torch.rand(1, 1, 4000, dtype=torch.float64)
    w = torch.ones(1, 4000, dtype=torch.float64)
    assert float(M.mse(f, f, w)) == 0.0
    assert np.isclose(float(M.ncc(f, 0.5 * f + 0.2, w)), -1.0, atol=1e-6)
    assert float(M.correlation_ratio(f, f**2, w)) < -0.95
    assert float(M.mutual_information(f, f, w)) < float(M.mutual_information(f, f.flip(-1), w))


def _shift_dense(vol: torch.Tensor, shift: float) -> torch.Tensor:
    return torch.as_tensor(ndi.shift(vol.numpy(), (shift, 0.0, 0.0), order=1, mode="nearest"))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_lncc_dense_minimal_at_identity_and_monotone(sign):
    vol = _smooth_volume(2, (24, 24, 24))
    weight = torch.zeros(1, 1, 24, 24, 24, dtype=torch.float64)
    weight[..., 4:-4, 4:-4, 4:-4] = 1
    losses = [float(M.lncc(vol[None, None], _shift_dense(vol, sign * s)[None, None], weight))
              for s in SHIFTS]
    assert np.argmin(losses) == 0
    assert np.all(np.diff(losses) > 0), losses


def _halves():
    vol = _smooth_volume(4, (24, 24, 24))
    weight = torch.zeros(1, 1, 24, 24, 24, dtype=torch.float64)
    weight[:, :, 2:9] = 1
    weight[:, :, 15:22] = 1
    return vol, weight


def test_lncc_is_local_dense_and_two_dimensional():
    vol, weight = _halves()
    # An offset on one half only: global NCC suffers, windows away from the seam do not see it.
    moving = vol.clone()
    moving[:12] += 0.4
    same = float(M.lncc(vol[None, None], vol[None, None], weight))
    local = float(M.lncc(vol[None, None], moving[None, None], weight))
    assert np.isclose(local, same, atol=1e-9)
    flat = weight.reshape(1, -1)
    assert float(M.ncc(vol.reshape(1, 1, -1), moving.reshape(1, 1, -1), flat)) > \
        float(M.ncc(vol.reshape(1, 1, -1), vol.reshape(1, 1, -1), flat)) + 0.2
    sl = vol[:, :, 10]
    w2 = torch.ones(1, 1, 24, 24, dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    moved = torch.as_tensor(ndi.shift(sl.numpy(), (0.0, 1.0), order=1, mode="nearest"))
    loss = M.lncc(sl[None, None], (t * sl + (1 - t) * moved)[None, None], w2)
    loss.sum().backward()
    assert torch.isfinite(t.grad) and float(t.grad) < 0  # more of the aligned image is better


def test_lncc_of_identical_smooth_images_is_minus_one():
    """Known bug: the ``+ 1e-5`` in the denominator swamps local variances of [0, 1] images.

    A brain-like smooth volume scaled to [0, 1] has 5-voxel local variances of ~1e-3, so
    ``vf * vm`` (~1e-6) is far below the 1e-5 guard: measured lncc(v, v) = -0.65 here, and
    -5e-4 for ``0.1 * v``. LNCC should be -1 for identical images and independent of a
    global intensity scale.
    """
    vol = _smooth_volume(2, (24, 24, 24))[None, None]
    weight = torch.ones_like(vol)
    assert float(M.lncc(vol, vol, weight)) < -0.99
    assert np.isclose(float(M.lncc(0.1 * vol, 0.1 * vol, weight)), float(M.lncc(vol, vol, weight)),
                      atol=1e-3)


def test_bspline_histogram_matches_its_definition_and_gradient():
    """Every sample adds ``(1 - ff, ff)`` of its weight to the fixed rows and the cubic B-spline
    weights of its moving coordinate to 4 columns (values at 0 and 1 included, several batch
    items and channels); the gradient is the B-spline slopes'."""
    from niaffine.engine.metrics import bspline_joint_histogram, cubic_bspline

    bins, g = 12, torch.Generator().manual_seed(3)
    fixed = torch.rand(2, 2, 300, generator=g, dtype=torch.float64)
    moving = torch.rand(2, 2, 300, generator=g, dtype=torch.float64)
    fixed[0, 0, :3] = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    moving[0, 0, :3] = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    weight = torch.rand(2, 300, generator=g, dtype=torch.float64)
    moving.requires_grad_()
    found = bspline_joint_histogram(fixed, moving, weight, bins)

    def expected(m):
        uf = 1 + fixed * (bins - 3)
        um = 1 + m * (bins - 3)
        centres = torch.arange(bins, dtype=torch.float64)
        fixed_w = (1 - (uf[..., None] - centres).abs()).clamp_min(0)       # linear: 2 bins
        moving_w = cubic_bspline(um[..., None] - centres)                     # cubic: 4 bins
        return torch.einsum("bcni,bcnj,bn->bcij", fixed_w, moving_w, weight)

    torch.testing.assert_close(found, expected(moving))
    probe = torch.rand(2, 2, bins, bins, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((found * probe).sum(), moving)
    (want,) = torch.autograd.grad((expected(moving) * probe).sum(), moving)
    torch.testing.assert_close(grad, want)


def test_histogram_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """The scatter and gather of the joint histogram (forward and backward) run inside
    ``one_thread`` (faster than two passive OpenMP threads at every size measured), which
    gives them one CPU thread; the caller's count comes back, also when the block fails."""
    from niaffine.engine import metrics as metrics_module
    from niaffine.threads import one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        with one_thread(torch.device("cpu")):
            seen.append(torch.get_num_threads())
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_thread(torch.device("cpu")):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2

        inside = []

        @contextlib.contextmanager
        def recording(device):
            with one_thread(device):
                inside.append(torch.get_num_threads())
                yield

        monkeypatch.setattr(metrics_module, "one_thread", recording)
        moving = torch.rand(1, 1, 1000, requires_grad=True)
        metrics_module.bspline_joint_histogram(torch.rand(1, 1, 1000), moving,
                                               torch.ones(1, 1000), 16).sum().backward()
        assert inside == [1, 1]  # the forward, then the backward
        assert torch.get_num_threads() == 2 and moving.grad is not None
    finally:
        torch.set_num_threads(before)

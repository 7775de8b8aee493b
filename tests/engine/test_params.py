# SPDX-License-Identifier: Apache-2.0
"""Constrained parameter groups: exact rotations, decompositions, frozen groups, isotropic zoom."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from niaffine.engine import params as P
from niaffine.errors import InputError


def _linear(rng, ndim: int) -> np.ndarray:
    """A random proper linear map ``R @ diag(z) @ S`` (unit upper-triangular S)."""
    if ndim == 3:
        rot = Rotation.from_rotvec(rng.uniform(-1.0, 1.0, 3)).as_matrix()
    else:
        a = rng.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shear = np.eye(ndim)
    shear[np.triu_indices(ndim, 1)] = rng.uniform(-0.2, 0.2, ndim * (ndim - 1) // 2)
    return rot @ np.diag(rng.uniform(0.7, 1.4, ndim)) @ shear


@pytest.mark.parametrize("rotvec", [[1e-9, 0, 0], [0.0, 0.0, 0.0], [0.3, -1.2, 0.7], [0, np.pi, 0],
                                    [2.5, 1.0, -2.0]])
def test_rotation_matrix_is_exactly_orthogonal_and_matches_scipy(rotvec):
    r = P.rotation_matrix(torch.tensor([rotvec], dtype=torch.float64))[0].numpy()
    assert np.allclose(r.T @ r, np.eye(3), atol=1e-14)
    assert np.isclose(np.linalg.det(r), 1.0, atol=1e-14)
    assert np.allclose(r, Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-12)


def _near_half_turn(rng):
    axis = rng.normal(size=3)
    return axis / np.linalg.norm(axis) * (np.pi - 10.0 ** rng.uniform(-9, -1))


def test_numpy_rotation_vectors_match_scipy_everywhere():
    """``matrix_from_rotvec`` / ``rotvec_from_matrix`` (no scipy import in the engine) agree
    with scipy from zero to half a turn, the small and near-half-turn angles included."""
    rng = np.random.default_rng(3)
    vectors = [np.zeros(3), [1e-10, 0, 0], [0, 0, np.pi], [0, np.pi, 0], [-np.pi, 0, 0]]
    vectors += [rng.normal(size=3) * s for s in (1e-7, 1e-3, 0.5, 1.5) for _ in range(20)]
    vectors += [_near_half_turn(rng) for _ in range(40)]
    for v in vectors:
        v = np.asarray(v, dtype=float)
        expected = Rotation.from_rotvec(v).as_matrix()
        assert np.allclose(P.matrix_from_rotvec(v), expected, atol=1e-13)
        back = P.rotvec_from_matrix(expected)
        # the same rotation (a half turn's axis sign is arbitrary), angle at most pi
        assert np.allclose(Rotation.from_rotvec(back).as_matrix(), expected, atol=1e-9)
        assert np.linalg.norm(back) <= np.pi + 1e-12
        if np.linalg.norm(v) < np.pi - 1e-6:
            assert np.allclose(back, Rotation.from_matrix(expected).as_rotvec(), atol=1e-9)


def test_six_dof_stays_rigid_after_optimisation_steps():
    torch.manual_seed(0)
    centre = np.array([[3.0, -10.0, 20.0], [0.0, 0.0, 0.0]])
    model = P.AffineParameters(centre, np.array([60.0, 40.0]), dof=6).double()
    assert [p.requires_grad for p in (model.translation, model.rotation, model.zoom, model.shear)] == \
        [True, True, False, False]
    opt = torch.optim.Adam(model.optimised(), lr=5.0)
    target = torch.randn(2, 4, 4, dtype=torch.float64)
    for _ in range(20):
        opt.zero_grad()
        loss = ((model() - target) ** 2).sum()
        loss.backward()
        opt.step()
    matrices = model().detach().numpy()
    assert np.abs(model.groups()["rotation"].detach().numpy()).max() > 0.1  # it really moved
    for m in matrices:
        lin = m[:3, :3]
        assert np.allclose(lin.T @ lin, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(lin), 1.0, atol=1e-12)
        assert np.allclose(m[3], [0, 0, 0, 1])
    assert torch.equal(model.zoom, torch.zeros_like(model.zoom))
    assert torch.equal(model.shear, torch.zeros_like(model.shear))


@pytest.mark.parametrize("ndim", [3, 2])
def test_decompose_linear_round_trip(ndim):
    rng = np.random.default_rng(ndim)
    for _ in range(20):
        linear = _linear(rng, ndim)
        parts = P.decompose_linear(linear)
        assert np.all(parts["zoom"] > 0)
        rot = P.rotation_matrix(torch.as_tensor(parts["rotation"][None]))[0].numpy()
        shear = P.shear_matrix(torch.as_tensor(parts["shear"][None]), ndim)[0].numpy()
        assert np.allclose(rot @ np.diag(parts["zoom"]) @ shear, linear, atol=1e-10)


@pytest.mark.parametrize("ndim", [3, 2])
def test_parameters_reproduce_their_initial_matrix(ndim):
    rng = np.random.default_rng(10 + ndim)
    mats = []
    for _ in range(3):
        m = np.eye(ndim + 1)
        m[:ndim, :ndim] = _linear(rng, ndim)
        m[:ndim, ndim] = rng.uniform(-20, 20, ndim)
        mats.append(m)
    centre = rng.uniform(-30, 30, (3, ndim))
    model = P.AffineParameters(centre, np.full(3, 50.0), dof=12 if ndim == 3 else 6,
                               initial=np.stack(mats))
    assert np.allclose(model().detach().numpy(), np.stack(mats), atol=1e-10)


@pytest.mark.parametrize("linear", [np.diag([-1.0, 1.0, 1.0]), np.diag([1.0, 0.0, 1.0]),
                                    np.diag([1.0, -1.0]), np.full((3, 3), np.nan)])
def test_reflections_and_singular_maps_raise_input_error(linear):
    with pytest.raises(InputError, match="reflection"):
        P.decompose_linear(linear)
    m = np.eye(len(linear) + 1)
    m[:-1, :-1] = linear
    with pytest.raises(InputError):
        P.AffineParameters(np.zeros((1, len(linear))), np.ones(1), dof=6 if len(linear) == 2 else 12,
                           initial=m[None])


def test_seven_dof_shares_one_zoom():
    m = np.diag([1.1, 0.9, 1.3, 1.0])
    model = P.AffineParameters(np.zeros((1, 3)), np.array([50.0]), dof=7, initial=m[None])
    assert model.zoom.shape == (1, 1)
    zoom = torch.exp(model.groups()["zoom"]).detach().numpy()[0]
    assert np.allclose(zoom, np.exp(np.mean(np.log([1.1, 0.9, 1.3]))))
    sv = np.linalg.svd(model().detach().numpy()[0, :3, :3], compute_uv=False)
    assert np.allclose(sv, sv[0], atol=1e-12)


@pytest.mark.parametrize(("dof", "ndim", "groups"), [
    (3, 3, ("translation",)), (6, 3, ("translation", "rotation")),
    (7, 3, ("translation", "rotation", "zoom")), (9, 3, ("translation", "rotation", "zoom")),
    (12, 3, ("translation", "rotation", "zoom", "shear")), (2, 2, ("translation",)),
    (3, 2, ("translation", "rotation")), (4, 2, ("translation", "rotation", "zoom")),
    (6, 2, ("translation", "rotation", "zoom", "shear")),
])
def test_active_groups_per_dof(dof, ndim, groups):
    assert P.active_groups(dof, ndim) == groups
    assert P.is_isotropic_zoom(dof, ndim) == ((ndim, dof) in ((3, 7), (2, 4)))


@pytest.mark.parametrize(("dof", "ndim"), [(5, 3), (2, 3), (12, 2), (7, 2)])
def test_unsupported_dof_names_the_option(dof, ndim):
    with pytest.raises(InputError, match=f"dof={dof}"):
        P.active_groups(dof, ndim)


def test_freezing_an_unknown_group_is_an_input_error():
    with pytest.raises(InputError, match="skew"):
        P.active_groups(12, 3, frozen=("skew",))
    assert P.active_groups(12, 3, frozen=("shear", "zoom")) == ("translation", "rotation")


def _groups(rng, rotation_scale):
    t = torch.tensor(rng.normal(0, 5, (3, 3)))
    v = torch.tensor(rng.normal(0, 1, (3, 3)))
    v = v / v.norm(dim=-1, keepdim=True) * torch.tensor(rotation_scale)[:, None]
    z = torch.tensor(rng.normal(0, 0.1, (3, 3)))
    s = torch.tensor(rng.normal(0, 0.1, (3, 3)))
    c = torch.tensor(rng.normal(0, 20, (3, 3)))
    return t, v, z, s, c


@pytest.mark.parametrize("angles", [[0.0, 1e-9, 1e-5], [0.3, 1.2, 2.9], [np.pi - 1e-6, 1e-3, 0.7]])
def test_closed_form_matrix_and_gradients_match_autograd(angles):
    """The 3D matrix's closed-form forward and backward (NumPy on the CPU, torch elsewhere)
    equal autograd through the reference formulas, from zero rotation to half a turn."""
    rng = np.random.default_rng(len(angles) + int(angles[1] * 1e3))
    t, v, z, s, c = _groups(rng, angles)
    upstream = torch.tensor(rng.normal(size=(3, 4, 4)))
    leaves = [x.clone().requires_grad_(True) for x in (t, v, z, s)]
    reference = P._affine_from_groups(*leaves, c, 3)
    (reference * upstream).sum().backward()
    expected = [x.grad for x in leaves]

    fast = [x.clone().requires_grad_(True) for x in (t, v, z, s)]
    out = P._AffineMatrix3D.apply(*fast, c)
    torch.testing.assert_close(out, reference.detach(), rtol=0, atol=1e-12)
    (out * upstream).sum().backward()
    for got, want in zip((x.grad for x in fast), expected):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)

    # the torch spelling of the same formulas (what CUDA runs)
    eye = torch.eye(3, dtype=torch.float64)
    matrices, rot, zoom_shear = P._matrix_3d(t, v, z, s, c, torch, eye)
    torch.testing.assert_close(matrices, reference.detach(), rtol=0, atol=1e-12)
    grads = P._matrix_3d_backward(upstream, v, rot, zoom_shear, z, c, torch, eye)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_closed_form_matrix_passes_gradcheck():
    t, v, z, s, c = _groups(np.random.default_rng(5), [0.4, 1.0, 2.0])
    leaves = tuple(x.clone().requires_grad_(True) for x in (t, v, z, s))
    assert torch.autograd.gradcheck(lambda *g: P._AffineMatrix3D.apply(*g, c), leaves)


def test_parameters_module_uses_the_closed_form_and_keeps_frozen_groups_frozen():
    params = P.AffineParameters(np.array([[10.0, -5.0, 3.0]]), np.array([60.0]), dof=6)
    matrix = params()
    assert matrix.grad_fn is not None and "AffineMatrix3D" in type(matrix.grad_fn).__name__
    (matrix[:, :3, :].sum()).backward()
    assert params.rotation.grad is not None and params.zoom.grad is None

# SPDX-License-Identifier: Apache-2.0
"""Registration recovers known world transforms of real anatomy (MNI152 T1 at 3 mm).

Every case pushes the template through a known fixed-to-moving world matrix onto a grid of its
own (orientation, obliquity, voxel size) and registers it back with two levels (6, 3 mm) and
20k samples, about one second each on one CPU thread. Errors are mean displacements over the
brain mask of the fixed grid. Numbers measured when the thresholds were set (CPU, one thread,
engine at 5be5b48): 6 dof 0.04 mm; 7/9/12 dof 0.06-0.08 mm (0.20-0.31 mm before the
3 mm edge band of cade1df); translation only 0.22 mm: both images are point samples of the
1 mm template at different sub-voxel phases (0.65 voxel in y and z here), which biases
linear interpolation (``smoothing_mm=3`` brings it to 0.014 mm).
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from niaffine.data.geometry import make_grid, rotation_matrix, warp_to_grid
from niaffine.engine import RegistrationResult, register, register_batch
from niaffine.engine import metrics as M
from niaffine.engine.initialise import geometric_centre
from niaffine.engine.params import shear_matrix
from niaffine.errors import DeviceUnavailableError, InputError

from . import cases as C

AFFINE_MM = 0.25  # 7-12 dof at a 3 mm final level (measured 0.05-0.09 mm)
RIGID_MM = 0.35  # 3 and 6 dof (measured 0.01-0.22 mm)

RECOVERY = {
    3: {},
    6: {"voxel_size": (3.0, 2.5, 3.5), "orientation": "LPS", "oblique_deg": 10.0},
    7: {"voxel_size": 2.5},
    9: {"orientation": "LIA", "oblique_deg": 20.0},
    12: {"voxel_size": 3.5, "orientation": "LPS", "oblique_deg": -12.0},
}


@pytest.fixture(scope="module")
def fixed():
    return C.fixed_3mm()


@pytest.fixture(scope="module")
def recovered(fixed):
    """One registration per dof: ``{dof: (true, result)}``."""
    out = {}
    for dof, grid in RECOVERY.items():
        true = C.true_affine(10 + dof, dof)
        out[dof] = true, register(fixed[0], C.moving_image(true, **grid), dof=dof, **C.FAST)
    return out


@pytest.fixture(scope="module")
def affine_case():
    true = C.true_affine(5, 12)
    moving = C.moving_image(true, orientation="LPS")
    return true, moving


@pytest.mark.parametrize("dof", sorted(RECOVERY))
def test_recovers_known_transform(dof, recovered):
    """Translation, rigid and affine cases on LPS, oblique and anisotropic moving grids."""
    true, result = recovered[dof]
    err = C.error_mm(true, result.matrix)
    assert err < (RIGID_MM if dof <= 6 else AFFINE_MM), err
    assert result.dof == dof and result.matrix.shape == (4, 4)
    linear = result.matrix[:3, :3]
    if dof == 3:
        assert np.array_equal(linear, np.eye(3))
    if dof in (3, 6):
        assert np.allclose(linear.T @ linear, np.eye(3), atol=1e-12)
    if dof == 7:
        assert result.zoom[0] == result.zoom[1] == result.zoom[2]
        sv = np.linalg.svd(linear, compute_uv=False)
        assert np.allclose(sv, sv[0], atol=1e-12)
    if dof < 12:
        assert np.array_equal(result.shear, np.zeros(3))


@pytest.mark.parametrize("moving_voxel", [(2.0, 3.0, 2.5), 4.0])
def test_fixed_lps_grid_and_moving_with_other_voxel_sizes(moving_voxel):
    """Fixed on an LPS grid, moving RAS with other voxel sizes (measured 0.06-0.08 mm)."""
    fixed, _ = C.fixed_3mm(orientation="LPS")
    true = C.true_affine(1, 12)
    result = register(fixed, C.moving_image(true, voxel_size=moving_voxel), dof=12, **C.FAST)
    assert C.error_mm(true, result.matrix) < AFFINE_MM


def test_result_fields(recovered):
    true, result = recovered[12]
    assert isinstance(result, RegistrationResult)
    assert np.allclose(result.inverse @ result.matrix, np.eye(4), atol=1e-12)
    assert [lv.spacing_mm for lv in result.levels] == [6.0, 3.0]
    assert all(lv.samples > 1000 and lv.seconds >= 0 and lv.evaluations >= lv.iterations
               for lv in result.levels)
    assert result.iterations == [lv.iterations for lv in result.levels]
    assert result.final_metric == result.levels[-1].metric < 0  # negated MI
    assert result.metric == "mi" and result.device == "cpu" and result.elapsed_s > 0
    # The parameter groups rebuild the matrix: y = R Z S (x - c) + c + t.
    r = Rotation.from_rotvec(result.rotation).as_matrix()
    s = shear_matrix(torch.as_tensor(result.shear[None]), 3)[0].numpy()
    lin = r @ np.diag(result.zoom) @ s
    assert np.allclose(result.matrix[:3, :3], lin, atol=1e-10)
    assert np.allclose(result.matrix[:3, 3], result.centre + result.translation - lin @ result.centre)
    assert np.allclose(result.angles_deg, Rotation.from_rotvec(result.rotation).as_euler("xyz", degrees=True))
    facts = json.loads(json.dumps(result.to_dict()))
    assert np.allclose(facts["matrix"], result.matrix)
    assert facts["dof"] == 12 and len(facts["levels"]) == 2 and facts["metric"] == "mi"
    line = result.summary()
    assert "\n" not in line and "mi" in line and "dof 12" in line


def test_levels_finer_than_the_fixed_voxels_collapse(fixed):
    true = C.true_affine(2, 3)
    result = register(fixed[0], C.moving_image(true), dof=3, levels_mm=(6, 3, 2, 1),
                      max_samples=5000)
    assert [lv.spacing_mm for lv in result.levels] == [6.0, 3.0]
    assert C.error_mm(true, result.matrix) < RIGID_MM


def test_fixed_mask_restricts_sampling(fixed, affine_case):
    """A full brain mask recovers (0.05-0.07 mm measured); half a mask (the right hemisphere)
    keeps about half the sample points and still recovers a rigid transform."""
    true, moving = affine_case
    image, mask = fixed
    masked = register(image, moving, dof=12, fixed_mask=mask, **C.FAST)
    assert C.error_mm(true, masked.matrix) < AFFINE_MM
    half = np.asarray(mask.dataobj).copy()
    world_x = nib.affines.apply_affine(mask.affine, np.argwhere(np.ones(mask.shape)))[:, 0]
    half[(world_x <= 0).reshape(mask.shape)] = 0
    rigid_true = C.true_affine(5, 6)
    rigid_moving = C.moving_image(rigid_true)
    plain = register(image, rigid_moving, dof=6, fixed_mask=mask, levels_mm=(6.0, 3.0),
                     max_samples=None)
    res = register(image, rigid_moving, dof=6, fixed_mask=nib.Nifti1Image(half, mask.affine),
                   levels_mm=(6.0, 3.0), max_samples=None)
    for lv_half, lv_full in zip(res.levels, plain.levels):
        assert 0.3 < lv_half.samples / lv_full.samples < 0.7
    assert not np.allclose(res.matrix, plain.matrix)
    assert C.error_mm(rigid_true, res.matrix) < RIGID_MM


def _with_artefact(true, moving):
    """A bright 25 mm ball inside the moved brain, and a brain mask that leaves it out."""
    data = np.asarray(moving.dataobj).copy()
    world = nib.affines.apply_affine(moving.affine, np.argwhere(np.ones(moving.shape)))
    centre = nib.affines.apply_affine(true, C.brain_centre() + [30.0, 10.0, 10.0])
    ball = (np.linalg.norm(world - centre, axis=1) < 25.0).reshape(moving.shape)
    data[ball] = 2.0 * data.max()
    mask = np.asarray(C.moving_mask(true, moving).dataobj).copy()
    mask[ball] = 0
    return nib.Nifti1Image(data, moving.affine), nib.Nifti1Image(mask, moving.affine)


def test_moving_mask_changes_weights_and_recovers(fixed):
    """A bright ball in the moving brain, left out by the moving mask: MI recovers with the
    masks (measured 0.06-0.07 mm) and the masked problem is a different one."""
    true = C.true_affine(6, 12)
    moving, mmask = _with_artefact(true, C.moving_image(true))
    plain = register(fixed[0], moving, dof=12, **C.FAST)
    masked = register(fixed[0], moving, dof=12, moving_mask=mmask, **C.FAST)
    both = register(fixed[0], moving, dof=12, moving_mask=mmask, fixed_mask=fixed[1], **C.FAST)
    assert masked.final_metric != plain.final_metric
    assert C.error_mm(plain.matrix, masked.matrix) > 1e-3
    assert C.error_mm(true, masked.matrix) < AFFINE_MM
    assert C.error_mm(true, both.matrix) < AFFINE_MM


def test_level_problem_drops_points_outside_the_moving_mask():
    from niaffine.engine.sampling import LevelProblem, moving_grid_matrices

    affine = np.eye(4)[None]
    moving = torch.rand(1, 1, 10, 10, 10)
    mask = torch.zeros(1, 1, 10, 10, 10)
    mask[..., :5, :, :] = 1
    points = torch.tensor([[[2.0, 4.0, 4.0], [7.0, 4.0, 4.0], [20.0, 4.0, 4.0]]], dtype=torch.float64)
    problem = LevelProblem(points, torch.zeros(1, 1, 3), torch.ones(1, 3), moving, mask,
                           moving_grid_matrices(affine, (10, 10, 10)))
    values, weights = problem.warp(torch.eye(4, dtype=torch.float64)[None])
    assert weights.tolist() == [[1.0, 0.0, 0.0]]
    assert np.isclose(float(values[0, 0, 0]), float(moving[0, 0, 2, 4, 4]))
    shift = torch.eye(4, dtype=torch.float64)[None].clone()
    shift[0, 0, 3] = -5.0  # x -> x - 5: only the fixed point at x=7 lands inside the mask
    assert problem.warp(shift)[1].tolist() == [[0.0, 1.0, 0.0]]
    assert np.isclose(float(problem.overlap(shift)[0]), 1 / 3)


def test_moving_mask_cannot_be_escaped_by_the_optimiser(fixed):
    """Regression: the point metrics average over the points that land inside the moving mask
    (and field of view), so pushing every point out made MSE 0, its best value.

    Same case as above with ``metric="mse"``: 59722 mm (every sample outside the mask) before
    the overlap guard of 5be5b48, 4.6 mm after it (2.9 mm without the mask: the bright ball
    also skews the intensity normalisation, which MSE cannot absorb).
    """
    true = C.true_affine(6, 12)
    moving, mmask = _with_artefact(true, C.moving_image(true))
    res = register(fixed[0], moving, dof=12, metric="mse", moving_mask=mmask, **C.FAST)
    assert C.error_mm(true, res.matrix) < 10.0
    # Most of the fixed brain still lands inside the moving mask.
    brain = nib.affines.apply_affine(fixed[1].affine, np.argwhere(np.asarray(fixed[1].dataobj) > 0))
    vox = np.rint(nib.affines.apply_affine(np.linalg.inv(mmask.affine) @ res.matrix, brain)).astype(int)
    ok = np.all((vox >= 0) & (vox < mmask.shape), axis=1)
    inside = np.asarray(mmask.dataobj)[tuple(vox[ok].T)] > 0
    assert inside.sum() > 0.5 * len(brain)


def test_moving_mask_alone_with_centre_of_mass_init():
    """Regression: ``init="com"`` takes the moving centre of mass inside the moving mask but
    the fixed one over the whole image, so a moving mask alone shifts the start by ~30 mm.

    A clean pair, the moving mask covering the right hemisphere only: 18.7 mm error with the
    default ``com`` start before 5be5b48 (MI -0.04, a wrong minimum), 0.07 mm after it and
    with ``identity``.
    """
    image, _ = C.fixed_3mm()
    true = C.true_affine(6, 6)
    moving = C.moving_image(true)
    mask = np.asarray(C.moving_mask(true, moving).dataobj).copy()
    world = nib.affines.apply_affine(moving.affine, np.argwhere(np.ones(moving.shape)))
    centre = nib.affines.apply_affine(true, C.brain_centre())
    mask[((world - centre) @ true[:3, 0] < 0).reshape(moving.shape)] = 0
    mmask = nib.Nifti1Image(mask, moving.affine)
    start = register(image, moving, dof=6, init="identity", moving_mask=mmask, **C.FAST)
    assert C.error_mm(true, start.matrix) < RIGID_MM
    res = register(image, moving, dof=6, moving_mask=mmask, **C.FAST)
    assert C.error_mm(true, res.matrix) < RIGID_MM


def test_masks_on_another_grid_are_input_errors(fixed, affine_case):
    _, moving = affine_case
    image, mask = fixed
    other = nib.Nifti1Image(np.asarray(mask.dataobj)[:-1], mask.affine)
    with pytest.raises(InputError, match="fixed mask.*not on the grid"):
        register(image, moving, fixed_mask=other, **C.FAST)
    shifted = nib.Nifti1Image(np.asarray(mask.dataobj), mask.affine @ np.diag([1, 1, 1.0, 1]) + 0)
    shifted.affine[0, 3] += 3.0
    shifted = nib.Nifti1Image(np.asarray(mask.dataobj), shifted.affine)
    with pytest.raises(InputError, match="fixed mask"):
        register(image, moving, fixed_mask=shifted, **C.FAST)
    with pytest.raises(InputError, match="moving mask.*not on the grid"):
        register(image, moving, moving_mask=mask, **C.FAST)
    with pytest.raises(InputError, match="empty"):
        register(image, moving, fixed_mask=nib.Nifti1Image(np.zeros(mask.shape, np.uint8),
                                                           mask.affine), **C.FAST)


def _start(fixed_img, moving_img, init):
    """The starting matrix of an ``init``: every group frozen, so nothing moves."""
    res = register(fixed_img, moving_img, dof=6, frozen=("translation", "rotation"), init=init,
                   levels_mm=(6.0,), max_samples=2000)
    assert res.iterations == [0]
    return res.matrix


def test_init_starting_points(fixed):
    true = C.about_centre(np.eye(3), (25.0, -30.0, 18.0))
    moving = C.moving_image(true, extent_mm=(240, 250, 230))
    image = fixed[0]
    assert np.array_equal(_start(image, moving, "identity"), np.eye(4))
    geo = _start(image, moving, "geometric")
    expected = geometric_centre(moving.shape, moving.affine) - geometric_centre(image.shape, image.affine)
    assert np.allclose(geo[:3, 3], expected) and np.array_equal(geo[:3, :3], np.eye(3))
    com = _start(image, moving, "com")

    def centre_of_mass(img):
        return nib.affines.apply_affine(img.affine, ndi.center_of_mass(np.asarray(img.dataobj)))

    # Centres of mass of the smoothed, normalised coarse level: within 2 mm of numpy's.
    assert np.allclose(com[:3, 3], centre_of_mass(moving) - centre_of_mass(image), atol=2.0)
    assert np.allclose(com[:3, 3], true[:3, 3], atol=2.0)
    for init in ("identity", "geometric", "com"):
        res = register(image, moving, dof=6, init=init, **C.FAST)
        assert C.error_mm(true, res.matrix) < RIGID_MM, init


def test_initial_matrix_at_the_truth_stays_there(fixed, affine_case):
    true, moving = affine_case
    res = register(fixed[0], moving, dof=12, initial_matrix=true, init="identity", **C.FAST)
    assert C.error_mm(true, res.matrix) < AFFINE_MM
    # Frozen everything: the initial matrix comes back unchanged.
    rigid = C.true_affine(3, 6)
    held = register(fixed[0], C.moving_image(rigid), dof=6, initial_matrix=rigid,
                    frozen=("translation", "rotation"), levels_mm=(6.0,), max_samples=2000)
    assert np.allclose(held.matrix, rigid, atol=1e-10)
    with pytest.raises(InputError, match="4x4"):
        register(fixed[0], moving, initial_matrix=np.eye(3), **C.FAST)


def test_frozen_groups_keep_their_initial_values(fixed):
    true = C.true_affine(4, 6)
    start = true.copy()
    start[:3, 3] += (4.0, -3.0, 2.0)  # wrong translation, right rotation
    moving = C.moving_image(true)
    res = register(fixed[0], moving, dof=6, initial_matrix=start, frozen=("rotation",), **C.FAST)
    assert np.allclose(res.matrix[:3, :3], true[:3, :3], atol=1e-12)
    assert C.error_mm(true, res.matrix) < RIGID_MM  # translation was optimised
    affine = register(fixed[0], moving, dof=12, frozen=("zoom", "shear"), **C.FAST)
    assert np.array_equal(affine.zoom, np.ones(3)) and np.array_equal(affine.shear, np.zeros(3))
    lin = affine.matrix[:3, :3]
    assert np.allclose(lin.T @ lin, np.eye(3), atol=1e-12)


def test_rotation_search_recovers_a_large_rotation(fixed):
    """60 degrees about y then 30 about z (66 degrees in all): plain optimisation from the
    centre-of-mass start lands in a wrong minimum (measured 43.8 mm; single-axis 60 degree
    rotations are recovered without the search, 0.09-0.14 mm), the search recovers it
    (0.03 mm)."""
    true = C.about_centre(rotation_matrix(np.deg2rad([0.0, 60.0, 30.0])), (4.0, -3.0, 2.0))
    moving = C.moving_image(true, extent_mm=(230, 230, 230))
    options = {"dof": 6, "levels_mm": (8.0, 4.0), "max_samples": 20_000}
    searched = register(fixed[0], moving, rotation_search=True, **options)
    assert C.error_mm(true, searched.matrix) < 0.3
    assert np.allclose(searched.matrix[:3, :3], true[:3, :3], atol=0.01)


def test_auto_search_probe_detects_a_wrong_basin(fixed):
    """``rotation_search="auto"`` searches only when a 45/90 degree turn of the coarse answer
    lowers the loss: not at the right answer, but from one 90 degrees off."""
    from niaffine.engine.params import AffineParameters
    from niaffine.engine.pyramid import build_pyramid
    from niaffine.engine.register import _level_problem, _probe_beats

    img = fixed[0]
    data = torch.from_numpy(np.asarray(img.dataobj, dtype=np.float32))[None, None]
    data = data / data.max()
    level = build_pyramid(data, img.affine[None], [6.0])[0]
    problem = _level_problem(level, level, None, None, dense=False, edge_mm=3.0,
                             moving_extent=[level[0].shape[2:]], max_samples=20_000,
                             generators=[torch.Generator().manual_seed(0)], device="cpu")
    params = AffineParameters(C.brain_centre()[None], np.array([60.0]), dof=6)

    def objective(items=None, matrices=None):
        sub = problem if items is None else problem.subset(items)
        values, weights = sub.warp(params() if matrices is None else matrices)
        return M.mutual_information(sub.fixed_values, values, weights)

    with torch.no_grad():
        right = objective()
        assert not _probe_beats(params, objective, right)
        params.rotation.copy_(torch.tensor([[0.0, 0.0, np.pi / 2]]) * 60.0)
        assert _probe_beats(params, objective, objective())

    # the candidates are evaluated several per warp: the losses are those of one at a time
    from niaffine.engine.register import _candidate_losses

    candidates = torch.tensor([[[0.0, 0.0, a]] for a in np.linspace(-1.5, 1.5, 7)],
                              dtype=params.rotation.dtype) * 60.0
    before = params.rotation.detach().clone()
    together = _candidate_losses(params, objective, candidates, items_per_call=3)
    alone = []
    with torch.no_grad():
        for cand in candidates:
            params.rotation.copy_(cand)
            alone.append(objective())
        params.rotation.copy_(before)
    assert together.shape == (7, 1)
    torch.testing.assert_close(together, torch.stack(alone), rtol=1e-5, atol=1e-6)
    _candidate_losses(params, objective, candidates)
    assert torch.equal(params.rotation.detach(), before)


def test_large_rotation_recovered_with_default_options(fixed):
    """The 66 degree case of the search test, with the engine's defaults (auto search, rigid
    stage first)."""
    true = C.about_centre(rotation_matrix(np.deg2rad([0.0, 60.0, 30.0])), (4.0, -3.0, 2.0))
    moving = C.moving_image(true, extent_mm=(230, 230, 230))
    res = register(fixed[0], moving, dof=6, levels_mm=(8.0, 4.0), max_samples=20_000)
    assert C.error_mm(true, res.matrix) < 0.3


def test_rigid_stage_first_keeps_12_dof_out_of_a_distorted_basin(fixed):
    """65 degrees about z with a 40 mm shift: with zooms and shears free from the start the
    coarse level settled at zooms 1.13/0.85 and 49 mm error on the 1 mm template (measured);
    the coarsest level now runs rigidly first, then with all 12 dof."""
    true = C.about_centre(rotation_matrix(np.deg2rad([15.0, -6.0, -64.0])) * 0.97,
                          (20.0, -30.0, 18.0))
    moving = C.moving_image(true, extent_mm=(240, 240, 240))
    res = register(fixed[0], moving, dof=12, rotation_search=False, **C.FAST)
    assert C.error_mm(true, res.matrix) < 0.5
    first = res.levels[0]
    assert first.iterations > 0 and first.evaluations >= first.iterations


def test_multichannel_t1_and_t2(fixed):
    """T1 + T2-like channels registered jointly (measured 0.05 mm)."""
    t2, _ = C.fixed_3mm(contrast="T2")
    true = C.true_affine(7, 12)
    moving = [C.moving_image(true), C.moving_image(true, contrast="T2")]
    res = register([fixed[0], t2], moving, dof=12, **C.FAST)
    assert C.error_mm(true, res.matrix) < AFFINE_MM
    with pytest.raises(InputError, match="channels"):
        register([fixed[0], t2], moving[0], **C.FAST)
    with pytest.raises(InputError, match="share one grid"):
        register([fixed[0], moving[1]], moving, **C.FAST)


def _weighted_ncc(fixed, moving, weight):
    w = weight[:, None, :]
    fc = fixed - (fixed * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)
    mc = moving - (moving * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)
    cov = (fc * mc * w).sum(-1)
    return -(cov / torch.sqrt((fc * fc * w).sum(-1) * (mc * mc * w).sum(-1))).sum(-1)


def test_custom_metric_and_first_order_optimizer(fixed):
    """A metric callable and Adam with lr 0.5 (measured 0.09 mm)."""
    true = C.true_affine(7, 12)
    moving = C.moving_image(true)
    calls = []

    def counting_ncc(f, m, w):
        calls.append(f.shape)
        return _weighted_ncc(f, m, w)

    res = register(fixed[0], moving, dof=12, metric=counting_ncc, **C.FAST)
    assert res.metric == "counting_ncc" and calls and calls[0][:2] == (1, 1)
    assert C.error_mm(true, res.matrix) < AFFINE_MM
    adam = register(fixed[0], moving, dof=12, optimizer=torch.optim.Adam,
                    optimizer_kwargs={"lr": 0.5}, max_iterations=(60, 40), **C.FAST)
    assert adam.iterations[0] <= 60 and adam.iterations[1] <= 40
    assert C.error_mm(true, adam.matrix) < AFFINE_MM


def test_callback_reports_each_level(fixed):
    seen = []
    register(fixed[0], C.moving_image(C.true_affine(8, 3)), dof=3,
             callback=lambda level, spacing, it, loss: seen.append((level, spacing, it, loss)),
             **C.FAST)
    levels = [s[0] for s in seen]
    assert levels[0] == 0 and levels[-1] == 1 and levels == sorted(levels)
    assert {s[1] for s in seen} == set(C.FAST["levels_mm"])  # effective spacings (mm)
    assert all(np.isfinite(s[3]) for s in seen)


def test_seed_reproducibility(fixed, affine_case):
    true, moving = affine_case
    a = register(fixed[0], moving, dof=12, seed=3, **C.FAST)
    b = register(fixed[0], moving, dof=12, seed=3, **C.FAST)
    c = register(fixed[0], moving, dof=12, seed=4, **C.FAST)
    assert np.array_equal(a.matrix, b.matrix)
    assert not np.array_equal(a.matrix, c.matrix)
    assert C.error_mm(a.matrix, c.matrix) < 0.15  # measured 0.04 mm


@pytest.fixture(scope="module")
def batch_case():
    trues = [C.true_affine(s, 12) for s in (21, 22, 23)]
    return trues, [C.moving_image(t) for t in trues]


def test_register_batch_equals_one_by_one(fixed, batch_case):
    """Every voxel as a sample (no random subsets): measured differences <= 0.003 mm."""
    trues, movings = batch_case
    options = {"dof": 12, "levels_mm": (6.0, 3.0), "max_samples": None}
    batch = register_batch([fixed[0]] * 3, movings, **options)
    assert len(batch) == 3
    for true, moving, res in zip(trues, movings, batch):
        single = register(fixed[0], moving, **options)
        assert C.error_mm(single.matrix, res.matrix) < 0.01
        assert C.error_mm(true, res.matrix) < AFFINE_MM


def test_batch_item_does_not_depend_on_its_batch(fixed, batch_case):
    """Random sample subsets: each item draws the points it draws alone (one seeded generator
    per item) and is optimised on its own (own L-BFGS history, steps and convergence).

    What remains is float32 round-off of the batched evaluation (about 1e-6 of the loss),
    which the optimiser's path amplifies a little: measured 0.0003-0.002 mm at 12 dof and
    0.003-0.02 mm at 6 dof, four subjects on different grids, against ~0.06 mm accuracy.
    """
    trues, movings = batch_case
    batch = register_batch([fixed[0]] * 3, movings, dof=12, **C.FAST)
    for b in (1, 2):
        single = register(fixed[0], movings[b], dof=12, **C.FAST)
        assert C.error_mm(single.matrix, batch[b].matrix) < 0.01
        assert [lv.iterations for lv in batch[b].levels][0] == single.levels[0].iterations


def test_register_batch_argument_checks(fixed, batch_case):
    _, movings = batch_case
    with pytest.raises(InputError, match="as many"):
        register_batch([fixed[0]], movings[:2])
    with pytest.raises(InputError, match="one mask per image"):
        register_batch([fixed[0]] * 2, movings[:2], fixed_masks=[fixed[1]])
    small = nib.Nifti1Image(np.asarray(fixed[0].dataobj)[:-2], fixed[0].affine)
    with pytest.raises(InputError, match="share shape"):
        register_batch([fixed[0], small], movings[:2])


def test_batch_of_moving_images_on_different_grids_equals_one_by_one(fixed):
    """Subjects of different shapes, voxel sizes and orientations against one template.

    The moving arrays are zero-padded to one shape per level; each item keeps its own valid
    extent, so padding never counts as image. Every voxel is a sample (no random subsets).
    """
    trues = [C.true_affine(s, 12) for s in (24, 25)]
    movings = [C.moving_image(trues[0], voxel_size=(2.5, 3.0, 3.5), orientation="LPS"),
               C.moving_image(trues[1], voxel_size=3.0, orientation="RAS", oblique_deg=10.0)]
    assert movings[0].shape != movings[1].shape
    options = {"dof": 12, "levels_mm": (6.0, 3.0), "max_samples": None}
    batch = register_batch([fixed[0]] * 2, movings, **options)
    for true, moving, res in zip(trues, movings, batch):
        single = register(fixed[0], moving, **options)
        assert C.error_mm(single.matrix, res.matrix) < 0.01
        assert C.error_mm(true, res.matrix) < AFFINE_MM


# -- 2D ------------------------------------------------------------------------------------

SLICE_GRID = make_grid(shape=(100, 116, 1), voxel_size=2.0, centre=(0.0, -18.0, 10.0))


def _in_plane(dof: int) -> np.ndarray:
    """A 4x4 world matrix acting in the axial plane only (2D dof 2, 3, 4 or 6)."""
    rng = np.random.default_rng(dof)
    a = np.deg2rad(rng.uniform(-20, 20))
    lin = np.eye(2)
    if dof >= 3:
        lin = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if dof == 4:
        lin = lin * 1.08
    if dof == 6:
        lin = lin @ np.diag([1.08, 0.93]) @ np.array([[1.0, 0.05], [0.0, 1.0]])
    m = np.eye(4)
    m[:2, :2] = lin
    m[:2, 3] = np.array([0.0, -18.0]) + rng.uniform(-10, 10, 2) - lin @ [0.0, -18.0]
    return m


@pytest.fixture(scope="module")
def slice_fixed():
    img = warp_to_grid(C.source_image(), np.eye(4), SLICE_GRID, (100, 116, 1))
    mask = warp_to_grid(C._mni_1mm()[1], np.eye(4), SLICE_GRID, (100, 116, 1))
    return img, np.asarray(mask.dataobj)[..., 0] >= 0.5


@pytest.mark.parametrize("squeeze", [False, True], ids=["XY1", "XY"])
@pytest.mark.parametrize("dof", [2, 3, 4, 6])
def test_2d_slices_register(dof, squeeze, slice_fixed):
    """Single slices, shape (X, Y, 1) or (X, Y): measured 0.02-0.14 mm at 2 mm."""
    fixed, mask = slice_fixed
    true = _in_plane(dof)
    moving = warp_to_grid(C.source_image(), true, SLICE_GRID, (100, 116, 1))
    if squeeze:
        fixed = nib.Nifti1Image(np.asarray(fixed.dataobj)[..., 0], fixed.affine)
        moving = nib.Nifti1Image(np.asarray(moving.dataobj)[..., 0], moving.affine)
    res = register(fixed, moving, dof=dof, levels_mm=(8.0, 4.0, 2.0), max_samples=20_000)
    assert res.matrix.shape == (3, 3) and res.dof == dof
    true2 = true[np.ix_([0, 1, 3], [0, 1, 3])]
    world = nib.affines.apply_affine(SLICE_GRID[np.ix_([0, 1, 3], [0, 1, 3])], np.argwhere(mask))
    diff = nib.affines.apply_affine(true2, world) - nib.affines.apply_affine(res.matrix, world)
    err = np.linalg.norm(diff, axis=1).mean()
    assert err < 0.3, err
    assert res.rotation.shape == (1,) and res.zoom.shape == (2,)
    if dof == 2:
        assert np.array_equal(res.matrix[:2, :2], np.eye(2))
    if dof == 4:
        assert res.zoom[0] == res.zoom[1]
    json.dumps(res.to_dict())


def test_2d_dof_outside_the_2d_choices_is_an_input_error(slice_fixed):
    with pytest.raises(InputError, match="dof=12"):
        register(slice_fixed[0], slice_fixed[0], dof=12)
    volume, _ = C.fixed_3mm()
    with pytest.raises(InputError, match="dimensionality"):
        register(volume, slice_fixed[0], dof=6)


# -- devices -------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_raises_device_unavailable(fixed):
    with pytest.raises(DeviceUnavailableError, match="CUDA"):
        register(fixed[0], fixed[0], device="cuda")
    with pytest.raises(DeviceUnavailableError):
        register(fixed[0], fixed[0], device="cuda:1")


def test_unknown_device_is_an_input_error(fixed):
    """Known bug: ``device="gpu"`` escapes as torch's RuntimeError (a traceback in the CLI)."""
    with pytest.raises(InputError, match="gpu"):
        register(fixed[0], fixed[0], device="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(fixed, affine_case):
    true, moving = affine_case
    gpu = register(fixed[0], moving, dof=12, device="cuda", **C.FAST)
    cpu = register(fixed[0], moving, dof=12, device="cpu", **C.FAST)
    assert gpu.device.startswith("cuda")
    assert C.error_mm(true, gpu.matrix) < AFFINE_MM
    assert C.error_mm(cpu.matrix, gpu.matrix) < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_on_different_grids_equals_one_by_one(fixed):
    """The BIDS-App's --batch-size path on a GPU: subjects on their own grids, one call."""
    trues = [C.true_affine(s, 12) for s in (31, 32, 33)]
    movings = [C.moving_image(trues[0], voxel_size=(2.5, 3.0, 3.5), orientation="LPS"),
               C.moving_image(trues[1], oblique_deg=10.0), C.moving_image(trues[2])]
    batch = register_batch([fixed[0]] * 3, movings, dof=12, device="cuda", **C.FAST)
    for true, moving, res in zip(trues, movings, batch):
        single = register(fixed[0], moving, dof=12, device="cuda", **C.FAST)
        assert C.error_mm(single.matrix, res.matrix) < 0.02
        assert C.error_mm(true, res.matrix) < AFFINE_MM


def test_normalise_false_takes_the_images_as_they_are(fixed, affine_case):
    """Images already scaled by ``robust_normalise`` with ``normalise=False`` are the very
    data the default path makes of the raw images: the same answer to the last bit."""
    from niaffine.engine.volume import as_volume, robust_normalise

    _, moving = affine_case

    def scaled(img):
        vol = as_volume(img)
        return nib.Nifti1Image(robust_normalise(vol.data)[0].numpy(), vol.affine)

    default = register(fixed[0], moving, dof=12, **C.FAST)
    given = register(scaled(fixed[0]), scaled(moving), dof=12, normalise=False, **C.FAST)
    np.testing.assert_array_equal(default.matrix, given.matrix)


def test_coarse_levels_sample_fewer_points(fixed, affine_case):
    """``coarse_samples`` caps the levels before the finest; ``None`` gives them
    ``max_samples``, and a smaller ``max_samples`` caps them too."""
    _, moving = affine_case

    def samples(**extra):
        result = register(fixed[0], moving, dof=6, levels_mm=(6.0, 3.0), max_iterations=2,
                          **extra)
        return [level.samples for level in result.levels]

    assert samples(max_samples=40_000, coarse_samples=5000) == [5000, 40_000]
    coarse, finest = samples(max_samples=40_000, coarse_samples=None)
    assert coarse > 5000 and finest == 40_000  # every voxel of the 6 mm region (< 40 000)
    assert samples(max_samples=3000) == [3000, 3000]


def test_rigid_first_can_be_turned_off(fixed, affine_case):
    """The coarsest level runs rigid, then all 12 dof (its iteration count starts again);
    ``rigid_first=False`` runs it once with every degree of freedom."""
    true, moving = affine_case

    def level0_iterations(**extra):
        seen = []
        result = register(fixed[0], moving, dof=12, callback=lambda li, sp, it, loss:
                          seen.append(it) if li == 0 else None, **C.FAST, **extra)
        return seen, result

    staged, _ = level0_iterations()
    single, result = level0_iterations(rigid_first=False)
    assert any(b <= a for a, b in zip(staged, staged[1:]))  # two runs: the count restarts
    assert all(b > a for a, b in zip(single, single[1:]))
    assert C.error_mm(true, result.matrix) < AFFINE_MM


def test_small_cpu_levels_run_on_one_thread_and_the_count_is_restored():
    """Levels with few sample points run on one thread (waking passive threads costs more
    than splitting small arrays saves); large levels and CUDA keep the thread count."""
    from niaffine.engine.register import SERIAL_POINTS, _level_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _level_threads(SERIAL_POINTS - 1, torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with _level_threads(SERIAL_POINTS, torch.device("cpu")):
            assert torch.get_num_threads() == 2
        with _level_threads(10, torch.device("cuda")):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), _level_threads(10, torch.device("cpu")):
            raise RuntimeError("a failing level")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_registration_optimises_small_levels_on_one_thread(fixed):
    """``register`` runs the rule: each iteration of a level below ``SERIAL_POINTS`` sees one
    thread, one at or above it sees the caller's count, which is the caller's again after."""
    from niaffine.engine.register import SERIAL_POINTS

    true = C.true_affine(6, 6)
    seen: dict = {}

    def record(level, spacing, iteration, loss):
        seen.setdefault(level, set()).add(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = register(fixed[0], C.moving_image(true), dof=6, levels_mm=(6.0, 3.0),
                          max_samples=SERIAL_POINTS, coarse_samples=SERIAL_POINTS // 4,
                          callback=record)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    samples = [level.samples for level in result.levels]
    assert samples[0] < SERIAL_POINTS <= samples[1]
    assert seen == {0: {1}, 1: {2}}


def test_coarse_levels_stop_at_the_coarse_tolerance(fixed, monkeypatch):
    """Levels coarser than the finest use ``coarse_tolerance`` and a step tolerance of
    COARSE_STEP_FRACTION of their spacing; the finest keeps ``tolerance``/``tolerance_mm``."""
    import importlib

    R = importlib.import_module("niaffine.engine.register")

    seen = []

    class Recording(R.Optimiser):
        def __init__(self, params, **kw):
            seen.append((kw["tolerance"], kw["tolerance_mm"]))
            super().__init__(params, **kw)

    monkeypatch.setattr(R, "Optimiser", Recording)
    moving = C.moving_image(C.true_affine(3, 6))
    register(fixed[0], moving, dof=6, levels_mm=(8.0, 4.0), max_samples=5_000,
             rotation_search=False, coarse_tolerance=1e-4, tolerance=1e-6, tolerance_mm=1e-3)
    assert seen == [(1e-4, 8.0 * R.COARSE_STEP_FRACTION), (1e-6, 1e-3)]


def test_rotation_candidates_per_evaluation_shrink_with_the_image():
    """Candidates are evaluated as copies of the coarsest problem: 18 copies of a small
    level, fewer of a large one (a single 1 mm level: 64 MiB per copy), never none."""
    from types import SimpleNamespace

    from niaffine.engine.register import CANDIDATE_ITEMS, _candidates_per_call

    def problem(shape):
        moving = torch.zeros(1).expand(2, 1, *shape)  # no memory behind it
        return SimpleNamespace(moving=moving, moving_mask=None, points=torch.zeros(2, 20_000, 3))

    assert _candidates_per_call(problem((32, 32, 32))) == CANDIDATE_ITEMS
    assert _candidates_per_call(problem((256, 256, 256))) == 3
    assert _candidates_per_call(problem((1024, 1024, 512))) == 1

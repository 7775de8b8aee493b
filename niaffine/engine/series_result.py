# SPDX-License-Identifier: Apache-2.0
"""What :func:`niaffine.engine.register_series` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from . import motion as motion_maths


@dataclass(frozen=True)
class SeriesResult:
    """The outcome of a series realignment.

    Attributes
    ----------
    matrices : (T, 4, 4) array
        Reference-world to volume-world matrices (resample volume ``t`` into the reference).
    reference : nibabel.Nifti1Image
        The reference image of the last pass (3D, float32, on the reference grid).
    reference_mask : nibabel.Nifti1Image
        Where the metric was evaluated (uint8, reference grid).
    reference_source : str
        How the reference was made (``"robust median of 60 volumes realigned to volume 3"``,
        ``"volume 0"``, ``"image"``).
    reference_volume : int or None
        The volume whose frame the reference has (None for a given image).
    dof : int
    metrics : tuple of str
        Metric per volume.
    final_metric : (T,) array
        Loss at the finest level per volume (lower is better; NaN for failed volumes).
    iterations : (T,) array
        Optimiser iterations per volume, all levels and passes.
    failed : dict
        ``{volume: reason}`` for volumes that could not be registered (their matrix is the
        nearest good volume's).
    outliers : tuple of int
        Volumes whose final metric stayed far worse than the others' (flagged, kept).
    bvals : (T,) array or None
    elapsed_s : float
    device : str
    passes : int
    volumes_per_call : int
    links : dict
        DWI: how each shell is tied to the b=0 frame (``"continuity"``,
        ``"continuity (all shells)"``, ``"reference"``, ``"mi"``).
    pe_direction : (3,) array or None
        The phase-encoding direction used for rigid parts (given or estimated).
    """

    matrices: np.ndarray
    reference: nib.Nifti1Image
    reference_mask: nib.Nifti1Image
    reference_source: str
    reference_volume: int | None
    dof: int
    metrics: tuple
    final_metric: np.ndarray
    iterations: np.ndarray
    failed: dict = field(default_factory=dict)
    outliers: tuple = ()
    bvals: np.ndarray | None = None
    elapsed_s: float = 0.0
    device: str = "cpu"
    passes: int = 1
    volumes_per_call: int = 1
    links: dict = field(default_factory=dict)
    pe_direction: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.matrices)

    def parameters(self, *, pe_direction="result") -> np.ndarray:
        """``(T, 6)`` motion parameters (MCFLIRT/fMRIPrep convention, see
        :mod:`niaffine.engine.motion`): translations (mm) and rotations (rad) about the
        reference's centre. For 12-dof matrices, of their rigid part."""
        matrices = self.rigid_matrices(pe_direction=pe_direction)
        return motion_maths.motion_parameters(matrices, self.reference.affine,
                                              self.reference.shape)

    def rigid_matrices(self, *, pe_direction="result") -> np.ndarray:
        """``(T, 4, 4)`` rigid parts of the matrices, agreeing with them at the reference's
        centre (see :func:`niaffine.engine.motion.rigid_part`); read across
        ``pe_direction`` (by default the result's own, else polar parts)."""
        if isinstance(pe_direction, str):
            pe_direction = self.pe_direction
        centre = self.reference.affine @ np.r_[(np.array(self.reference.shape[:3]) - 1) / 2, 1]
        return np.stack([motion_maths.rigid_part(m, pe_direction=pe_direction,
                                                 centre_world=centre[:3])
                         for m in self.matrices])

    def framewise_displacement(self, *, pe_direction="result") -> np.ndarray:
        """Power's framewise displacement (mm, NaN for the first volume)."""
        return motion_maths.framewise_displacement(self.parameters(pe_direction=pe_direction))

    def rms_displacement(self, *, relative: bool = True, pe_direction="result") -> np.ndarray:
        """Jenkinson's RMS displacement (mm): from the previous volume or the reference."""
        return motion_maths.rms_displacement(self.rigid_matrices(pe_direction=pe_direction),
                                             self.reference.affine, self.reference.shape,
                                             relative=relative)

    def to_dict(self) -> dict:
        """JSON-safe summary (matrices, reference, per-volume metric and flags, timing)."""
        fd = self.framewise_displacement()
        return {
            "volumes": len(self),
            "matrices": self.matrices.tolist(),
            "reference_source": self.reference_source,
            "reference_volume": self.reference_volume,
            "dof": self.dof,
            "metrics": list(self.metrics),
            "final_metric": [None if not np.isfinite(v) else float(v) for v in self.final_metric],
            "iterations": self.iterations.astype(int).tolist(),
            "failed": {str(k): v for k, v in self.failed.items()},
            "outliers": list(self.outliers),
            "mean_fd_mm": float(np.nanmean(fd)) if len(self) > 1 else 0.0,
            "max_fd_mm": float(np.nanmax(fd)) if len(self) > 1 else 0.0,
            "elapsed_s": self.elapsed_s,
            "device": self.device,
            "passes": self.passes,
            "volumes_per_call": self.volumes_per_call,
            "links": dict(self.links),
        }

    def summary(self) -> str:
        """One line: volumes, dof, reference, motion, failures, time."""
        fd = self.framewise_displacement()
        motion = (f"mean FD {np.nanmean(fd):.3f} mm (max {np.nanmax(fd):.3f})" if len(self) > 1
                  else "one volume")
        flags = ""
        if self.failed:
            flags += f" | {len(self.failed)} failed volume(s): {sorted(self.failed)}"
        if self.outliers:
            flags += f" | outlier volume(s): {list(self.outliers)}"
        return (f"{len(self)} volumes, dof {self.dof}, reference {self.reference_source} | "
                f"{motion}{flags} | {self.elapsed_s:.1f} s on {self.device}")

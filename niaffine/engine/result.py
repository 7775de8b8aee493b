# SPDX-License-Identifier: Apache-2.0
"""What a registration returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LevelReport:
    """One pyramid level of one registration.

    Attributes
    ----------
    spacing_mm : float
    iterations : int
    evaluations : int
    metric : float
        Final loss value at this level (lower is better; similarity metrics are negated).
    converged : bool
    seconds : float
    samples : int
    """

    spacing_mm: float
    iterations: int
    evaluations: int
    metric: float
    converged: bool
    seconds: float
    samples: int


@dataclass(frozen=True)
class RegistrationResult:
    """The outcome of one registration.

    Attributes
    ----------
    matrix : (n + 1, n + 1) array
        World (RAS mm) matrix mapping fixed-space points to moving-space points.
    translation : (n,) array
        mm, applied after the linear part about ``centre``.
    rotation : array
        Rotation vector (axis times angle, radians); one angle in 2D.
    zoom : (n,) array
    shear : array
        Upper-triangular shear terms.
    centre : (n,) array
        World centre of rotation, zoom and shear.
    metric : str
    dof : int
    levels : list of LevelReport
    elapsed_s : float
    device : str
    """

    matrix: np.ndarray
    translation: np.ndarray
    rotation: np.ndarray
    zoom: np.ndarray
    shear: np.ndarray
    centre: np.ndarray
    metric: str
    dof: int
    levels: list = field(default_factory=list)
    elapsed_s: float = 0.0
    device: str = "cpu"

    @property
    def inverse(self) -> np.ndarray:
        """Moving-to-fixed world matrix."""
        return np.linalg.inv(self.matrix)

    @property
    def angles_deg(self) -> np.ndarray:
        """Rotation as x, y, z Euler angles in degrees (one angle in 2D)."""
        if self.rotation.shape[0] == 1:
            return np.rad2deg(self.rotation)
        from scipy.spatial.transform import Rotation

        return Rotation.from_rotvec(self.rotation).as_euler("xyz", degrees=True)

    @property
    def final_metric(self) -> float:
        """Loss value at the end of the finest level."""
        return self.levels[-1].metric if self.levels else float("nan")

    @property
    def iterations(self) -> list[int]:
        """Iterations per level, coarse to fine."""
        return [lv.iterations for lv in self.levels]

    def to_dict(self) -> dict:
        """JSON-safe summary of the result."""
        return {
            "matrix": self.matrix.tolist(),
            "translation_mm": self.translation.tolist(),
            "rotation_rotvec_rad": self.rotation.tolist(),
            "rotation_deg": self.angles_deg.tolist(),
            "zoom": self.zoom.tolist(),
            "shear": self.shear.tolist(),
            "centre_mm": self.centre.tolist(),
            "metric": self.metric,
            "final_metric": self.final_metric,
            "dof": self.dof,
            "levels": [lv.__dict__ for lv in self.levels],
            "elapsed_s": self.elapsed_s,
            "device": self.device,
        }

    def summary(self) -> str:
        """One line: metric, time, iterations per level."""
        its = "/".join(str(i) for i in self.iterations)
        return (f"{self.metric} {self.final_metric:.5f} | {self.elapsed_s:.2f} s on {self.device} | "
                f"dof {self.dof} | iterations per level {its}")

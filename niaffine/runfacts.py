# SPDX-License-Identifier: Apache-2.0
"""The run-facts JSON of a registration: one documented schema for every writer.

:mod:`niaffine.service` writes it for ``niaffine-register``, ``AffineRegistration`` and
``BatchAffineRegistration``; the BIDS-App copies some of its fields into the transform
sidecars.
"""

from __future__ import annotations

import dataclasses
import json
import platform

import numpy as np

#: Identifies the layout of the run-facts JSON (bump when a field changes meaning).
SCHEMA = "niaffine-run-facts/1"
#: Fields left out of the JSON where they are ``None`` (the others are always there).
_OPTIONAL = ("batch_size",)


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """The run-facts JSON of one registration: one schema for every writer.

    Attributes
    ----------
    schema : str
        :data:`SCHEMA`.
    source, target : str
        The moving and the fixed image (paths as given).
    fixed_mask, moving_mask : str or None
    metric : str
        The metric used (the preset's when ``auto`` was asked for).
    final_metric : float
        Loss at the end of the finest level (lower is better; similarities are negated).
    dof : int
    preset : str
    initialization : str
        ``com``, ``geometric``, ``identity`` or ``transform`` (initial transform files).
    device : str
        Where the engine ran (``cpu``, ``cuda:0``).
    seed : int
    levels_mm : list of float
        Spacings of the levels that ran, coarse to fine.
    iterations_per_level : list of int
        Optimiser iterations of each of those levels.
    iterations_total : int
        Their sum.
    converged : bool
        Whether every level stopped on its convergence test (not its iteration cap).
    elapsed_s : float
        Engine time in seconds (of the whole batch for a batched run).
    batch_size : int or None
        Registrations in the batched engine call that produced this one (``None``: not
        registered by a batch).
    mask_volume_ml : float or None
        Volume of the fixed mask (``None``: no fixed mask).
    matrix : list of list of float
        Fixed -> moving world (RAS mm) matrix.
    translation_mm, rotation_deg, rotation_rotvec_rad, zoom, shear, centre_mm : list of float
        Parameter groups of the result (:class:`niaffine.engine.RegistrationResult`).
    levels : list of dict
        Per level: ``spacing_mm``, ``iterations``, ``evaluations``, ``metric``,
        ``converged``, ``seconds``, ``samples``.
    versions : dict
        ``niaffine``, ``torch``, ``nibabel``, ``nitransforms``, ``python``.
    outputs : dict
        The files written, by :class:`OutputPaths` field.

    Notes
    -----
    The JSON holds every field (``null`` where there is no value) except ``batch_size``,
    which is left out of runs that were not batched.
    """

    source: str
    target: str
    metric: str
    final_metric: float
    dof: int
    device: str
    seed: int
    levels_mm: list
    iterations_per_level: list
    iterations_total: int
    converged: bool
    elapsed_s: float
    matrix: list
    translation_mm: list
    rotation_deg: list
    rotation_rotvec_rad: list
    zoom: list
    shear: list
    centre_mm: list
    levels: list
    versions: dict
    preset: str = "default"
    initialization: str = "com"
    fixed_mask: str | None = None
    moving_mask: str | None = None
    mask_volume_ml: float | None = None
    batch_size: int | None = None
    outputs: dict = dataclasses.field(default_factory=dict)
    schema: str = SCHEMA

    @classmethod
    def from_result(cls, result, *, source, target, options,
                    fixed_mask=None, moving_mask=None, mask_volume_ml=None, batch_size=None,
                    outputs=None) -> RunFacts:
        """The facts of an engine :class:`~niaffine.engine.RegistrationResult`.

        ``options`` is the :class:`~niaffine.service.RegistrationOptions` of the run.
        """
        summary = result.to_dict()
        levels = list(result.levels)
        return cls(
            source=str(source), target=str(target), metric=str(result.metric),
            final_metric=float(result.final_metric), dof=int(result.dof),
            device=str(result.device), seed=int(options.seed),
            levels_mm=[float(lv.spacing_mm) for lv in levels],
            iterations_per_level=[int(lv.iterations) for lv in levels],
            iterations_total=int(sum(lv.iterations for lv in levels)),
            converged=bool(levels) and all(bool(lv.converged) for lv in levels),
            elapsed_s=float(result.elapsed_s),
            matrix=np.asarray(result.matrix, dtype=float).tolist(),
            **{key: summary[key] for key in ("translation_mm", "rotation_deg",
                                             "rotation_rotvec_rad", "zoom", "shear",
                                             "centre_mm")},
            levels=[_json_safe(dataclasses.asdict(lv)) for lv in levels],
            versions=versions(), preset=options.preset,
            initialization=options.initialization,
            fixed_mask=None if fixed_mask is None else str(fixed_mask),
            moving_mask=None if moving_mask is None else str(moving_mask),
            mask_volume_ml=mask_volume_ml,
            batch_size=None if batch_size is None else int(batch_size),
            outputs=dict(outputs or {}),
        )

    def to_dict(self) -> dict:
        """JSON-safe dict, keys in field order, optional fields left out where ``None``."""
        return _json_safe({key: value for key, value in dataclasses.asdict(self).items()
                           if value is not None or key not in _OPTIONAL})

    def to_json(self) -> str:
        """The JSON text written to :attr:`OutputPaths.run_facts`."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _json_safe(value):
    """Plain Python numbers and lists in place of numpy ones."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def versions() -> dict:
    """Versions of niaffine and the libraries that shape its results.

    >>> sorted(versions())
    ['niaffine', 'nibabel', 'nitransforms', 'python', 'torch']
    """
    import nibabel
    import nitransforms
    import torch

    from niaffine import __version__

    return {"niaffine": __version__, "torch": torch.__version__, "nibabel": nibabel.__version__,
            "nitransforms": nitransforms.__version__, "python": platform.python_version()}


def mask_volume_ml(mask_img) -> float:
    """Volume of the nonzero voxels of a mask image, in millilitres.

    Examples
    --------
    >>> import nibabel as nb
    >>> mask_volume_ml(nb.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.diag([2, 2, 2, 1])))
    8.0
    """
    voxels = int(np.count_nonzero(np.asanyarray(mask_img.dataobj)))
    zooms = tuple(mask_img.header.get_zooms()[:3]) + (1.0,) * (3 - mask_img.ndim)
    return float(voxels * np.prod(zooms[:3]) / 1000.0)

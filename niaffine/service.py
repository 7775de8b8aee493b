# SPDX-License-Identifier: Apache-2.0
"""Run one registration from file paths and write its outputs and run facts.

The one place where a registration of files is run and written: ``niaffine-register``
(:mod:`niaffine.cli`), :class:`~niaffine.interfaces.registration.AffineRegistration` and
:class:`~niaffine.interfaces.batch.BatchAffineRegistration` are thin wrappers over it.

* :class:`RegistrationOptions` holds the engine settings, :class:`OutputPaths` the files to
  write (transforms in ITK, FSL or LTA format, warped images, the run-facts JSON).
* :func:`register_files` loads, registers and writes; :func:`write_outputs` writes the
  outputs of a result obtained otherwise (a batched engine call), all or nothing.
* :class:`~niaffine.runfacts.RunFacts` is the schema of the run-facts JSON, the same for
  every writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from niaffine.choices import INITS
from niaffine.errors import InputError
from niaffine.runfacts import RunFacts, mask_volume_ml

__all__ = ["INIT_MODES", "OutputPaths", "RegistrationOptions", "RunFacts", "initial_matrix",
           "mask_volume_ml", "register_files", "write_outputs"]

LOGGER = logging.getLogger("niaffine.service")

#: Initialisations the engine knows (anything else is a transform file).
INIT_MODES = INITS


@dataclasses.dataclass(frozen=True)
class RegistrationOptions:
    """Engine settings of one registration of files.

    Attributes
    ----------
    dof : int
        3, 6, 7, 9, 12 (2D: 2, 3, 4, 6).
    metric : str
        ``auto`` (the preset's), ``mi``, ``nmi``, ``cr``, ``ncc``, ``lncc``, ``mse``.
    init : {"com", "geometric", "identity"}
        Initial alignment when no initial transform is given.
    initial_transforms : tuple of str
        Transform files composed, in ANTs' ``-t`` order, into the starting fixed -> moving
        matrix (a single FSL ``.mat`` is read against the two images).
    invert_initial : tuple of bool
        Invert the matching initial transform first (empty: none inverted).
    rotation_search : bool or "auto"
    levels_mm : tuple of float or None
        Pyramid spacings (the preset's when ``None``).
    max_samples : int or None
        Metric sample points at the finest level (the preset's when ``None``).
    sampling : {"foreground", "image"} or None
        Where the metric samples the fixed image without a fixed mask (the preset's when
        ``None``; see :func:`niaffine.engine.register`).
    edge_mm : float or None
        Band at the edge of the fixed sampling region left out of the metric at the fine
        levels (the preset's when ``None``).
    frozen : tuple of str
        Parameter groups held at their initial value.
    preset : str
        :data:`niaffine.presets.PRESETS` name.
    device : str
        Torch device (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
    seed : int
    num_threads : int or None
        Torch CPU threads during the run (``None`` leaves them).
    """

    dof: int = 12
    metric: str = "auto"
    init: str = "com"
    initial_transforms: tuple[str, ...] = ()
    invert_initial: tuple[bool, ...] = ()
    rotation_search: bool | str = "auto"
    levels_mm: tuple[float, ...] | None = None
    max_samples: int | None = None
    sampling: str | None = None
    edge_mm: float | None = None
    frozen: tuple[str, ...] = ()
    preset: str = "default"
    device: str = "cpu"
    seed: int = 0
    num_threads: int | None = None

    @property
    def initialization(self) -> str:
        """``transform`` when initial transforms are given, else :attr:`init`."""
        return "transform" if self.initial_transforms else self.init

    def engine_options(self) -> dict:
        """Keyword arguments of :func:`niaffine.engine.register` (without images, masks)."""
        given = {"metric": None if self.metric == "auto" else self.metric,
                 "levels_mm": None if not self.levels_mm else tuple(map(float, self.levels_mm)),
                 "max_samples": self.max_samples, "sampling": self.sampling,
                 "edge_mm": None if self.edge_mm is None else float(self.edge_mm)}
        return {"dof": int(self.dof), "init": self.init, "preset": self.preset,
                "rotation_search": self.rotation_search, "frozen": tuple(self.frozen),
                "device": self.device, "seed": int(self.seed),
                **{k: v for k, v in given.items() if v is not None}}


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """The files one registration writes; ``None`` means not written.

    Attributes
    ----------
    transform : path
        Fixed -> moving world transform (resamples the moving image into fixed space);
        ITK text (``.txt``/``.tfm``), FSL (``.mat``) or LTA (``.lta``) by extension.
    inverse_transform : path or None
        Its inverse (moving -> fixed points).
    warped_image : path or None
        The moving image resampled onto the fixed grid.
    inverse_warped_image : path or None
        The fixed image resampled onto the moving grid.
    run_facts : path or None
        The :class:`RunFacts` JSON.
    also : tuple of (path, format)
        The same transform in more formats, e.g. ``(("x.mat", "fsl"),)``.
    order : int
        Interpolation of the warped images: 0 nearest, 1 linear, 3 cubic.
    """

    transform: Path
    inverse_transform: Path | None = None
    warped_image: Path | None = None
    inverse_warped_image: Path | None = None
    run_facts: Path | None = None
    also: tuple[tuple[Path, str], ...] = ()
    order: int = 1

    @classmethod
    def named_after(cls, moving_image, folder, *, prefix: str = "", warped=True,
                    inverse_warped=False) -> OutputPaths:
        """Outputs named after ``moving_image`` in ``folder`` (a nipype node's folder).

        ``warped``/``inverse_warped`` are ``True`` (a derived name), ``False`` or a file name
        (relative names go into ``folder``).

        Examples
        --------
        >>> paths = OutputPaths.named_after("/in/sub-01_T2w.nii.gz", "/node")
        >>> [p.name for p in (paths.transform, paths.inverse_transform, paths.warped_image,
        ...                   paths.run_facts)]
        ['sub-01_T2w_xfm.txt', 'sub-01_T2w_inverse_xfm.txt', 'sub-01_T2w_warped.nii.gz', \
'sub-01_T2w_registration.json']
        >>> OutputPaths.named_after("m.nii", "/node", inverse_warped="fixed_in_m.nii.gz"
        ...                         ).inverse_warped_image
        PosixPath('/node/fixed_in_m.nii.gz')
        """
        from niaffine.interfaces.common import split_nifti_name

        folder = Path(folder).absolute()
        stem = prefix + split_nifti_name(moving_image)[0]

        def image(wanted, suffix):
            if wanted is True:
                return folder / f"{stem}{suffix}.nii.gz"
            return folder / str(wanted) if wanted else None

        return cls(transform=folder / f"{stem}_xfm.txt",
                   inverse_transform=folder / f"{stem}_inverse_xfm.txt",
                   warped_image=image(warped, "_warped"),
                   inverse_warped_image=image(inverse_warped, "_inverse_warped"),
                   run_facts=folder / f"{stem}_registration.json")

    def check(self) -> None:
        """Raise :class:`InputError` for a transform name whose format is unknown."""
        from niaffine.io import transform_format

        for path in (self.transform, self.inverse_transform):
            if path is not None:
                transform_format(path)
        for path, fmt in self.also:
            transform_format(path, fmt)

    def written(self) -> dict[str, str]:
        """``{field: path}`` of the files this set writes."""
        out = {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)
               if f.name not in ("also", "order") and getattr(self, f.name) is not None}
        out.update({f"transform_{fmt}": str(path) for path, fmt in self.also})
        return out


def initial_matrix(options: RegistrationOptions, fixed, moving) -> np.ndarray | None:
    """The starting fixed -> moving matrix from :attr:`RegistrationOptions.initial_transforms`.

    A single file is read against the two images (FSL ``.mat`` needs them); several are
    composed in ANTs' order (see :func:`niaffine.interfaces.resampling.compose_matrices`).
    """
    from niaffine.interfaces.resampling import compose_matrices
    from niaffine.io import as_3d_matrix, load_transform

    files = list(options.initial_transforms)
    if not files:
        return None
    flags = list(options.invert_initial)
    if flags and len(flags) != len(files):
        raise InputError(f"{len(flags)} invert flags for {len(files)} initial transforms: "
                         "give one per transform")
    if len(files) == 1:
        matrices = [load_transform(files[0], reference=fixed, moving=moving)]
    else:
        matrices = [load_transform(path) for path in files]
    return compose_matrices([as_3d_matrix(m) for m in matrices], flags or None)


def _load(path, role, *, ndim=(2, 3), values=True):
    from niaffine.io import load_image

    return None if path is None else load_image(path, role=role, ndim=ndim, check_values=values)


def register_files(fixed_image, moving_image, *, outputs: OutputPaths,
                   options: RegistrationOptions = RegistrationOptions(),
                   fixed_image_mask=None, moving_image_mask=None,
                   callback: Callable | None = None):
    """Register ``moving_image`` to ``fixed_image``; write ``outputs`` and the run facts.

    Output names are checked before anything is loaded; nothing is written unless the
    registration succeeds, and then every output or none (see :func:`write_outputs`).

    Parameters
    ----------
    fixed_image, moving_image : path
        2D or 3D images.
    outputs : OutputPaths
    options : RegistrationOptions
    fixed_image_mask, moving_image_mask : path, optional
        Masks on the grids of their images.
    callback : callable, optional
        The engine's ``callback(level_index, spacing_mm, iteration, loss)`` (progress).

    Returns
    -------
    result : RegistrationResult
    facts : RunFacts

    Raises
    ------
    InputError
        A missing or unusable image, mask or initial transform, an unknown output format.
    """
    from niaffine.engine import register
    from niaffine.interfaces.common import torch_threads

    outputs.check()
    fixed = _load(fixed_image, "fixed image")
    moving = _load(moving_image, "moving image")
    fixed_mask = _load(fixed_image_mask, "fixed mask", values=False)
    moving_mask = _load(moving_image_mask, "moving mask", values=False)
    start = initial_matrix(options, fixed, moving)
    with torch_threads(options.num_threads):
        result = register(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask,
                          initial_matrix=start, callback=callback, **options.engine_options())
        LOGGER.info("%s -> %s: %s", moving_image, fixed_image, result.summary())
        facts = write_outputs(result, fixed=fixed, moving=moving, outputs=outputs,
                              facts=dict(source=moving_image, target=fixed_image,
                                         options=options, fixed_mask=fixed_image_mask,
                                         moving_mask=moving_image_mask,
                                         mask_volume_ml=None if fixed_mask is None
                                         else mask_volume_ml(fixed_mask)))
    return result, facts


def _as_3d(img):
    import nibabel as nb

    if img.ndim >= 3:
        return img
    return nb.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, img.header)


def write_outputs(result, *, fixed, moving, outputs: OutputPaths, facts: dict) -> RunFacts:
    """Write every file of ``outputs`` for ``result``, all or nothing.

    Each file is written beside its destination under a temporary name and renamed into
    place only when all of them are written, so a failure leaves no output behind (and
    earlier files of the same names untouched).

    Parameters
    ----------
    result : RegistrationResult
        ``moving`` registered to ``fixed``.
    fixed, moving : nibabel images
    outputs : OutputPaths
    facts : dict
        Keyword arguments of :meth:`RunFacts.from_result` (``source``, ``target``,
        ``options``...), without ``outputs``.

    Returns
    -------
    RunFacts
        As written to ``outputs.run_facts``.
    """
    from niaffine.engine import resample_image
    from niaffine.io import as_3d_matrix, atomic_path, save_image, save_transform, transform_format

    matrix = as_3d_matrix(result.matrix)
    run_facts = RunFacts.from_result(result, outputs=outputs.written(), **facts)
    fixed3, moving3 = _as_3d(fixed), _as_3d(moving)
    jobs = [(outputs.transform, lambda p: save_transform(
        matrix, p, reference=fixed, moving=moving, fmt=transform_format(outputs.transform)))]
    if outputs.inverse_transform is not None:
        jobs.append((outputs.inverse_transform, lambda p: save_transform(
            np.linalg.inv(matrix), p, reference=moving, moving=fixed,
            fmt=transform_format(outputs.inverse_transform))))
    for path, fmt in outputs.also:
        jobs.append((path, lambda p, fmt=fmt: save_transform(matrix, p, reference=fixed,
                                                             moving=moving, fmt=fmt)))
    for path, img, mat, grid in ((outputs.warped_image, moving3, matrix, fixed3),
                                 (outputs.inverse_warped_image, fixed3, np.linalg.inv(matrix),
                                  moving3)):
        if path is not None:
            moved = resample_image(img, mat, grid, order=outputs.order, device=result.device)
            jobs.append((path, lambda p, moved=moved: save_image(moved, p)))
    if outputs.run_facts is not None:
        jobs.append((outputs.run_facts, lambda p: Path(p).write_text(run_facts.to_json())))
    with contextlib.ExitStack() as stack:
        for path, job in jobs:
            job(stack.enter_context(atomic_path(path)))
    return run_facts


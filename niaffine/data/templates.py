# SPDX-License-Identifier: Apache-2.0
"""Real-anatomy templates that ship inside installed packages.

nilearn carries the ICBM 2009a nonlinear symmetric template (MNI152NLin2009aSym) at 1 mm:
a skull-stripped T1 and grey- and white-matter probability maps, all ``uint8`` on one
197 x 233 x 189 grid. Nothing here downloads anything: the files are located through the
import system (without importing nilearn) and read with nibabel.

Loads are cached per process; every call returns a new image that owns a private, writable
copy of the cached (read-only) array, so callers may modify what they get without corrupting
later calls.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from niaffine.masks import largest_component

LOGGER = logging.getLogger(__name__)

__all__ = [
    "TEMPLATE_KINDS",
    "template_dir",
    "template_path",
    "load_mni_t1",
    "load_mni_gm",
    "load_mni_wm",
    "load_mni_tissue",
    "load_mni_brain_mask",
]

TEMPLATE_KINDS = ("t1", "gm", "wm")
"""Template files available: skull-stripped T1, grey-matter and white-matter maps."""

_FILE_PATTERN = "mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
_TISSUE_THRESHOLD = 0.5
"""GM + WM probability (fraction of full scale) above which a voxel counts as brain."""


def template_dir() -> Path:
    """Folder of nilearn's packaged MNI152 2009a files.

    Returns
    -------
    path : pathlib.Path
        ``<site-packages>/nilearn/datasets/data``.

    Raises
    ------
    FileNotFoundError
        If nilearn is not installed or ships no such folder.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed: it provides the MNI152 template files")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not folder.is_dir():
        raise FileNotFoundError(f"nilearn template folder not found: {folder}")
    return folder


def template_path(kind: str) -> Path:
    """Path of one packaged MNI152 2009a (symmetric) file.

    Parameters
    ----------
    kind : {"t1", "gm", "wm"}
        Skull-stripped T1, grey-matter map or white-matter map.

    Returns
    -------
    path : pathlib.Path
        An existing ``.nii.gz`` file.

    Raises
    ------
    ValueError
        For an unknown ``kind``.
    FileNotFoundError
        If the file is missing from the nilearn installation.

    Examples
    --------
    >>> template_path("t1").name
    'mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz'
    """
    if kind not in TEMPLATE_KINDS:
        raise ValueError(f"unknown template kind {kind!r}; choose one of {TEMPLATE_KINDS}")
    path = template_dir() / _FILE_PATTERN.format(kind=kind)
    if not path.is_file():
        raise FileNotFoundError(f"MNI152 template file not found: {path}")
    return path


@lru_cache(maxsize=len(TEMPLATE_KINDS))
def _cached(kind: str) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read one file once; the returned arrays are read-only."""
    img = nib.load(template_path(kind))
    LOGGER.debug("loading MNI152 %s from %s", kind, img.get_filename())
    data = np.asarray(img.dataobj, dtype=np.float32)
    affine = np.array(img.affine, dtype=np.float64)
    data.flags.writeable = False
    affine.flags.writeable = False
    return data, affine, img.header.copy()


@lru_cache(maxsize=1)
def _cached_mask() -> np.ndarray:
    t1, _, _ = _cached("t1")
    gm, _, _ = _cached("gm")
    wm, _, _ = _cached("wm")
    mask = _brain_mask_from(t1, gm, wm)
    mask.flags.writeable = False
    return mask


def _brain_mask_from(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Brain mask from the skull-stripped T1 and the tissue maps (see `load_mni_brain_mask`)."""
    full_scale = max(float(gm.max()), float(wm.max()), 1.0)
    tissue = (gm + wm) >= _TISSUE_THRESHOLD * full_scale
    return largest_component((t1 > 0) | tissue).astype(np.uint8)


def _image(data: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header) -> nib.Nifti1Image:
    """New image with private copies of ``data``, ``affine`` and ``header``."""
    img = nib.Nifti1Image(np.array(data, copy=True), np.array(affine, copy=True), header.copy())
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(None, None)
    img.set_qform(img.affine, code=4)
    img.set_sform(img.affine, code=4)
    return img


def _load(kind: str) -> nib.Nifti1Image:
    data, affine, header = _cached(kind)
    return _image(data, affine, header)


def load_mni_t1() -> nib.Nifti1Image:
    """Skull-stripped MNI152 2009a symmetric T1 at 1 mm.

    Returns
    -------
    img : nibabel.Nifti1Image
        197 x 233 x 189, float32 data in [0, 255] (zero outside the brain), RAS affine.
        The array is the caller's own copy.
    """
    return _load("t1")


def load_mni_tissue(tissue: str) -> nib.Nifti1Image:
    """MNI152 2009a symmetric grey- or white-matter probability map at 1 mm.

    Parameters
    ----------
    tissue : {"gm", "wm"}

    Returns
    -------
    img : nibabel.Nifti1Image
        Float32 data in [0, 255] (255 = probability 1), on the grid of `load_mni_t1`.
    """
    if tissue not in ("gm", "wm"):
        raise ValueError(f"unknown tissue {tissue!r}; choose gm or wm")
    return _load(tissue)


def load_mni_gm() -> nib.Nifti1Image:
    """Grey-matter probability map: ``load_mni_tissue("gm")``."""
    return load_mni_tissue("gm")


def load_mni_wm() -> nib.Nifti1Image:
    """White-matter probability map: ``load_mni_tissue("wm")``."""
    return load_mni_tissue("wm")


def load_mni_brain_mask() -> nib.Nifti1Image:
    """Binary brain mask of the MNI152 2009a symmetric template.

    The packaged T1 is already skull-stripped, so the mask is its support, completed by the
    tissue maps: a voxel is brain if the T1 is non-zero or GM + WM probability is at least
    50 %; only the largest connected component is kept and every enclosed hole is filled
    (3D ``binary_fill_holes``), so the mask covers the whole brain including the ventricles
    and the sulcal CSF inside the stripped outline (about 1.89 million voxels, 1.89 L).

    Returns
    -------
    img : nibabel.Nifti1Image
        uint8 (0/1) on the grid of `load_mni_t1`; the array is the caller's own copy.
    """
    _, affine, header = _cached("t1")
    return _image(_cached_mask(), affine, header)

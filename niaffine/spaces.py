# SPDX-License-Identifier: Apache-2.0
"""Output spaces: fMRIPrep's ``--output-spaces`` grammar, and templates from TemplateFlow.

A space is one of

* a **standard** space, a TemplateFlow template identifier with optional modifiers,
  ``NAME[:res-N|:res-native][:cohort-M]`` (``MNI152NLin6Asym:res-2``), as in fMRIPrep;
* a **nonstandard** space: ``T1w`` (alias ``anat``), the subject's T1w grid, or ``func``
  (aliases ``run``, ``boldref``, ``sbref``), each series' own reference grid;
* a **file**: the path of a user template's T1w image; its label is the ``tpl-<label>``
  part of the file name, else the file stem.

:class:`Space` is what the rest of niaffine passes around; :meth:`Space.entities` gives
its BIDS entities. :func:`resolve_template` finds a standard space's T1w image and brain
mask in the local TemplateFlow home (``TEMPLATEFLOW_HOME``) and never downloads anything;
``MNI152NLin2009aSym`` is also built in (nilearn ships its 1 mm T1), so the default
works without TemplateFlow. Nothing here imports torch, and ``templateflow`` is only
imported when a standard space other than the built-in one is resolved.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

LOGGER = logging.getLogger("niaffine.spaces")

#: The template niaffine provides without TemplateFlow (nilearn ships its 1 mm T1).
BUILTIN_TEMPLATE = "MNI152NLin2009aSym"
#: ``--output-spaces`` when none is given: the T1w and the built-in template.
DEFAULT_SPACES = ("T1w", BUILTIN_TEMPLATE)
#: TemplateFlow resolutions (indices) of the built-in template: res-1 is nilearn's file,
#: res-2 is made from it (see :func:`niaffine.interfaces.templates.template_files`).
BUILTIN_RESOLUTIONS = ("1", "2")
#: Nonstandard spaces and the name niaffine uses for each (fMRIPrep accepts all of them).
NONSTANDARD = {"T1w": "T1w", "anat": "T1w", "func": "func", "run": "func",
               "boldref": "func", "sbref": "func"}
#: Surface spaces of fMRIPrep, which need FreeSurfer: refused.
SURFACE = ("fsnative", "fsaverage", "fsaverage5", "fsaverage6", "fsLR")
#: Resolution of the registration target: TemplateFlow's res-1 where available.
TARGET_RESOLUTION = "1"
_NAME = re.compile(r"^[A-Za-z0-9]+$")
_MODIFIER = re.compile(r"^(res|cohort)-([A-Za-z0-9]+)$")


class SpaceError(ValueError):
    """A space that cannot be parsed or whose template is not available (one line)."""


@dataclasses.dataclass(frozen=True)
class Space:
    """One output space.

    Attributes
    ----------
    name : str
        ``"MNI152NLin6Asym"``, ``"T1w"``, ``"func"`` or a user template's label.
    kind : {"standard", "nonstandard", "file"}
        TemplateFlow template, subject/series grid, or user template file.
    res : str or None
        TemplateFlow resolution index (``"2"``) or ``"native"``; ``None`` when not given.
    cohort : str or None
        TemplateFlow cohort.
    path : pathlib.Path or None
        Only for ``kind == "file"``: the template's T1w image.
    mask : pathlib.Path or None
        Only for ``kind == "file"``: its brain mask (``--template-mask``).

    Examples
    --------
    >>> space = parse_space("MNI152NLin6Asym:res-2")
    >>> space.entities(), space.label, space.is_template
    ({'space': 'MNI152NLin6Asym', 'res': '2'}, 'MNI152NLin6Asym:res-2', True)
    >>> parse_space("anat").entities(), parse_space("func").entities()
    ({'space': 'T1w'}, {})
    """

    name: str
    kind: str = "standard"
    res: str | None = None
    cohort: str | None = None
    path: Path | None = None
    mask: Path | None = None

    @property
    def is_template(self) -> bool:
        """Whether the space is a template (standard or file), i.e. needs normalisation."""
        return self.kind != "nonstandard"

    @property
    def label(self) -> str:
        """fMRIPrep's spelling: ``NAME[:cohort-M][:res-N]`` (the name for a file space)."""
        modifiers = [f"cohort-{self.cohort}"] * bool(self.cohort) + [f"res-{self.res}"] * bool(
            self.res)
        return ":".join([self.name, *modifiers])

    def entities(self) -> dict[str, str]:
        """BIDS entities of files in this space, only those that are set.

        ``func`` has none (fMRIPrep writes series in their own space without ``space-``);
        ``res-native`` gives no ``res`` entity (the grid is the series' own voxel size).
        """
        if self.name == "func":
            return {}
        out = {"space": self.name}
        if self.cohort:
            out["cohort"] = self.cohort
        if self.res and self.res != "native":
            out["res"] = self.res
        return out

    def output_res(self, series: bool = False) -> str:
        """Resolution of this space's output grid.

        Anatomical images go on the template's ``res-N`` grid (res-1 when not given);
        series (BOLD, DWI references) keep their own voxel size (``native``) unless a
        resolution is given, as fMRIPrep does.

        >>> space = parse_space("MNI152NLin6Asym")
        >>> space.output_res(), space.output_res(series=True)
        ('1', 'native')
        """
        if self.res and not (self.res == "native" and not series):
            return self.res
        return "native" if series else TARGET_RESOLUTION

    def __str__(self) -> str:
        return self.label


def template_label(path: Path) -> str:
    """Space label of a user template file: ``tpl-<label>`` if present, else the stem.

    Examples
    --------
    >>> template_label(Path("/x/tpl-MyTpl_res-1_T1w.nii.gz"))
    'MyTpl'
    >>> template_label(Path("/x/my_template-v2.nii"))
    'mytemplatev2'
    """
    name = Path(path).name
    match = re.search(r"(?:^|_)tpl-([A-Za-z0-9]+)", name)
    if match:
        return match.group(1)
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    label = re.sub(r"[^A-Za-z0-9]", "", stem).lower()
    return label or "custom"


def looks_like_path(text: str) -> bool:
    """Whether an ``--output-spaces`` entry is meant as a file path (not a template name).

    >>> looks_like_path("tpl.nii.gz"), looks_like_path("./mine"), looks_like_path("MNI305")
    (True, True, False)
    """
    text = str(text)
    return os.sep in text or text.endswith((".nii", ".nii.gz")) or text.startswith((".", "~"))


def parse_space(text: str, *, template_mask: str | os.PathLike | None = None) -> Space:
    """Parse one ``--output-spaces`` entry.

    Parameters
    ----------
    text : str
        ``NAME[:res-N][:cohort-M]``, ``T1w``/``anat``, ``func``/``run``/``boldref``/``sbref``,
        or the path of a template T1w image (anything with a ``/`` or a ``.nii``/``.nii.gz``
        ending; ``./name`` for a file without either).
    template_mask : path-like, optional
        Brain mask of a user template (only with a path).

    Raises
    ------
    SpaceError
        One line naming the entry.

    Examples
    --------
    >>> parse_space("MNIPediatricAsym:cohort-2:res-2")
    Space(name='MNIPediatricAsym', kind='standard', res='2', cohort='2', path=None, mask=None)
    >>> parse_space("MNI152NLin6Asym:den-10k")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    niaffine.spaces.SpaceError: output space 'MNI152NLin6Asym:den-10k': unknown modifier ...
    """
    text = str(text).strip()
    if text in NONSTANDARD:
        return Space(NONSTANDARD[text], kind="nonstandard")
    if looks_like_path(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise SpaceError(f"output space {text!r}: template file not found")
        mask = Path(template_mask).expanduser().resolve() if template_mask else None
        return Space(template_label(path), kind="file", path=path.resolve(), mask=mask)
    name, *modifiers = text.split(":")
    if name in NONSTANDARD:
        raise SpaceError(f"output space {text!r}: {name} takes no modifiers")
    if name in SURFACE:
        raise SpaceError(f"output space {text!r}: surface spaces need FreeSurfer; niaffine "
                         "writes volumes only (use a volumetric template, T1w or func)")
    if not _NAME.match(name):
        raise SpaceError(f"output space {text!r}: not a template identifier (letters and "
                         "digits), a nonstandard space (T1w, anat, func) or an existing file")
    values: dict[str, str] = {}
    for modifier in modifiers:
        match = _MODIFIER.match(modifier)
        if not match:
            raise SpaceError(f"output space {text!r}: unknown modifier {modifier!r} "
                             "(use res-N, res-native, cohort-M)")
        key, value = match.groups()
        if key == "res":
            if value != "native" and not value.isdigit():
                raise SpaceError(f"output space {text!r}: res-{value} is neither a TemplateFlow "
                                 "resolution index (res-1, res-2) nor res-native")
            value = value if value == "native" else str(int(value))
        if values.setdefault(key, value) != value:
            raise SpaceError(f"output space {text!r}: {key} given twice")
    return Space(name, res=values.get("res"), cohort=values.get("cohort"))


def parse_spaces(
    values: Iterable[str], *, template_mask: str | os.PathLike | None = None
) -> tuple[Space, ...]:
    """Parse ``--output-spaces``; ``T1w`` always comes first (niaffine always writes it).

    Duplicates (``T1w anat``) are dropped. ``template_mask`` goes to the one file space.

    Raises
    ------
    SpaceError
        For a bad entry, ``--template-mask`` without exactly one template file, or a mask
        that does not exist.

    Examples
    --------
    >>> [s.label for s in parse_spaces(["MNI152NLin6Asym:res-2", "anat", "func", "T1w"])]
    ['T1w', 'MNI152NLin6Asym:res-2', 'func']
    """
    spaces = [parse_space(value, template_mask=template_mask) for value in values]
    if not any(space.name == "T1w" for space in spaces):
        spaces.insert(0, Space("T1w", kind="nonstandard"))
    spaces.sort(key=lambda space: space.name != "T1w")  # stable: T1w first, the rest in order
    files = [space for space in spaces if space.kind == "file"]
    if template_mask is not None:
        if len({space.path for space in files}) != 1:
            raise SpaceError("--template-mask needs exactly one template file path in "
                             "--output-spaces")
        if not Path(template_mask).expanduser().is_file():
            raise SpaceError(f"template mask not found: {template_mask}")
    labels = [space.entities().get("space") for space in files]
    if len(set(labels)) != len(labels):
        raise SpaceError(f"two template files share the space label {labels[0]!r}: rename "
                         "one (tpl-<label>_...)")
    return tuple(dict.fromkeys(spaces))


def registration_targets(spaces: Iterable[Space]) -> tuple[Space, ...]:
    """One space per template to register to: the same template at two resolutions is one
    registration (the transform does not depend on the output grid).

    >>> [s.label for s in registration_targets(parse_spaces(
    ...     ["MNI152NLin6Asym:res-1", "MNI152NLin6Asym:res-2", "T1w"]))]
    ['MNI152NLin6Asym']
    """
    seen = {}
    for space in spaces:
        if space.is_template:
            key = (space.name, space.cohort, space.path)
            seen.setdefault(key, dataclasses.replace(space, res=None))
    return tuple(seen.values())


@dataclasses.dataclass(frozen=True)
class TemplateFiles:
    """Where a template at one resolution comes from.

    Attributes
    ----------
    name : str
        Template identifier (or a user template's label).
    res : str
        TemplateFlow resolution index.
    source : {"templateflow", "builtin", "file"}
        ``builtin`` files are made by :func:`niaffine.interfaces.templates.template_files`
        (``t1w`` is nilearn's 1 mm image, ``mask`` is ``None``).
    t1w : pathlib.Path
        T1w image (for ``builtin``, the 1 mm source image).
    mask : pathlib.Path or None
        Brain mask on the grid of ``t1w`` (``None``: derived from a skull-stripped image).
    """

    name: str
    res: str
    source: str
    t1w: Path
    mask: Path | None = None


def templateflow_home() -> Path:
    """``TEMPLATEFLOW_HOME``, else TemplateFlow's default (the user cache folder)."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if home:
        return Path(home).expanduser().absolute()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("templateflow")).absolute()


def fetch_command(name: str, res: str | None, cohort: str | None = None) -> str:
    """The command that downloads a template's T1w and brain mask (on a networked machine).

    >>> command = fetch_command("MNI152NLin6Asym", "2")
    >>> command.startswith('python -c "import templateflow.api as tf; '), command.count(
    ...     "tf.get('MNI152NLin6Asym', resolution=2, desc=")
    (True, 2)
    """
    extra = f", resolution={int(res)}" if res and res.isdigit() else ""
    extra += f", cohort='{cohort}'" if cohort else ""
    return (f"python -c \"import templateflow.api as tf; tf.get('{name}'{extra}, desc=None, "
            f"suffix='T1w'); tf.get('{name}'{extra}, desc='brain', suffix='mask')\"")


@functools.lru_cache(maxsize=4)
def _client(home: str):
    """A TemplateFlow client on ``home`` that cannot reach the network.

    ``home`` is a non-empty folder (checked by the caller), so the client finds its cache
    and never installs a skeleton; TemplateFlow's own import reads ``TEMPLATEFLOW_HOME``
    (set to ``home`` first), and automatic updates are off. Files are only listed here
    (:meth:`ls`), never fetched (:meth:`get` downloads what is missing).
    """
    os.environ.setdefault("TEMPLATEFLOW_HOME", home)
    os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=home, autoupdate=False, use_datalad=False)


def _real_file(path: Path) -> bool:
    """A downloaded file: TemplateFlow's skeleton holds empty placeholders."""
    return path.is_file() and path.stat().st_size > 0


def _lookup(name: str, res: str, cohort: str | None) -> TemplateFiles | None:
    """The template's T1w and brain mask at ``res`` in the TemplateFlow home, or ``None``."""
    home = templateflow_home()
    if not (home / f"tpl-{name}").is_dir():
        return None
    query = {"resolution": int(res), "extension": ".nii.gz"}
    if cohort:
        query["cohort"] = cohort
    client = _client(str(home))
    t1w = client.ls(name, desc=None, suffix="T1w", **query)
    mask = client.ls(name, desc="brain", suffix="mask", **query)
    if len(t1w) > 1 or len(mask) > 1:
        raise SpaceError(f"template {name} has several cohorts in TEMPLATEFLOW_HOME={home}: "
                         f"choose one, e.g. {name}:cohort-1")
    if not (t1w and mask and _real_file(t1w[0]) and _real_file(mask[0])):
        return None
    return TemplateFiles(name=name, res=res, source="templateflow", t1w=t1w[0], mask=mask[0])


def resolve_template(space: Space, res: str | None = None) -> TemplateFiles:
    """Find a template's T1w image and brain mask at one resolution, locally.

    Standard spaces are looked up in the TemplateFlow home (``TEMPLATEFLOW_HOME``, else
    TemplateFlow's default cache folder) with the TemplateFlow client, listing files only:
    nothing is ever downloaded. ``MNI152NLin2009aSym`` comes from TemplateFlow when there,
    else from the built-in copy (res-1 and res-2 only).

    Parameters
    ----------
    space : Space
        A template space (standard or file).
    res : str, optional
        TemplateFlow resolution index; default: the space's own, else res-1. ``native``
        means res-1 here (the output grid is derived from it).

    Returns
    -------
    TemplateFiles

    Raises
    ------
    SpaceError
        One line naming the template, the resolution and ``TEMPLATEFLOW_HOME``, and the
        command that fetches it on a machine with internet access.
    """
    if space.kind == "file":
        return TemplateFiles(name=space.name, res=res or space.res or "1", source="file",
                             t1w=space.path, mask=space.mask)
    if space.kind != "standard":
        raise SpaceError(f"{space.label} is not a template space")
    res = res or space.res or TARGET_RESOLUTION
    res = TARGET_RESOLUTION if res == "native" else res
    found = _lookup(space.name, res, space.cohort)
    if found is not None:
        return found
    if space.name == BUILTIN_TEMPLATE and not space.cohort and res in BUILTIN_RESOLUTIONS:
        from niaffine.data.templates import template_path

        return TemplateFiles(name=space.name, res=res, source="builtin", t1w=template_path("t1"))
    home = templateflow_home()
    cohort = f", cohort-{space.cohort}" if space.cohort else ""
    builtin = (f" (built in: {BUILTIN_TEMPLATE} at res-1 and res-2)"
               if space.name == BUILTIN_TEMPLATE else "")
    raise SpaceError(
        f"template {space.name} at res-{res}{cohort} is not available in "
        f"TEMPLATEFLOW_HOME={home}{builtin}; niaffine never downloads: fetch it on a machine "
        f"with internet access with {fetch_command(space.name, res, space.cohort)} and copy "
        f"{home.name}/tpl-{space.name} there")


def registration_target(space: Space) -> TemplateFiles:
    """The image a T1w is registered to for ``space``: res-1 where available, else the
    space's own resolution (e.g. only res-2 was fetched).

    Raises
    ------
    SpaceError
        When neither is available (the message names the space's own resolution).
    """
    if space.kind == "file":
        return resolve_template(space)
    try:
        return resolve_template(space, TARGET_RESOLUTION)
    except SpaceError:
        if space.output_res() == TARGET_RESOLUTION:
            raise
        return resolve_template(space, space.output_res())


def check_spaces(spaces: Iterable[Space]) -> None:
    """Resolve every template space's registration target and output grid (or raise).

    Raises
    ------
    SpaceError
        For the first template or resolution not available locally.
    """
    for space in spaces:
        if space.is_template:
            registration_target(space)
            resolve_template(space, space.output_res())

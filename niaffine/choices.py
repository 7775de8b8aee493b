# SPDX-License-Identifier: Apache-2.0
"""The one home of niaffine's choice sets: what each option may be, and its default.

The command lines (``niaffine-register``, ``niaffine-realign``, the BIDS-App), the
interfaces' traits and the workflows' checks all take their choices from here, so a choice
added to the engine appears everywhere at once. The module is pure data: it imports neither
torch nor nipype (the BIDS-App parser must not load torch), and each set names the module
that implements or owns it:

- dof: :data:`DOF_GROUPS` (the engine's parameterisation, :mod:`niaffine.engine.params`);
- metrics: :data:`METRICS` (:mod:`niaffine.engine.metrics`), :data:`SERIES_METRICS`
  (:mod:`niaffine.engine.series_passes`);
- inits, sampling regions: :data:`INITS`, :data:`SAMPLING_REGIONS` (``engine.register``);
- presets: :data:`PRESET_NAMES` (:mod:`niaffine.presets`);
- interpolations: :data:`INTERPOLATIONS` (spline orders of ``engine.resample``);
- devices: :data:`DEVICE_CHOICES` (:mod:`niaffine.devices`, the one resolver);
- modalities: :data:`DATATYPES`, :data:`MODALITIES`, :data:`SERIES_MODALITIES` (BIDS
  suffixes and their data types);
- spaces: :data:`DEFAULT_SPACES`, :data:`BUILTIN_TEMPLATES` (:mod:`niaffine.spaces`).

The engine keeps its implementations keyed by these names (tests check that both agree);
:func:`with_default` orders a set for a ``traits.Enum`` whose default is not its first value.
"""

from __future__ import annotations

from types import MappingProxyType

from niaffine.devices import DEVICE_CHOICES
from niaffine.presets import PRESETS
from niaffine.spaces import BUILTIN_TEMPLATE, DEFAULT_SPACES

__all__ = [
    "ALL_DOFS", "ANTS_INIT_CODES", "ANTS_INTERPOLATIONS", "BUILTIN_TEMPLATES", "DATATYPES",
    "DEFAULT_DOF", "DEFAULT_DOF_COREG", "DEFAULT_SPACES", "DEVICE_CHOICES", "DOFS", "DOFS_2D",
    "DOFS_TEMPLATE", "DOF_GROUPS", "INITS", "INTERPOLATIONS", "METRICS", "METRIC_CHOICES",
    "MODALITIES", "PARAMETER_GROUPS", "PRESET_NAMES", "SAMPLING_REGIONS", "SERIES_METRICS",
    "SERIES_METRIC_CHOICES", "SERIES_MODALITIES", "with_default",
]

# ------------------------------------------------------------------ degrees of freedom
#: Parameter groups of an affine transform, in the order they are freed.
PARAMETER_GROUPS = ("translation", "rotation", "zoom", "shear")
#: Parameter groups each number of degrees of freedom frees, per dimensionality (7 dof in
#: 3D and 4 in 2D share one zoom between the axes; see :mod:`niaffine.engine.params`).
DOF_GROUPS = MappingProxyType({
    3: MappingProxyType({
        3: ("translation",),
        6: ("translation", "rotation"),
        7: ("translation", "rotation", "zoom"),
        9: ("translation", "rotation", "zoom"),
        12: ("translation", "rotation", "zoom", "shear"),
    }),
    2: MappingProxyType({
        2: ("translation",),
        3: ("translation", "rotation"),
        4: ("translation", "rotation", "zoom"),
        6: ("translation", "rotation", "zoom", "shear"),
    }),
})
#: Degrees of freedom of a 3D registration: 3 translation, 6 rigid, 7 + isotropic zoom,
#: 9 + zooms, 12 + shears.
DOFS = tuple(DOF_GROUPS[3])
#: Degrees of freedom of a 2D registration.
DOFS_2D = tuple(DOF_GROUPS[2])
#: Every dof the engine accepts, 2D or 3D (``niaffine-register --dof``).
ALL_DOFS = tuple(sorted(set(DOFS) | set(DOFS_2D)))
#: Degrees of freedom of a brain-to-template normalisation (a translation alone is no
#: normalisation): the BIDS-App's ``--dof``.
DOFS_TEMPLATE = tuple(dof for dof in DOFS if dof >= 6)
#: Default dof of a registration and of a template normalisation (full affine).
DEFAULT_DOF = 12
#: Default dof of a coregistration within the subject (rigid).
DEFAULT_DOF_COREG = 6

# ------------------------------------------------------------------ metrics
#: The engine's similarity metrics (:mod:`niaffine.engine.metrics`): mean squared error,
#: global and local normalised cross-correlation, mutual information, normalised MI,
#: correlation ratio.
METRICS = ("mse", "ncc", "lncc", "mi", "nmi", "cr")
#: ``metric`` values of a registration: ``auto`` is the preset's metric.
METRIC_CHOICES = ("auto", *METRICS)
#: Metrics of a series realignment (:data:`niaffine.engine.series_passes.SERIES_METRICS`).
SERIES_METRICS = ("ncc", "mse", "mi", "nmi", "cr")
#: ``metric`` values of a series realignment: ``auto`` is NCC (MI for DWI volumes).
SERIES_METRIC_CHOICES = ("auto", *SERIES_METRICS)
#: Metric sample points per volume and level of a series realignment (a 3 mm brain has about
#: 60 000 voxels). 10 000 did as well as 15 000 on three simulated BOLD runs, but not on an
#: aliased 3.5 mm run (no point-spread function; mean 0.075-0.100 mm over four seeds against
#: 0.064-0.080) nor on a 2 mm two-shell DWI (worst point 0.437 against 0.375 mm).
SERIES_SAMPLES = 15_000

# ------------------------------------------------------------------ starting points, sampling
#: Initial alignments (:mod:`niaffine.engine.initialise`): none, image centres, centres of mass.
INITS = ("identity", "geometric", "com")
#: ANTs' ``initial_moving_transform_com`` codes and the init each means.
ANTS_INIT_CODES = MappingProxyType({0: "geometric", 1: "com", 2: "identity"})
#: Where the metric samples the fixed image without a fixed mask (``engine.register``).
SAMPLING_REGIONS = ("foreground", "image")
#: The engine's presets (:data:`niaffine.presets.PRESETS`).
PRESET_NAMES = tuple(PRESETS)

# ------------------------------------------------------------------ interpolation
#: Interpolations and their spline orders, by the command lines' names.
INTERPOLATIONS = MappingProxyType({"linear": 1, "nearest": 0, "cubic": 3})
#: ANTs' interpolation names (the interfaces' ``interpolation``) and niaffine's.
ANTS_INTERPOLATIONS = MappingProxyType(
    {"Linear": "linear", "NearestNeighbor": "nearest", "BSpline": "cubic"})

# ------------------------------------------------------------------ modalities, spaces
#: BIDS suffixes niaffine reads and the BIDS data type (folder) of each.
DATATYPES = MappingProxyType({"T1w": "anat", "T2w": "anat", "FLAIR": "anat", "PDw": "anat",
                              "bold": "func", "dwi": "dwi"})
#: BIDS suffixes of the images coregistered to the T1w (the BIDS-App's ``--modalities``).
MODALITIES = tuple(suffix for suffix in DATATYPES if suffix != "T1w")
#: The modalities that are 4D series (realigned, with a reference volume).
SERIES_MODALITIES = ("bold", "dwi")
#: Templates niaffine provides without TemplateFlow.
BUILTIN_TEMPLATES = (BUILTIN_TEMPLATE,)


def with_default(default, values) -> tuple:
    """``values`` with ``default`` first, for ``traits.Enum(*...)`` (whose default is the first).

    Examples
    --------
    >>> with_default(12, DOFS)
    (12, 3, 6, 7, 9)
    >>> with_default(None, DOFS)
    (None, 3, 6, 7, 9, 12)
    """
    if default is not None and default not in values:
        raise ValueError(f"default {default!r} is not one of {values}")
    return (default, *(value for value in values if value != default))

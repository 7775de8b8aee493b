# SPDX-License-Identifier: Apache-2.0
"""fMRIPrep-style motion confounds of a realigned series (see :mod:`niaffine.engine.motion`)."""

from __future__ import annotations

import numpy as np

from . import motion
from .series_reference import head_mask
from .series_resample import resample_series


def series_confounds(series_img, result, *, pe_direction="result", with_dvars=None) -> dict:
    """Confound columns of a series realigned by :func:`~niaffine.engine.series.register_series`.

    The six motion parameters with their derivatives and squares (24 columns),
    ``framewise_displacement``, ``rmsd`` and, for BOLD, ``dvars`` and ``std_dvars`` computed on
    the series resampled (linearly) into the reference, inside the reference's brain (its
    head mask without dilation).

    Parameters
    ----------
    series_img : nibabel image
        The 4D series that was realigned.
    result : SeriesResult
    pe_direction : (3,) array, None or "result"
        Phase-encoding direction for the rigid part of 12-dof matrices (default: the
        result's own; None: polar parts).
    with_dvars : bool, optional
        Default: for BOLD (no b-values), as DVARS across b-values measures contrast, not motion.

    Returns
    -------
    dict
        Column name to ``(T,)`` array (NaN where undefined).
    """
    params = result.parameters(pe_direction=pe_direction)
    columns = dict(
        framewise=motion.framewise_displacement(params),
        rmsd=result.rms_displacement(relative=True, pe_direction=pe_direction),
    )
    if with_dvars is None:
        with_dvars = result.bvals is None
    if with_dvars and len(result) > 1:
        realigned = resample_series(series_img, result.matrices, result.reference, order=1)
        brain = np.asanyarray(head_mask(result.reference, dilate_voxels=0).dataobj) > 0
        columns["dvars_values"], columns["std_dvars"] = motion.dvars(
            np.asanyarray(realigned.dataobj), brain)
    return motion.confound_columns(params, **columns)

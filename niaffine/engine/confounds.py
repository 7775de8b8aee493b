# SPDX-License-Identifier: Apache-2.0
"""fMRIPrep-style motion confounds of a realigned series (see :mod:`niaffine.engine.motion`)."""

from __future__ import annotations

import numpy as np

from . import motion
from .series_reference import head_mask
from .series_resample import resample_series


def series_confounds(series_img, matrices, reference_img, *, bvals=None, pe_direction=None,
                     brain_mask=None, realigned=None) -> dict:
    """Confound columns of a realigned series.

    The six motion parameters with their derivatives and squares (24 columns),
    ``framewise_displacement``, ``rmsd`` and, for BOLD, ``dvars`` and ``std_dvars`` on the
    series in the reference (resampled linearly unless ``realigned`` is given) inside the
    brain.

    Parameters
    ----------
    series_img : nibabel image
        The 4D series that was realigned.
    matrices : (T, 4, 4) array
        Reference-to-volume world matrices (12-dof ones contribute their rigid part).
    reference_img : nibabel image
        The reference (its grid defines the motion parameters' frame and centre).
    bvals : (T,) array, optional
        A DWI: no DVARS (across b-values it measures contrast, not motion).
    pe_direction : (3,) array, optional
        Phase-encoding direction for the rigid part of 12-dof matrices (else polar parts).
    brain_mask : nibabel image, optional
        On the reference grid; default: the reference's head mask without dilation.
    realigned : nibabel image, optional
        The series already on the reference grid.

    Returns
    -------
    dict
        Column name to ``(T,)`` array (NaN where undefined).
    """
    matrices = np.asarray(matrices, dtype=float)
    centre = reference_img.affine @ np.r_[(np.array(reference_img.shape[:3]) - 1) / 2, 1]
    rigid = np.stack([motion.rigid_part(m, pe_direction=pe_direction, centre_world=centre[:3])
                      for m in matrices])
    params = motion.motion_parameters(rigid, reference_img.affine, reference_img.shape)
    columns = dict(
        framewise=motion.framewise_displacement(params),
        rmsd=motion.rms_displacement(rigid, reference_img.affine, reference_img.shape),
    )
    if bvals is None and len(matrices) > 1:
        if realigned is None:
            realigned = resample_series(series_img, matrices, reference_img, order=1)
        if brain_mask is None:
            brain_mask = head_mask(reference_img, dilate_voxels=0)
        columns["dvars_values"], columns["std_dvars"] = motion.dvars(
            np.asanyarray(realigned.dataobj), np.asanyarray(brain_mask.dataobj) > 0)
    return motion.confound_columns(params, **columns)

# SPDX-License-Identifier: Apache-2.0
"""A robust 3D reference volume from a 4D BOLD or DWI series."""

from __future__ import annotations

import logging

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from .common import derived_name, load_image, node_errors

LOGGER = logging.getLogger("niaffine.interfaces.reference")


def select_volumes(
    n_volumes: int, bvals: np.ndarray | None = None, *, n_first: int = 10, b0_threshold=50.0
) -> np.ndarray:
    """Indices of the volumes a reference is built from.

    Parameters
    ----------
    n_volumes : int
        Length of the series.
    bvals : (N,) array, optional
        b-values; when given, the volumes with ``b <= b0_threshold``.
    n_first : int
        Otherwise, the first ``n_first`` volumes.
    b0_threshold : float
        Largest b-value counted as b=0 (s/mm^2).

    Examples
    --------
    >>> select_volumes(4).tolist()
    [0, 1, 2, 3]
    >>> select_volumes(30, n_first=5).tolist()
    [0, 1, 2, 3, 4]
    >>> select_volumes(5, np.array([0, 1000, 5, 1000, 2000])).tolist()
    [0, 2]
    """
    if bvals is not None:
        bvals = np.asarray(bvals, dtype=float).ravel()
        if bvals.size != n_volumes:
            raise ValueError(f"{bvals.size} b-values for {n_volumes} volumes")
        index = np.flatnonzero(bvals <= b0_threshold)
        if index.size == 0:
            raise ValueError(f"no volume with b <= {b0_threshold}")
        return index
    return np.arange(min(n_first, n_volumes))


def reference_volume(
    in_file: str,
    *,
    out_file: str | None = None,
    bvals: str | None = None,
    n_first: int = 10,
    b0_threshold: float = 50.0,
) -> tuple[str, list[int]]:
    """Write the reference volume of a series.

    The voxel-wise median of the first volumes (robust to a moving or
    non-steady-state volume), or the mean of the b=0 volumes when ``bvals`` is
    given. A 3D input is written unchanged (as float32).

    Parameters
    ----------
    in_file : str
        3D or 4D image.
    out_file : str, optional
        Output path (default: ``<stem>_ref.nii.gz`` in the working directory).
    bvals : str, optional
        FSL-style b-values file (one row or one column).
    n_first : int
        Volumes used without ``bvals``.
    b0_threshold : float
        Largest b-value counted as b=0.

    Returns
    -------
    out_file : str
        float32 3D image on the input's spatial grid.
    volumes : list of int
        Indices of the volumes used.
    """
    img = load_image(in_file, role="series", ndim=(3, 4))
    out_file = out_file or derived_name(in_file, "_ref")
    if img.ndim == 3:
        data, index = img.get_fdata(dtype=np.float32), [0]
    elif img.ndim == 4:
        values = np.loadtxt(bvals) if bvals else None
        index = select_volumes(
            img.shape[3], values, n_first=n_first, b0_threshold=b0_threshold
        ).tolist()
        series = np.asanyarray(img.dataobj)[..., index].astype(np.float32)
        data = series.mean(axis=3) if bvals else np.median(series, axis=3)
    else:
        raise ValueError(f"expected a 3D or 4D image, got shape {img.shape}")

    hdr = img.header.copy()
    hdr.set_data_shape(img.shape[:3])
    hdr.set_data_dtype(np.float32)
    hdr.set_slope_inter(1, 0)
    nb.Nifti1Image(data.astype(np.float32), img.affine, hdr).to_filename(out_file)
    LOGGER.info("reference of %s from volumes %s", in_file, index)
    return out_file, [int(i) for i in index]


class _ReferenceVolumeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D BOLD or DWI series (3D passes through)")
    in_bval = File(exists=True, desc="b-values (FSL format): reference is the mean b=0 volume")
    n_volumes = traits.Int(
        10, usedefault=True, desc="without b-values, median of this many first volumes"
    )
    b0_threshold = traits.Float(50.0, usedefault=True, desc="largest b-value counted as b=0")


class _ReferenceVolumeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="3D reference volume (float32)")
    volumes = traits.List(traits.Int, desc="indices of the volumes used")


class ReferenceVolume(SimpleInterface):
    """A robust 3D reference from a 4D BOLD or DWI series.

    Examples
    --------
    >>> ref = ReferenceVolume(n_volumes=5)
    >>> ref.inputs.b0_threshold
    50.0
    """

    input_spec = _ReferenceVolumeInputSpec
    output_spec = _ReferenceVolumeOutputSpec

    def _run_interface(self, runtime):
        bvals = self.inputs.in_bval if isdefined(self.inputs.in_bval) else None
        with node_errors("ReferenceVolume", in_file=self.inputs.in_file, in_bval=bvals):
            out_file, volumes = reference_volume(
                self.inputs.in_file,
                out_file=derived_name(self.inputs.in_file, "_ref", newpath=runtime.cwd),
                bvals=bvals,
                n_first=self.inputs.n_volumes,
                b0_threshold=self.inputs.b0_threshold,
            )
        self._results.update(out_file=out_file, volumes=volumes)
        return runtime

# SPDX-License-Identifier: Apache-2.0
"""Series realignment, motion confounds and one-interpolation resampling of series, for Nipype.

- :class:`SeriesRealignment`: head-motion (and, with b-values, eddy-current) correction with
  :func:`niaffine.engine.register_series`: one ITK affine per volume (reference points to the
  volume's, fMRIPrep's ``*_desc-hmc_xfm.txt``), the reference and its mask, rotated b-vectors.
- :class:`SeriesConfounds`: fMRIPrep's motion columns, ``framewise_displacement``, ``rmsd``,
  ``dvars``/``std_dvars`` (TSV + JSON, read by nilearn's ``load_confounds``).
- :class:`ApplySeriesTransforms`: every volume through ``[..., coreg, hmc_t]`` composed, one
  interpolation onto any grid (T1w at the series' resolution, a template), b-vectors rotated
  into the output image's frame.

Inputs follow nipype's ANTs names where the meaning is the same (``reference_image``,
``transforms``, ``interpolation``, ``random_seed``, ``num_threads``).
"""

from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from niaffine import choices
from niaffine.series_io import PE_CODES

from .common import (
    derived_name,
    device_trait,
    node_errors,
    resolve_device,
    torch_threads,
    use_gpu_trait,
)
from .resampling import INTERPOLATION_ORDER

LOGGER = logging.getLogger("niaffine.interfaces.series")


def _given(value):
    return value if isdefined(value) and value not in (None, "") else None


def realign_files(
    in_file: str,
    *,
    reference_image: str | None = None,
    ref_volume: int | None = None,
    in_mask: str | None = None,
    in_bval: str | None = None,
    in_bvec: str | None = None,
    pe_dir: str = "auto",
    dof: int | None = None,
    metric: str = "auto",
    passes: int = 2,
    device: str = "cpu",
    seed: int = 0,
    num_threads: int | None = None,
    write_realigned: bool = False,
    newpath: str | None = None,
) -> dict:
    """Realign a series file and write its outputs.

    Parameters
    ----------
    in_file : str
        4D BOLD or DWI series.
    reference_image, ref_volume
        A 3D reference image, or a volume index; neither: a robust reference.
    in_mask : str, optional
        Mask on the reference grid.
    in_bval, in_bvec : str, optional
        FSL b-values and b-vectors (a DWI).
    pe_dir : str
        Phase-encoding direction code (``auto`` finds it from the transforms).
    dof, metric, passes, device, seed, num_threads
        See :func:`niaffine.engine.register_series`.
    write_realigned : bool
        Also write the series resampled onto the reference (linear).
    newpath : str, optional
        Output folder (default: the working directory).

    Returns
    -------
    dict
        ``transforms`` (ITK array), ``reference``, ``mask``, ``realigned`` (or None),
        ``bvec`` (rotated, reference frame; or None), ``run_facts`` (JSON), ``result``.
    """
    from niaffine.engine import register_series
    from niaffine.engine.motion import rotate_bvecs
    from niaffine.engine.series_resample import resample_series
    from niaffine.io import load_image, save_image
    from niaffine.series_io import (
        load_series,
        phase_encoding_direction,
        read_bvals,
        read_bvecs,
        save_transform_array,
        write_bvecs,
    )

    series = load_series(in_file)
    n_volumes = series.shape[3]
    bvals = read_bvals(in_bval, n_volumes) if in_bval else None
    bvecs = read_bvecs(in_bvec, n_volumes, bvals) if in_bvec and bvals is not None else None
    reference = ref_volume
    if reference_image:
        reference = load_image(reference_image, role="reference image", ndim=(3,))
    mask = load_image(in_mask, role="mask", ndim=(3,), check_values=False) if in_mask else None
    with torch_threads(num_threads):
        result = register_series(
            series, reference=reference, mask=mask, dof=dof, metric=metric, bvals=bvals,
            bvecs=bvecs, pe_direction=phase_encoding_direction(series, pe_dir), passes=passes,
            device=device, seed=seed)
        realigned = None
        if write_realigned:
            realigned = derived_name(in_file, "_hmc", newpath=newpath)
            save_image(resample_series(series, result.matrices, result.reference, order=1,
                                       device=device), realigned)
    LOGGER.info("%s: %s", in_file, result.summary())
    out = {
        "transforms": str(save_transform_array(result.matrices,
                                               derived_name(in_file, "_hmc_xfm", ".txt", newpath))),
        "reference": str(save_image(result.reference, derived_name(in_file, "_hmcref", newpath=newpath))),
        "mask": str(save_image(result.reference_mask,
                               derived_name(in_file, "_hmcref_mask", newpath=newpath))),
        "realigned": realigned, "bvec": None, "result": result,
    }
    if bvecs is not None:
        rotated = rotate_bvecs(bvecs, result.matrices, series_affine=series.affine,
                               output_affine=result.reference.affine, bvals=bvals,
                               pe_direction=result.pe_direction)
        out["bvec"] = str(write_bvecs(rotated, derived_name(in_file, "_hmc", ".bvec", newpath)))
    facts = result.to_dict() | {"source": str(in_file), "pe_direction": None if
                                result.pe_direction is None else result.pe_direction.tolist()}
    out["run_facts"] = derived_name(in_file, "_hmc", ".json", newpath)
    with open(out["run_facts"], "w", encoding="utf-8") as stream:
        json.dump(facts, stream, indent=2)
    return out


class _SeriesRealignmentInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D BOLD or DWI series")
    reference_image = File(exists=True, xor=["ref_volume"],
                           desc="3D reference (any grid) instead of a robust one")
    ref_volume = traits.Int(xor=["reference_image"], desc="use this volume as the reference")
    in_mask = File(exists=True, desc="mask on the reference grid: metric evaluated inside")
    in_bval = File(exists=True, desc="FSL b-values: the series is a DWI")
    in_bvec = File(exists=True, requires=["in_bval"], desc="FSL b-vectors (rotated copy out)")
    pe_dir = traits.Enum(*PE_CODES, usedefault=True,
                         desc="phase-encoding direction (BIDS code) or auto")
    dof = traits.Enum(*choices.with_default(None, choices.DOFS), usedefault=True,
                      desc="degrees of freedom (None: 6 for BOLD, 12 for DWI)")
    metric = traits.Enum(*choices.SERIES_METRIC_CHOICES, usedefault=True,
                         desc="similarity (auto: NCC, MI for diffusion-weighted volumes)")
    passes = traits.Enum(2, 1, usedefault=True, desc="passes with a robust reference")
    write_realigned = traits.Bool(False, usedefault=True,
                                  desc="also write the series resampled onto the reference")
    random_seed = traits.Int(0, usedefault=True, desc="random seed")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch CPU threads")
    device = device_trait()
    use_gpu = use_gpu_trait()


class _SeriesRealignmentOutputSpec(TraitedSpec):
    out_transforms = File(exists=True, desc="ITK text, one affine per volume: reference points "
                          "to the volume's (resamples each volume into the reference)")
    out_reference = File(exists=True, desc="the reference (3D)")
    out_mask = File(exists=True, desc="where the metric was evaluated (reference grid)")
    out_file = File(desc="the series on the reference grid (write_realigned)")
    out_bvec = File(desc="b-vectors rotated by each volume's head rotation (reference frame)")
    run_facts = File(exists=True, desc="JSON: per-volume metric, flags, motion, timing")
    mean_fd = traits.Float(desc="mean framewise displacement (mm)")
    max_fd = traits.Float(desc="largest framewise displacement (mm)")
    failed_volumes = traits.List(traits.Int, desc="volumes that could not be registered")
    pe_direction = traits.Either(None, traits.List(traits.Float),
                                 desc="world phase-encoding direction used (DWI)")


class SeriesRealignment(SimpleInterface):
    """Realign every volume of a series to one reference (batched engine calls).

    Examples
    --------
    >>> node = SeriesRealignment(pe_dir="j-")
    >>> node.inputs.dof, node.inputs.metric, node.inputs.use_gpu
    (None, 'auto', False)
    """

    input_spec = _SeriesRealignmentInputSpec
    output_spec = _SeriesRealignmentOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        with node_errors("SeriesRealignment", in_file=inputs.in_file,
                         reference_image=_given(inputs.reference_image),
                         in_mask=_given(inputs.in_mask), in_bval=_given(inputs.in_bval),
                         in_bvec=_given(inputs.in_bvec)):
            out = realign_files(
                inputs.in_file, reference_image=_given(inputs.reference_image),
                ref_volume=_given(inputs.ref_volume), in_mask=_given(inputs.in_mask),
                in_bval=_given(inputs.in_bval), in_bvec=_given(inputs.in_bvec),
                pe_dir=inputs.pe_dir, dof=inputs.dof, metric=inputs.metric,
                passes=inputs.passes, device=resolve_device(inputs.device, inputs.use_gpu),
                seed=inputs.random_seed, num_threads=inputs.num_threads,
                write_realigned=inputs.write_realigned, newpath=runtime.cwd)
        result = out["result"]
        facts = result.to_dict()
        self._results.update(
            out_transforms=out["transforms"], out_reference=out["reference"],
            out_mask=out["mask"], run_facts=out["run_facts"], mean_fd=facts["mean_fd_mm"],
            max_fd=facts["max_fd_mm"], failed_volumes=sorted(result.failed),
            pe_direction=None if result.pe_direction is None else result.pe_direction.tolist(),
        )
        for key, name in (("realigned", "out_file"), ("bvec", "out_bvec")):
            if out[key]:
                self._results[name] = out[key]
        return runtime


def confounds_files(in_file: str, transforms: str, reference_image: str, *,
                    in_bval: str | None = None, brain_mask: str | None = None,
                    realigned: str | None = None, pe_direction=None,
                    out_file: str | None = None) -> tuple[str, str]:
    """Write fMRIPrep's motion confounds of a realigned series (TSV and JSON sidecar).

    Returns
    -------
    (tsv, json) paths
    """
    from niaffine.engine.confounds import series_confounds
    from niaffine.io import load_image
    from niaffine.series_io import load_series, load_transform_array, read_bvals, write_confounds

    series = load_series(in_file)
    matrices = load_transform_array(transforms, series.shape[3])
    reference = load_image(reference_image, role="reference image", ndim=(3,))
    columns = series_confounds(
        series, matrices, reference,
        bvals=read_bvals(in_bval, series.shape[3]) if in_bval else None,
        pe_direction=None if pe_direction is None else np.asarray(pe_direction, dtype=float),
        brain_mask=load_image(brain_mask, role="brain mask", check_values=False)
        if brain_mask else None,
        realigned=nib.load(realigned) if realigned else None)
    out_file = out_file or derived_name(in_file, "_desc-confounds_timeseries", ".tsv")
    tsv, sidecar = write_confounds(columns, out_file)
    return str(tsv), str(sidecar)


class _SeriesConfoundsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the 4D series that was realigned")
    transforms = File(exists=True, mandatory=True, desc="its per-volume ITK transforms")
    reference_image = File(exists=True, mandatory=True, desc="the realignment's reference")
    brain_mask = File(exists=True, desc="brain mask on the reference grid (for DVARS)")
    realigned = File(exists=True, desc="the series on the reference grid (saves a resampling)")
    in_bval = File(exists=True, desc="b-values: a DWI (no DVARS)")
    pe_direction = traits.Either(None, traits.List(traits.Float), default=None, usedefault=True,
                                 desc="world phase-encoding direction for 12-dof transforms")


class _SeriesConfoundsOutputSpec(TraitedSpec):
    confounds_file = File(exists=True, desc="*_desc-confounds_timeseries.tsv")
    confounds_metadata = File(exists=True, desc="its JSON sidecar")


class SeriesConfounds(SimpleInterface):
    """fMRIPrep-compatible motion confounds of a realigned series.

    Examples
    --------
    >>> SeriesConfounds().inputs.pe_direction is None
    True
    """

    input_spec = _SeriesConfoundsInputSpec
    output_spec = _SeriesConfoundsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        with node_errors("SeriesConfounds", in_file=inputs.in_file, transforms=inputs.transforms,
                         reference_image=inputs.reference_image):
            tsv, sidecar = confounds_files(
                inputs.in_file, inputs.transforms, inputs.reference_image,
                in_bval=_given(inputs.in_bval), brain_mask=_given(inputs.brain_mask),
                realigned=_given(inputs.realigned), pe_direction=inputs.pe_direction,
                out_file=derived_name(inputs.in_file, "_desc-confounds_timeseries", ".tsv",
                                      runtime.cwd))
        self._results.update(confounds_file=tsv, confounds_metadata=sidecar)
        return runtime


def apply_series_transforms(
    in_file: str,
    reference_image: str,
    hmc_transforms: str,
    transforms=(),
    *,
    invert_transform_flags=None,
    voxel_size=None,
    interpolation: str = "Linear",
    default_value: float = 0.0,
    in_bvec: str | None = None,
    in_bval: str | None = None,
    pe_direction=None,
    out_file: str | None = None,
    device: str = "cpu",
    num_threads: int | None = None,
) -> dict:
    """Resample every volume through its own composed transform, interpolating once.

    Parameters
    ----------
    in_file : str
        4D series.
    reference_image : str
        The output grid (e.g. the T1w or a template); with ``voxel_size``, its field of view
        and orientation at that resolution (fMRIPrep's native-resolution ``space-T1w``).
    hmc_transforms : str
        Per-volume ITK transforms (reference to volume), applied last.
    transforms : sequence of str
        Single affines applied before the head motion, in ANTs' order (output points go
        through the first first): ``[t1w2template_xfm, coreg_xfm]`` for a template,
        ``[coreg_xfm]`` for T1w space, none for the reference space.
    invert_transform_flags : sequence of bool, optional
    voxel_size : float or sequence of float, optional
    interpolation : {"Linear", "BSpline", "NearestNeighbor"}
    default_value : float
    in_bvec, in_bval : str, optional
        Rotate the b-vectors by each volume's whole composed rotation, into the output
        image's FSL frame.
    pe_direction : sequence of float, optional
        World phase-encoding direction of the series (rotations of 12-dof transforms).
    out_file : str, optional

    Returns
    -------
    dict
        ``out_file`` and ``out_bvec`` (or None).
    """
    from niaffine.engine.motion import rotate_bvecs
    from niaffine.engine.series_resample import reference_grid, resample_series, volume_matrices
    from niaffine.io import load_image, load_transform, save_image
    from niaffine.series_io import (
        load_series,
        load_transform_array,
        read_bvals,
        read_bvecs,
        write_bvecs,
    )

    from .resampling import compose_matrices

    series = load_series(in_file)
    reference = load_image(reference_image, role="reference image", ndim=(3, 4),
                           check_values=False)
    if voxel_size:
        reference = reference_grid(reference, voxel_size)
    motion = load_transform_array(hmc_transforms, series.shape[3])
    before = compose_matrices([load_transform(p) for p in transforms], invert_transform_flags)
    matrices = volume_matrices(motion, [before])
    out_file = out_file or derived_name(in_file, "_resampled")
    with torch_threads(num_threads):
        moved = resample_series(series, matrices, reference,
                                order=INTERPOLATION_ORDER[interpolation],
                                fill=float(default_value), device=device)
    save_image(moved, out_file)
    out = {"out_file": out_file, "out_bvec": None}
    if in_bvec:
        bvals = read_bvals(in_bval, series.shape[3]) if in_bval else None
        rotated = rotate_bvecs(read_bvecs(in_bvec, series.shape[3], bvals), matrices,
                               series_affine=series.affine, output_affine=moved.affine,
                               bvals=bvals, pe_direction=pe_direction)
        out["out_bvec"] = str(write_bvecs(rotated, os.path.splitext(
            out_file[:-3] if out_file.endswith(".gz") else out_file)[0] + ".bvec"))
    return out


class _ApplySeriesTransformsInputSpec(BaseInterfaceInputSpec):
    input_image = File(exists=True, mandatory=True, desc="4D series")
    reference_image = File(exists=True, mandatory=True, desc="image defining the output grid")
    hmc_transforms = File(exists=True, mandatory=True,
                          desc="per-volume ITK transforms (reference to volume), applied last")
    transforms = InputMultiObject(File(exists=True), value=[], usedefault=True,
                                  desc="single affines before the head motion, ANTs order")
    invert_transform_flags = InputMultiObject(traits.Bool(), desc="invert matching transform")
    voxel_size = traits.Either(None, traits.Float, traits.List(traits.Float), default=None,
                               usedefault=True,
                               desc="output resolution on the reference's field of view")
    interpolation = traits.Enum(*choices.ANTS_INTERPOLATIONS, usedefault=True)
    default_value = traits.Float(0.0, usedefault=True, desc="value outside the field of view")
    in_bvec = File(exists=True, desc="b-vectors to rotate into the output frame")
    in_bval = File(exists=True, desc="b-values (b=0 volumes keep zero vectors)")
    pe_direction = traits.Either(None, traits.List(traits.Float), default=None, usedefault=True,
                                 desc="world phase-encoding direction of the series")
    out_postfix = traits.Str("_resampled", usedefault=True, desc="appended to the input's name")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch CPU threads")
    device = device_trait()
    use_gpu = use_gpu_trait()


class _ApplySeriesTransformsOutputSpec(TraitedSpec):
    output_image = File(exists=True, desc="the series on the output grid")
    out_bvec = File(desc="rotated b-vectors, FSL convention in the output image's frame")


class ApplySeriesTransforms(SimpleInterface):
    """Resample a series volume by volume through composed transforms, interpolating once.

    Examples
    --------
    >>> ApplySeriesTransforms(interpolation="BSpline").inputs.transforms
    []
    """

    input_spec = _ApplySeriesTransformsInputSpec
    output_spec = _ApplySeriesTransformsOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        flags = _given(inputs.invert_transform_flags)
        with node_errors("ApplySeriesTransforms", input_image=inputs.input_image,
                         reference_image=inputs.reference_image,
                         hmc_transforms=inputs.hmc_transforms,
                         transforms=", ".join(inputs.transforms) or None):
            out = apply_series_transforms(
                inputs.input_image, inputs.reference_image, inputs.hmc_transforms,
                list(inputs.transforms), invert_transform_flags=flags,
                voxel_size=inputs.voxel_size, interpolation=inputs.interpolation,
                default_value=inputs.default_value, in_bvec=_given(inputs.in_bvec),
                in_bval=_given(inputs.in_bval), pe_direction=inputs.pe_direction,
                out_file=derived_name(inputs.input_image, inputs.out_postfix,
                                      newpath=runtime.cwd),
                device=resolve_device(inputs.device, inputs.use_gpu),
                num_threads=inputs.num_threads)
        self._results["output_image"] = out["out_file"]
        if out["out_bvec"]:
            self._results["out_bvec"] = out["out_bvec"]
        return runtime

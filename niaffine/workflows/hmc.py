# SPDX-License-Identifier: Apache-2.0
"""Head-motion correction of BOLD and DWI series, and their resampling in one interpolation.

How the pieces plug together (the BIDS-App's wiring)::

    bold_hmc_wf.outputnode.boldref  -> coreg_wf.inputnode.in_file      (init_coreg_wf)
    bold_hmc_wf.outputnode.hmc_xfm  -> series_resample_wf.inputnode.hmc_xfm
    coreg_wf.outputnode.xfm         -> series_resample_wf.inputnode.coreg_xfm
    template_wf ... t1w2template    -> series_resample_wf.inputnode.t1w2template_xfm

``series_resample_wf`` then samples every volume once through ``hmc_t @ coreg @ normalisation``
(T1w space at the series' resolution, and template space), and rotates DWI b-vectors by each
volume's whole rotation into the output image's frame.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine import choices
from niaffine.interfaces.series import ApplySeriesTransforms, SeriesConfounds, SeriesRealignment
from niaffine.interfaces.series_reports import MotionReport, RealignmentReport

from .common import compute_settings
from .resample import resampling_node

#: Outputs of ``init_bold_hmc_wf`` and ``init_dwi_hmc_wf`` (the DWI adds ``out_bvec``).
HMC_OUTPUTS = ["hmc_xfm", "reference", "reference_mask", "confounds_file", "confounds_metadata",
               "motion_report", "realignment_report", "run_facts", "pe_direction", "realigned"]


def _init_hmc_wf(*, kind: str, dof, metric, passes, device, seed, omp_nthreads, mem_gb, name):
    settings = compute_settings(device, omp_nthreads)
    workflow = pe.Workflow(name=name)
    fields = ["in_file", "in_mask"] + (["in_bval", "in_bvec", "pe_dir"] if kind == "dwi" else [])
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    if kind == "dwi":
        inputnode.inputs.pe_dir = "auto"
    outputs = HMC_OUTPUTS + (["out_bvec"] if kind == "dwi" else [])
    outputnode = pe.Node(niu.IdentityInterface(fields=outputs), name="outputnode")
    realign = pe.Node(
        SeriesRealignment(dof=dof, metric=metric, passes=passes, random_seed=seed,
                          write_realigned=True, **settings["inputs"]),
        name="realign", n_procs=settings["n_procs"], mem_gb=mem_gb)
    confounds = pe.Node(SeriesConfounds(), name="confounds", mem_gb=mem_gb)
    motion_report = pe.Node(MotionReport(title=f"{kind.upper()} head motion"),
                            name="motion_report")
    realignment_report = pe.Node(RealignmentReport(), name="realignment_report", mem_gb=mem_gb)
    # fmt: off
    workflow.connect([
        (inputnode, realign, [("in_file", "in_file"), ("in_mask", "in_mask")]),
        (inputnode, confounds, [("in_file", "in_file")]),
        (realign, confounds, [("out_transforms", "transforms"),
                              ("out_reference", "reference_image"),
                              ("out_file", "realigned"),
                              ("pe_direction", "pe_direction")]),
        (confounds, motion_report, [("confounds_file", "confounds_file")]),
        (inputnode, realignment_report, [("in_file", "before")]),
        (realign, realignment_report, [("out_file", "after"), ("out_mask", "mask_file")]),
        (realign, outputnode, [("out_transforms", "hmc_xfm"),
                               ("out_reference", "reference"),
                               ("out_mask", "reference_mask"),
                               ("run_facts", "run_facts"),
                               ("pe_direction", "pe_direction"),
                               ("out_file", "realigned")]),
        (confounds, outputnode, [("confounds_file", "confounds_file"),
                                 ("confounds_metadata", "confounds_metadata")]),
        (motion_report, outputnode, [("out_report", "motion_report")]),
        (realignment_report, outputnode, [("out_report", "realignment_report")]),
    ])
    if kind == "dwi":
        workflow.connect([
            (inputnode, realign, [("in_bval", "in_bval"), ("in_bvec", "in_bvec"),
                                  ("pe_dir", "pe_dir")]),
            (inputnode, confounds, [("in_bval", "in_bval")]),
            (realign, outputnode, [("out_bvec", "out_bvec")]),
        ])
    # fmt: on
    return workflow


def init_bold_hmc_wf(
    *,
    dof: int = choices.DEFAULT_DOF_COREG,
    metric: str = "auto",
    passes: int = 2,
    device: str = "cpu",
    seed: int = 0,
    omp_nthreads: int = 1,
    mem_gb: float = 2.0,
    name: str = "bold_hmc_wf",
) -> pe.Workflow:
    """Head-motion correction of a BOLD series, its confounds and reportlets.

    Every volume is registered (rigidly by default) to a robust reference built from the run
    (:func:`niaffine.engine.register_series`); the confounds are fMRIPrep's motion columns,
    framewise displacement, RMS displacement and DVARS.

    Parameters
    ----------
    dof : {6, 12}
    metric : str
        ``auto`` (normalised cross-correlation) or another series metric.
    passes : {1, 2}
        2 registers again to the robust (median) reference.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    seed : int
    omp_nthreads : int
    mem_gb : float
        Memory estimate of the realignment node.
    name : str

    Inputs
    ------
    in_file
        4D BOLD series.
    in_mask
        Optional mask on the series' grid.

    Outputs
    -------
    hmc_xfm
        ITK transforms, one per volume: ``*_from-orig_to-boldref_mode-image_desc-hmc_xfm.txt``.
    reference, reference_mask
        The boldref (``*_desc-hmc_boldref.nii.gz``) and where the metric was evaluated.
    confounds_file, confounds_metadata
        ``*_desc-confounds_timeseries.tsv`` and ``.json``.
    motion_report, realignment_report
        SVG reportlets (parameters and FD over time; temporal SD before/after).
    run_facts
        JSON: per-volume metric, flags, timing.
    pe_direction
        None for BOLD.
    realigned
        The realigned series on the boldref's grid (fMRIPrep's ``func`` space).

    Examples
    --------
    >>> wf = init_bold_hmc_wf()
    >>> wf.get_node("realign").inputs.dof, sorted(wf.list_node_names())[:3]
    (6, ['confounds', 'inputnode', 'motion_report'])
    """
    return _init_hmc_wf(kind="bold", dof=dof, metric=metric, passes=passes, device=device,
                        seed=seed, omp_nthreads=omp_nthreads, mem_gb=mem_gb, name=name)


def init_dwi_hmc_wf(
    *,
    dof: int = choices.DEFAULT_DOF,
    metric: str = "auto",
    passes: int = 2,
    device: str = "cpu",
    seed: int = 0,
    omp_nthreads: int = 1,
    mem_gb: float = 2.0,
    name: str = "dwi_hmc_wf",
) -> pe.Workflow:
    """Head-motion and eddy-current correction of a DWI series.

    b=0 volumes are registered rigidly to their robust mean; diffusion-weighted ones with
    ``dof`` (12: the eddy-current model along the phase-encoding axis) to their shell's mean
    and tied to the b=0 frame; b-vectors are rotated by each volume's head rotation.

    Parameters
    ----------
    dof, metric, passes, device, seed, omp_nthreads, mem_gb, name
        As :func:`init_bold_hmc_wf` (``dof`` applies to the diffusion-weighted volumes).

    Inputs
    ------
    in_file, in_mask
        4D DWI series, optional mask on its grid.
    in_bval, in_bvec
        FSL b-values and b-vectors.
    pe_dir
        BIDS ``PhaseEncodingDirection`` (``j-``...) or ``auto`` (the default).

    Outputs
    -------
    hmc_xfm, reference, reference_mask, confounds_file, confounds_metadata, motion_report, \
realignment_report, run_facts, pe_direction
        As :func:`init_bold_hmc_wf` (the reference is the dwiref, the b=0 mean; the confounds
        hold the motion columns, FD and RMS displacement).
    out_bvec
        b-vectors rotated into the dwiref's frame.

    Examples
    --------
    >>> init_dwi_hmc_wf().get_node("realign").inputs.dof
    12
    """
    return _init_hmc_wf(kind="dwi", dof=dof, metric=metric, passes=passes, device=device,
                        seed=seed, omp_nthreads=omp_nthreads, mem_gb=mem_gb, name=name)


def init_series_resample_wf(
    *,
    with_template: bool = True,
    interpolation: str = "Linear",
    device: str = "cpu",
    omp_nthreads: int = 1,
    mem_gb: float = 4.0,
    name: str = "series_resample_wf",
) -> pe.Workflow:
    """A realigned series (and its reference and mask) in T1w and template space, each
    volume interpolated once through ``hmc_t @ coreg (@ normalisation)``.

    Parameters
    ----------
    with_template : bool
        Also resample into template space.
    interpolation : {"Linear", "BSpline"}
    device : str
        Where the series are resampled (``cpu``, ``cuda``...; CUDA nodes take a GPU slot).
    omp_nthreads : int
    mem_gb : float
    name : str

    Inputs
    ------
    in_file
        The original 4D series.
    hmc_xfm
        Per-volume transforms (``init_bold_hmc_wf``/``init_dwi_hmc_wf``).
    reference, reference_mask
        The series reference and its brain mask.
    coreg_xfm
        Reference -> T1w transform (``init_coreg_wf`` on the reference).
    t1w_reference
        Image on the T1w grid.
    voxel_size
        Resolution of the outputs on the T1w's and the template's field of view (e.g. the
        series' voxel size, fMRIPrep's native resolution; None: the T1w's and the template's).
    t1w2template_xfm, template
        T1w -> template transform and the template image.
    in_bvec, in_bval, pe_direction
        DWI: b-vectors to rotate into the T1w-space output's frame (optional).

    Outputs
    -------
    series_t1w, reference_t1w, mask_t1w, bvec_t1w
        T1w space (``*_space-T1w_desc-preproc_bold.nii.gz`` ...).
    series_template, reference_template, mask_template
        Template space (only when ``with_template``).

    Examples
    --------
    >>> sorted(init_series_resample_wf(with_template=False).list_node_names())
    ['inputnode', 'mask_t1w', 'outputnode', 'reference_t1w', 'series_t1w']
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "in_file", "hmc_xfm", "reference", "reference_mask", "coreg_xfm", "t1w_reference",
        "voxel_size", "t1w2template_xfm", "template", "in_bvec", "in_bval", "pe_direction"]),
        name="inputnode")
    inputnode.inputs.voxel_size = None
    inputnode.inputs.pe_direction = None
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "series_t1w", "reference_t1w", "mask_t1w", "bvec_t1w", "series_template",
        "reference_template", "mask_template"]), name="outputnode")

    settings = compute_settings(device, omp_nthreads)

    def series_node(node_name, postfix):
        return pe.Node(ApplySeriesTransforms(interpolation=interpolation, out_postfix=postfix,
                                             **settings["inputs"]),
                       name=node_name, n_procs=settings["n_procs"], mem_gb=mem_gb)

    series_t1w = series_node("series_t1w", "_space-T1w")
    reference_t1w = resampling_node("reference_t1w", out_postfix="_space-T1w",
                                    omp_nthreads=omp_nthreads)
    mask_t1w = resampling_node("mask_t1w", out_postfix="_space-T1w",
                               interpolation="NearestNeighbor", omp_nthreads=omp_nthreads)
    # fmt: off
    workflow.connect([
        (inputnode, series_t1w, [("in_file", "input_image"), ("t1w_reference", "reference_image"),
                                 ("hmc_xfm", "hmc_transforms"), ("coreg_xfm", "transforms"),
                                 ("voxel_size", "voxel_size"), ("in_bvec", "in_bvec"),
                                 ("in_bval", "in_bval"), ("pe_direction", "pe_direction")]),
        (series_t1w, reference_t1w, [("output_image", "reference_image")]),
        (series_t1w, mask_t1w, [("output_image", "reference_image")]),
        (inputnode, reference_t1w, [("reference", "input_image"), ("coreg_xfm", "transforms")]),
        (inputnode, mask_t1w, [("reference_mask", "input_image"), ("coreg_xfm", "transforms")]),
        (series_t1w, outputnode, [("output_image", "series_t1w"), ("out_bvec", "bvec_t1w")]),
        (reference_t1w, outputnode, [("output_image", "reference_t1w")]),
        (mask_t1w, outputnode, [("output_image", "mask_t1w")]),
    ])
    # fmt: on
    if not with_template:
        return workflow
    chain = pe.Node(niu.Merge(2), name="chain", run_without_submitting=True)
    space_wf = init_series_space_wf(interpolation=interpolation, device=device,
                                    omp_nthreads=omp_nthreads, mem_gb=mem_gb,
                                    postfix="_space-template", name="template_wf")
    # fmt: off
    workflow.connect([
        (inputnode, chain, [("t1w2template_xfm", "in1"), ("coreg_xfm", "in2")]),
        (inputnode, space_wf, [("in_file", "inputnode.in_file"), ("template", "inputnode.grid"),
                               ("hmc_xfm", "inputnode.hmc_xfm"),
                               ("voxel_size", "inputnode.voxel_size"),
                               ("reference", "inputnode.reference"),
                               ("reference_mask", "inputnode.reference_mask")]),
        (chain, space_wf, [("out", "inputnode.transforms")]),
        (space_wf, outputnode, [(f"outputnode.{f}", f"{f}_template")
                                for f in ("series", "reference", "mask")]),
    ])
    # fmt: on
    return workflow


def init_series_space_wf(
    *,
    interpolation: str = "Linear",
    device: str = "cpu",
    omp_nthreads: int = 1,
    mem_gb: float = 4.0,
    postfix: str = "_space-template",
    name: str = "series_space_wf",
) -> pe.Workflow:
    """A realigned series, its reference and mask on one output grid, each volume
    interpolated once through ``transforms`` and its head motion.

    Inputs
    ------
    in_file, hmc_xfm, reference, reference_mask
        The original series, its per-volume transforms, its reference and mask.
    transforms
        Reference -> output space, ANTs order (``[t1w2template, coreg]``).
    grid
        Image defining the output grid (``voxel_size``, optional: a resolution on its
        field of view instead of its own).

    Outputs
    -------
    series, reference, mask

    Examples
    --------
    >>> sorted(init_series_space_wf().list_node_names())
    ['inputnode', 'mask', 'outputnode', 'reference', 'series']
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "in_file", "hmc_xfm", "reference", "reference_mask", "transforms", "grid",
        "voxel_size"]), name="inputnode")
    inputnode.inputs.voxel_size = None
    outputnode = pe.Node(niu.IdentityInterface(fields=["series", "reference", "mask"]),
                         name="outputnode")
    settings = compute_settings(device, omp_nthreads)
    series = pe.Node(ApplySeriesTransforms(interpolation=interpolation, out_postfix=postfix,
                                           **settings["inputs"]),
                     name="series", n_procs=settings["n_procs"], mem_gb=mem_gb)
    reference = resampling_node("reference", out_postfix=postfix, omp_nthreads=omp_nthreads)
    mask = resampling_node("mask", out_postfix=postfix, interpolation="NearestNeighbor",
                           omp_nthreads=omp_nthreads)
    # fmt: off
    workflow.connect([
        (inputnode, series, [("in_file", "input_image"), ("grid", "reference_image"),
                             ("hmc_xfm", "hmc_transforms"), ("transforms", "transforms"),
                             ("voxel_size", "voxel_size")]),
        (inputnode, reference, [("reference", "input_image"), ("transforms", "transforms")]),
        (inputnode, mask, [("reference_mask", "input_image"), ("transforms", "transforms")]),
        (series, reference, [("output_image", "reference_image")]),
        (series, mask, [("output_image", "reference_image")]),
        (series, outputnode, [("output_image", "series")]),
        (reference, outputnode, [("output_image", "reference")]),
        (mask, outputnode, [("output_image", "mask")]),
    ])
    # fmt: on
    return workflow


#: Outputs of ``init_series_wf``: the head-motion outputs, the reference's coregistration to
#: the T1w and the series resampled into T1w (and template) space.
SERIES_OUTPUTS = [
    "hmc_xfm", "reference", "reference_mask", "confounds_file", "confounds_metadata",
    "motion_report", "realignment_report", "hmc_run_facts", "pe_direction", "coreg_xfm",
    "coreg_inv_xfm", "coreg_report", "coreg_run_facts", "series_t1w", "reference_t1w",
    "mask_t1w", "bvec_t1w", "series_template", "reference_template", "mask_template",
    "series_func",
]


def init_series_wf(
    *,
    kind: str,
    with_template: bool = True,
    voxel_size=None,
    pe_dir: str = "auto",
    dof_coreg: int = choices.DEFAULT_DOF_COREG,
    metric: str = "auto",
    device: str = "cpu",
    seed: int = 0,
    omp_nthreads: int = 1,
    mem_gb: float = 2.0,
    name: str = "series_wf",
) -> pe.Workflow:
    """A BOLD or DWI run: head motion, reference to T1w, the series in T1w/template space.

    ``init_bold_hmc_wf`` (or ``init_dwi_hmc_wf``) -> ``init_coreg_wf`` on the reference ->
    ``init_series_resample_wf``: every volume interpolated once through
    ``hmc_t @ coreg (@ normalisation)``.

    Parameters
    ----------
    kind : {"bold", "dwi"}
    with_template : bool
        Also resample into template space.
    voxel_size : float or sequence of float, optional
        Resolution of the T1w-space series (the series' own: fMRIPrep's native resolution).
    pe_dir : str
        DWI: the BIDS ``PhaseEncodingDirection`` or ``auto``.
    dof_coreg, metric : int, str
        Of the reference-to-T1w registration (the realignment keeps its own defaults:
        rigid for BOLD and b=0 volumes, 12 dof for diffusion-weighted ones).
    device, seed, omp_nthreads, mem_gb, name

    Inputs
    ------
    in_file, in_bval, in_bvec
        The raw series (and, for DWI, its FSL b-values and b-vectors).
    t1w, t1w_brain, t1w_mask
        The T1w (output grid), its brain and brain mask (coregistration; the mask is also
        the series' brain mask).
    t1w2template_xfm, template
        Normalisation, when ``with_template``.

    Outputs
    -------
    See :data:`SERIES_OUTPUTS`. ``reference_mask`` (and ``mask_t1w``, ``mask_template``) is
    the T1w brain mask brought onto the reference's grid through the coregistration (nearest
    neighbour), as fMRIPrep's ``desc-brain_mask`` of a BOLD run is a brain mask; the
    realignment's own head mask stays inside the head-motion workflow.

    Examples
    --------
    >>> wf = init_series_wf(kind="dwi", with_template=False)
    >>> sorted(n for n in wf.list_node_names() if n.count(".") == 0)
    ['brain_mask', 'inputnode', 'outputnode']
    """
    from .coreg import init_coreg_wf

    if kind not in ("bold", "dwi"):
        raise ValueError(f"kind must be 'bold' or 'dwi', got {kind!r}")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "in_file", "in_bval", "in_bvec", "t1w", "t1w_brain", "t1w_mask", "t1w2template_xfm",
        "template"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=SERIES_OUTPUTS), name="outputnode")
    factory = init_bold_hmc_wf if kind == "bold" else init_dwi_hmc_wf
    hmc_wf = factory(device=device, seed=seed, omp_nthreads=omp_nthreads, mem_gb=mem_gb,
                     name=f"{kind}_hmc_wf")
    coreg_wf = init_coreg_wf(dof=dof_coreg, metric=metric, device=device, seed=seed,
                             omp_nthreads=omp_nthreads,
                             title=f"{kind}ref to T1w ({dof_coreg} dof)", name="coreg_wf")
    resample_wf = init_series_resample_wf(with_template=with_template, device=device,
                                          omp_nthreads=omp_nthreads, mem_gb=2 * mem_gb,
                                          name="resample_wf")
    resample_wf.inputs.inputnode.voxel_size = voxel_size
    # the brain mask of the series: the T1w's, brought onto the reference's grid through the
    # coregistration (the realignment's own mask is the whole head, for the motion metric)
    brain_mask = resampling_node("brain_mask", out_postfix="_desc-brain",
                                 interpolation="NearestNeighbor", omp_nthreads=omp_nthreads)
    hmc_fields = ["hmc_xfm", "reference", "confounds_file", "confounds_metadata",
                  "motion_report", "realignment_report", "pe_direction"]
    # fmt: off
    workflow.connect([
        (inputnode, hmc_wf, [("in_file", "inputnode.in_file")]),
        (hmc_wf, coreg_wf, [("outputnode.reference", "inputnode.in_file")]),
        (inputnode, coreg_wf, [("t1w_brain", "inputnode.t1w_brain"),
                               ("t1w_mask", "inputnode.t1w_mask")]),
        (inputnode, resample_wf, [("in_file", "inputnode.in_file"),
                                  ("t1w", "inputnode.t1w_reference")]),
        (hmc_wf, resample_wf, [("outputnode.hmc_xfm", "inputnode.hmc_xfm"),
                               ("outputnode.reference", "inputnode.reference")]),
        (inputnode, brain_mask, [("t1w_mask", "input_image")]),
        (hmc_wf, brain_mask, [("outputnode.reference", "reference_image")]),
        (coreg_wf, brain_mask, [("outputnode.inv_xfm", "transforms")]),
        (brain_mask, resample_wf, [("output_image", "inputnode.reference_mask")]),
        (brain_mask, outputnode, [("output_image", "reference_mask")]),
        (coreg_wf, resample_wf, [("outputnode.xfm", "inputnode.coreg_xfm")]),
        (hmc_wf, outputnode, [(f"outputnode.{f}", f) for f in hmc_fields]
         + [("outputnode.run_facts", "hmc_run_facts"), ("outputnode.realigned", "series_func")]),
        (coreg_wf, outputnode, [("outputnode.xfm", "coreg_xfm"),
                                ("outputnode.inv_xfm", "coreg_inv_xfm"),
                                ("outputnode.out_report", "coreg_report"),
                                ("outputnode.run_facts", "coreg_run_facts")]),
        (resample_wf, outputnode, [(f"outputnode.{f}", f) for f in (
            "series_t1w", "reference_t1w", "mask_t1w", "bvec_t1w")]),
    ])
    if kind == "dwi":
        hmc_wf.inputs.inputnode.pe_dir = pe_dir
        workflow.connect([
            (inputnode, hmc_wf, [("in_bval", "inputnode.in_bval"),
                                 ("in_bvec", "inputnode.in_bvec")]),
            (inputnode, resample_wf, [("in_bval", "inputnode.in_bval"),
                                      ("in_bvec", "inputnode.in_bvec")]),
            (hmc_wf, resample_wf, [("outputnode.pe_direction", "inputnode.pe_direction")]),
        ])
    if with_template:
        workflow.connect([
            (inputnode, resample_wf, [("t1w2template_xfm", "inputnode.t1w2template_xfm"),
                                      ("template", "inputnode.template")]),
            (resample_wf, outputnode, [(f"outputnode.{f}", f) for f in (
                "series_template", "reference_template", "mask_template")]),
        ])
    # fmt: on
    return workflow

# SPDX-License-Identifier: Apache-2.0
"""The single-subject workflow: brain mask, normalisation, coregistration and resampling."""

from __future__ import annotations

import os
from collections.abc import Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine import choices
from niaffine import spaces as sp
from niaffine.interfaces.reference import ReferenceVolume

from . import space_outputs as so
from .brainmask import init_brainmask_wf
from .coreg import init_coreg_wf
from .hmc import SERIES_OUTPUTS, init_series_wf
from .resample import init_resample_wf
from .template import init_template_wf

#: Suffixes of the images ``subject_data["images"]`` may hold.
IMAGE_SUFFIXES = choices.MODALITIES
#: Suffixes of series whose reference volume is registered.
SERIES_SUFFIXES = choices.SERIES_MODALITIES
#: Series written in template spaces (DWI: T1w space only, where its b-vectors are rotated).
TEMPLATE_SERIES = ("bold",)

#: Inputs of ``init_single_subject_wf(precomputed_normalisation=True)`` and the inputs of
#: the template workflow they feed.
PRECOMPUTED_INPUTS = {
    "t1w2template_xfm": "t1w2template_xfm",
    "template2t1w_xfm": "template2t1w_xfm",
    "t1w_template": "t1w_template",
    "template_run_facts": "run_facts",
}

OUTPUT_FIELDS = [
    "t1w_preproc", "t1w_mask", "t1w_brain", "t1w2template_xfm", "template2t1w_xfm",
    "t1w_template", "template", "coreg_xfms", "t1w2image_xfms", "images_t1w",
    "images_template", "reportlets", "metrics", "anat_reports", "template_run_facts",
    "image_outputs", "template_outputs",
]
#: Keys of an ``image_outputs`` item for every image (``init_coreg_wf`` and
#: ``init_resample_wf``); a realigned series adds :data:`niaffine.workflows.hmc.SERIES_OUTPUTS`.
IMAGE_ROLES = ["coreg_xfm", "coreg_inv_xfm", "coreg_report", "coreg_run_facts", "image_t1w",
               "image_template", "templates"]


def bundle_outputs(**roles) -> dict:
    """One image's outputs as ``{role: path}`` (roles without a value left out).

    >>> bundle_outputs(coreg_xfm="a.txt", image_t1w=None)
    {'coreg_xfm': 'a.txt'}
    """
    return {role: value for role, value in roles.items() if value is not None}


def _bundle_node(roles, name) -> pe.Node:
    node = pe.Node(niu.Function(input_names=list(roles), output_names=["out"],
                                function=bundle_outputs),
                   name=name, run_without_submitting=True)
    for role in roles:  # unconnected roles stay None (left out of the dict)
        setattr(node.inputs, role, None)
    return node


def series_voxel_size(path) -> list[float] | None:
    """The voxel size of a series (its T1w-space outputs' resolution), None if unreadable."""
    import nibabel as nb

    try:
        return [float(z) for z in nb.load(str(path)).header.get_zooms()[:3]]
    except Exception:  # the pre-flight checks name a bad file; the graph still builds
        return None


def subject_spaces(spaces, template: str | None = None,
                   template_mask: str | None = None) -> tuple[sp.Space, ...]:
    """The output spaces as :class:`~niaffine.spaces.Space` objects (``T1w`` first).

    ``spaces`` may hold ``--output-spaces`` entries or Space objects; a ``template`` path
    replaces every template space (a user template, with ``template_mask``).

    Examples
    --------
    >>> [s.label for s in subject_spaces(["MNI152NLin6Asym:res-2", "func"])]
    ['T1w', 'MNI152NLin6Asym:res-2', 'func']
    """
    parsed = [s if isinstance(s, sp.Space) else sp.parse_space(str(s)) for s in spaces]
    if template and any(space.is_template for space in parsed):
        user = sp.parse_space(os.path.abspath(str(template)), template_mask=template_mask)
        parsed = [space for space in parsed if not space.is_template] + [user]
    if not any(s.name == "T1w" for s in parsed):
        parsed.insert(0, sp.Space("T1w", kind="nonstandard"))
    parsed.sort(key=lambda space: space.name != "T1w")
    return tuple(dict.fromkeys(parsed))


def _check_subject_data(subject_data: dict) -> list[dict]:
    if not subject_data.get("t1w"):
        raise ValueError(f"subject {subject_data.get('subject')!r} has no T1w image")
    images = list(subject_data.get("images") or [])
    for image in images:
        if image.get("suffix") not in IMAGE_SUFFIXES:
            raise ValueError(
                f"{image.get('path')}: suffix {image.get('suffix')!r} is not one of "
                f"{IMAGE_SUFFIXES}"
            )
    return images


def init_single_subject_wf(
    *,
    subject_data: dict,
    spaces: Sequence[sp.Space | str] = choices.DEFAULT_SPACES,
    template: str | None = None,
    template_mask: str | None = None,
    dof_template: int = choices.DEFAULT_DOF,
    dof_coreg: int = choices.DEFAULT_DOF_COREG,
    metric: str = "auto",
    resample_bold: bool = False,
    hmc: bool = True,
    device: str = "cpu",
    seed: int = 0,
    omp_nthreads: int = 1,
    precomputed_brainmask: bool = False,
    precomputed_normalisation: bool = False,
    name: str = "single_subject_wf",
) -> pe.Workflow:
    """Brain masking, normalisation, coregistration and resampling for one subject (session).

    The T1w image is skull-stripped (deepbet); the T1w brain is registered once to each
    template of ``spaces`` (``dof_template``; a template asked for at several resolutions
    is registered once, and each further resolution resamples onto its own grid); every
    other image is registered
    to the T1w brain inside its mask (``dof_coreg``, ``metric``); BOLD and DWI series are
    registered through a reference volume (the median of their first volumes, or the mean
    b=0 volume when b-values are given). Every image is then resampled from its own data
    into T1w space and, through the composed transforms, into every template space: one
    interpolation each (:mod:`niaffine.workflows.space_outputs`).

    Parameters
    ----------
    subject_data : dict
        ``{"subject": "01", "session": None or "A", "t1w": path, "images": [{"path": ...,
        "suffix": "T2w" | "FLAIR" | "PDw" | "bold" | "dwi", "bvals": path or None,
        "bvecs": path or None, "metadata": {...}}, ...]}`` (``metadata``: the raw sidecar's,
        e.g. ``PhaseEncodingDirection`` for DWI).
    spaces : sequence of Space or str
        Output spaces (:func:`niaffine.spaces.parse_spaces` objects or ``--output-spaces``
        entries): ``T1w`` (always), templates (``MNI152NLin6Asym:res-2``, a file), ``func``
        (realigned BOLD/DWI written on their reference grid too: ``series_func``).
        Without a template space, normalisation is skipped and the template outputs are
        ``None`` (single files) or empty lists.
    template : str, optional
        Template image replacing every template space of ``spaces`` (a user template).
    template_mask : str, optional
        Brain mask of ``template`` (give one when the template has a head).
    dof_template : int
        Degrees of freedom of the normalisation (12).
    dof_coreg : int
        Degrees of freedom of the coregistrations (6, rigid).
    metric : str
        Metric of the coregistrations (``mi``); normalisation uses ``mi`` too.
    resample_bold : bool
        Without ``hmc`` only: resample whole BOLD series (4D, one transform) rather than
        their reference volume.
    hmc : bool
        Realign every BOLD and DWI series (:func:`niaffine.workflows.hmc.init_series_wf`:
        head motion, DWI eddy currents, the reference coregistered to the T1w, the series
        resampled once per volume into T1w and template space, b-vectors rotated). Off:
        a reference volume of the series is coregistered and resampled as a static image.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``. Brain extraction and registration nodes on
        CUDA have ``use_gpu`` set, so MultiProc's ``n_gpu_procs`` limits how many run at once.
    seed : int
        Random seed of every registration.
    omp_nthreads : int
        CPU threads per node.
    precomputed_brainmask : bool
        Take the brain mask as inputs (node ``anatnode``: ``out_brain``, ``out_mask``,
        ``out_report``, the outputs of :func:`init_brainmask_wf`) instead of computing it.
    precomputed_normalisation : bool
        Take the T1w-to-template registrations as inputs instead of running them (node
        ``normnode`` for the first template, ``normnode_<space>`` for the others:
        ``t1w2template_xfm``, ``template2t1w_xfm``, ``t1w_template``,
        ``template_run_facts``). Ignored without a template space. The BIDS-App's
        ``--batch-size`` uses both: every subject's brain mask is made outside, the brains of
        N subjects are registered to the template at once, and each subject's graph takes
        its own results (a graph cannot feed its own inputs: nipype needs a DAG).
    name : str
        Workflow name.

    Inputs
    ------
    t1w, images
        Set from ``subject_data``.
    anatnode.out_brain, anatnode.out_mask, anatnode.out_report
        Only with ``precomputed_brainmask``.
    normnode[_<space>].t1w2template_xfm, .template2t1w_xfm, .t1w_template, \
.template_run_facts
        Only with ``precomputed_normalisation``.

    Outputs
    -------
    t1w_preproc
        The input T1w.
    t1w_mask, t1w_brain
        T1w brain mask and skull-stripped T1w.
    t1w2template_xfm
        ITK transform, T1w -> template (resamples T1w-space images into template space);
        this and the other single template fields are of the first template space.
    template2t1w_xfm
        ITK transform, template -> T1w.
    t1w_template
        T1w brain in template space.
    template
        Path of the template image used.
    coreg_xfms
        List, in the order of ``subject_data["images"]``: ITK transforms image -> T1w.
    t1w2image_xfms
        List: the inverse transforms, T1w -> image.
    images_t1w
        List: each image resampled onto the T1w grid (the reference volume for BOLD and
        DWI, or the whole BOLD series when ``resample_bold``).
    images_template
        List: the same in template space (empty without a template space).
    reportlets
        List of SVG files: the brain mask, then the normalisation (when done), then one
        per image in order.
    metrics
        List of JSON run-facts files, one per registration (normalisation first, then one
        per image): ``{"source", "target", "metric", "final_metric", "dof",
        "iterations_total", "iterations_per_level", "elapsed_s", "mask_volume_ml", ...}``
        (:class:`niaffine.runfacts.RunFacts`).
    anat_reports
        ``{"brain_mask": svg, "normalisation": svg}`` (the latter with a template space).
    template_run_facts
        The normalisation's run facts (None without a template space).
    image_outputs
        List, in the order of ``subject_data["images"]``: one dict per image, ``{role:
        path}`` with the roles of :data:`IMAGE_ROLES` and, for a realigned series, those of
        :data:`niaffine.workflows.hmc.SERIES_OUTPUTS`; ``templates`` is a list, one dict
        per template space (``entities``, ``spatial_reference`` and ``image_template`` or
        ``series_template``/``reference_template``/``mask_template``). This is what the
        BIDS-App writes.
    template_outputs
        List, one dict per template output space: ``entities``, ``spatial_reference`` and
        the roles of :data:`niaffine.workflows.space_outputs.TEMPLATE_ROLES`.

    Examples
    --------
    >>> wf = init_single_subject_wf(subject_data={"subject": "01", "t1w": "sub-01_T1w.nii.gz",
    ...                                           "images": []}, spaces=["T1w"])
    >>> wf.get_node("outputnode").inputs.images_template
    []
    """
    images = _check_subject_data(subject_data)
    spaces = subject_spaces(spaces, template, template_mask)
    groups = so.template_groups(spaces)
    func = any(space.name == "func" for space in spaces)
    normalise = bool(groups)
    n_images, n_targets = len(images), len(groups)

    precomputed = normalise and precomputed_normalisation
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w", "images"]), name="inputnode")
    inputnode.inputs.t1w = os.path.abspath(subject_data["t1w"])
    inputnode.inputs.images = [os.path.abspath(image["path"]) for image in images]
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")

    if precomputed_brainmask:
        brainmask_wf = pe.Node(niu.IdentityInterface(fields=["out_brain", "out_mask",
                                                             "out_report"]), name="anatnode")
        bm = ""  # ports of the brain mask's source
    else:
        brainmask_wf = init_brainmask_wf(device=device, omp_nthreads=omp_nthreads)
        workflow.connect(inputnode, "t1w", brainmask_wf, "inputnode.t1w")
        bm = "outputnode."
    # fmt: off
    workflow.connect([
        (inputnode, outputnode, [("t1w", "t1w_preproc")]),
        (brainmask_wf, outputnode, [(f"{bm}out_mask", "t1w_mask"),
                                    (f"{bm}out_brain", "t1w_brain")]),
    ])
    # fmt: on

    merge_reportlets = pe.Node(
        niu.Merge(1 + n_targets + n_images), name="merge_reportlets", run_without_submitting=True
    )
    workflow.connect(brainmask_wf, f"{bm}out_report", merge_reportlets, "in1")
    workflow.connect(merge_reportlets, "out", outputnode, "reportlets")
    anat_reports = _bundle_node(["brain_mask", "normalisation"], "anat_reports")
    workflow.connect(brainmask_wf, f"{bm}out_report", anat_reports, "brain_mask")
    workflow.connect(anat_reports, "out", outputnode, "anat_reports")
    if n_targets + n_images:
        merge_metrics = pe.Node(
            niu.Merge(n_targets + n_images), name="merge_metrics", run_without_submitting=True
        )
        workflow.connect(merge_metrics, "out", outputnode, "metrics")
    else:
        outputnode.inputs.metrics = []

    ports_list = []
    for k, (registered, members) in enumerate(groups):
        suffix = "" if k == 0 else f"_{so.registration_id(registered)}"
        template_wf = init_template_wf(
            space=registered, dof=dof_template, metric=metric, device=device, seed=seed,
            omp_nthreads=omp_nthreads, precomputed=precomputed, name=f"template{suffix}_wf")
        if precomputed:
            normnode = pe.Node(niu.IdentityInterface(fields=list(PRECOMPUTED_INPUTS)),
                               name=f"normnode{suffix}")
            workflow.connect([(normnode, template_wf, [
                (field, f"inputnode.{inner}") for field, inner in PRECOMPUTED_INPUTS.items()])])
        # fmt: off
        workflow.connect([
            (brainmask_wf, template_wf, [(f"{bm}out_brain", "inputnode.t1w_brain"),
                                         (f"{bm}out_mask", "inputnode.t1w_mask")]),
            (template_wf, merge_reportlets, [("outputnode.out_report", f"in{2 + k}")]),
            (template_wf, merge_metrics, [("outputnode.run_facts", f"in{1 + k}")]),
        ])
        # fmt: on
        ports_list += [so.connect_template_space(workflow, template_wf, registered, space,
                                                 (brainmask_wf, f"{bm}out_brain"),
                                                 omp_nthreads) for space in members]
    so.merge_bundles(workflow, so.anat_bundles(workflow, ports_list),
                     (outputnode, "template_outputs"), "merge_template_outputs")
    if ports_list:  # the single-template fields: the first template space
        first = ports_list[0]
        # fmt: off
        for field, (src, port) in (("t1w2template_xfm", first.xfm),
                                   ("template2t1w_xfm", first.inv_xfm),
                                   ("t1w_template", first.t1w_template), ("template", first.grid),
                                   ("template_run_facts", first.run_facts)):
            workflow.connect(src, port, outputnode, field)
        workflow.connect(first.report[0], first.report[1], anat_reports, "normalisation")
        # fmt: on
    else:
        for field in ("t1w2template_xfm", "template2t1w_xfm", "t1w_template", "template",
                      "template_run_facts"):
            setattr(outputnode.inputs, field, None)

    if not n_images:
        for field in ("coreg_xfms", "t1w2image_xfms", "images_t1w", "images_template",
                      "image_outputs"):
            setattr(outputnode.inputs, field, [])
        return workflow

    merges = {}
    for field in ["coreg_xfms", "t1w2image_xfms", "images_t1w", "image_outputs"] + [
            "images_template"] * normalise:
        merges[field] = pe.Node(
            niu.Merge(n_images), name=f"merge_{field}", run_without_submitting=True
        )
        workflow.connect(merges[field], "out", outputnode, field)
    if not normalise:
        outputnode.inputs.images_template = []

    for index, image in enumerate(images):
        suffix = image["suffix"]
        label = f"{suffix.lower()}{index}"
        select_image = pe.Node(
            niu.Select(index=index), name=f"select_image_{label}", run_without_submitting=True
        )
        workflow.connect(inputnode, "images", select_image, "inlist")
        port = f"in{index + 1}"
        if hmc and suffix in SERIES_SUFFIXES:
            series_wf = init_series_wf(
                kind=suffix, with_template=False,
                voxel_size=series_voxel_size(image["path"]),
                pe_dir=(image.get("metadata") or {}).get("PhaseEncodingDirection") or "auto",
                dof_coreg=dof_coreg, metric=metric, device=device, seed=seed,
                omp_nthreads=omp_nthreads, name=f"series_{label}_wf")
            if suffix == "dwi":
                series_wf.inputs.inputnode.in_bval = os.path.abspath(image["bvals"])
                series_wf.inputs.inputnode.in_bvec = os.path.abspath(image["bvecs"])
            roles = [r for r in SERIES_OUTPUTS if func or r != "series_func"]
            bundle = _bundle_node(SERIES_OUTPUTS + ["templates"], f"outputs_{label}")
            # fmt: off
            workflow.connect([
                (select_image, series_wf, [("out", "inputnode.in_file")]),
                (inputnode, series_wf, [("t1w", "inputnode.t1w")]),
                (brainmask_wf, series_wf, [(f"{bm}out_brain", "inputnode.t1w_brain"),
                                           (f"{bm}out_mask", "inputnode.t1w_mask")]),
                (series_wf, bundle, [(f"outputnode.{role}", role) for role in roles]),
                (series_wf, merges["coreg_xfms"], [("outputnode.coreg_xfm", port)]),
                (series_wf, merges["t1w2image_xfms"], [("outputnode.coreg_inv_xfm", port)]),
                (series_wf, merges["images_t1w"], [("outputnode.reference_t1w", port)]),
                (series_wf, merge_reportlets, [("outputnode.coreg_report",
                                                f"in{2 + n_targets + index}")]),
                (series_wf, merge_metrics, [("outputnode.coreg_run_facts",
                                             f"in{1 + n_targets + index}")]),
                (bundle, merges["image_outputs"], [("out", port)]),
            ])
            # fmt: on
            in_space = ports_list if suffix in TEMPLATE_SERIES else []
            bundles = so.connect_series(workflow, in_space, label=label, series_wf=series_wf,
                                        in_file=(select_image, "out"), device=device,
                                        omp_nthreads=omp_nthreads, mem_gb=4.0)
            _first_template(workflow, bundles, merges, port, "reference_template")
            so.merge_bundles(workflow, bundles, (bundle, "templates"), f"templates_{label}")
            continue
        moving = (select_image, "out")
        if suffix in SERIES_SUFFIXES:
            image_reference = pe.Node(ReferenceVolume(), name=f"image_reference_{label}")
            if image.get("bvals"):
                image_reference.inputs.in_bval = os.path.abspath(image["bvals"])
            workflow.connect(select_image, "out", image_reference, "in_file")
            moving = (image_reference, "out_file")

        coreg_wf = init_coreg_wf(
            dof=dof_coreg, metric=metric, device=device, seed=seed, omp_nthreads=omp_nthreads,
            title=f"{suffix} to T1w ({dof_coreg} dof)", name=f"coreg_{label}_wf",
        )
        series = suffix == "bold" and resample_bold
        mem_gb = 4.0 if series else 1.0
        resample_wf = init_resample_wf(with_template=False, omp_nthreads=omp_nthreads,
                                       mem_gb=mem_gb, name=f"resample_{label}_wf")
        resampled = (select_image, "out") if series else moving
        bundle = _bundle_node(IMAGE_ROLES, f"outputs_{label}")
        # fmt: off
        workflow.connect([
            (moving[0], coreg_wf, [(moving[1], "inputnode.in_file")]),
            (brainmask_wf, coreg_wf, [(f"{bm}out_brain", "inputnode.t1w_brain"),
                                      (f"{bm}out_mask", "inputnode.t1w_mask")]),
            (resampled[0], resample_wf, [(resampled[1], "inputnode.in_file")]),
            (inputnode, resample_wf, [("t1w", "inputnode.t1w_reference")]),
            (coreg_wf, resample_wf, [("outputnode.xfm", "inputnode.coreg_xfm")]),
            (coreg_wf, merges["coreg_xfms"], [("outputnode.xfm", port)]),
            (coreg_wf, merges["t1w2image_xfms"], [("outputnode.inv_xfm", port)]),
            (resample_wf, merges["images_t1w"], [("outputnode.out_t1w", port)]),
            (coreg_wf, merge_reportlets, [("outputnode.out_report",
                                           f"in{2 + n_targets + index}")]),
            (coreg_wf, merge_metrics, [("outputnode.run_facts",
                                        f"in{1 + n_targets + index}")]),
            (coreg_wf, bundle, [("outputnode.xfm", "coreg_xfm"),
                                ("outputnode.inv_xfm", "coreg_inv_xfm"),
                                ("outputnode.out_report", "coreg_report"),
                                ("outputnode.run_facts", "coreg_run_facts")]),
            (resample_wf, bundle, [("outputnode.out_t1w", "image_t1w")]),
            (bundle, merges["image_outputs"], [("out", port)]),
        ])
        # fmt: on
        bundles = so.connect_static_image(
            workflow, ports_list, label=label, moving=resampled,
            coreg=(coreg_wf, "outputnode.xfm"), series=suffix in SERIES_SUFFIXES,
            omp_nthreads=omp_nthreads, mem_gb=mem_gb)
        _first_template(workflow, bundles, merges, port, "image_template")
        so.merge_bundles(workflow, bundles, (bundle, "templates"), f"templates_{label}")
    return workflow


def _pick(bundle: dict, role: str):
    """``bundle[role]`` (a Function node's body: imports nothing)."""
    return bundle.get(role)


def _first_template(workflow, bundles, merges, port, role) -> None:
    """``images_template[port]``: ``role`` of the first template space (None without one)."""
    if "images_template" not in merges:
        return
    if not bundles:
        setattr(merges["images_template"].inputs, port, None)
        return
    pick = pe.Node(niu.Function(input_names=["bundle", "role"], output_names=["out"],
                                function=_pick),
                   name=f"{bundles[0].name}_first", run_without_submitting=True)
    pick.inputs.role = role
    workflow.connect([(bundles[0], pick, [("out", "bundle")]),
                      (pick, merges["images_template"], [("out", port)])])


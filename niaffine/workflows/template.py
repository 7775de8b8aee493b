# SPDX-License-Identifier: Apache-2.0
"""Spatial normalisation of the T1w brain to a template."""

from __future__ import annotations

import os

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine import choices
from niaffine import spaces as sp
from niaffine.interfaces.registration import AffineRegistration
from niaffine.interfaces.reports import RegistrationReport
from niaffine.interfaces.templates import TemplateSource

from .common import registration_node
from .resample import resampling_node


def _as_space(template, template_mask, space) -> sp.Space | None:
    """The space of ``space`` (a :class:`~niaffine.spaces.Space` or an ``--output-spaces``
    entry), else of a template name; ``None`` for a template given only by path."""
    if space is None:
        path = os.path.isfile(str(template)) or sp.looks_like_path(str(template))
        return None if path else sp.parse_space(str(template))
    if isinstance(space, str):
        space = sp.parse_space(space, template_mask=template_mask)
    if not space.is_template:
        raise ValueError(f"{space.label} is not a template space")
    return space


def _template_source(template, template_mask, space: sp.Space | None) -> pe.Node:
    """The ``template_source`` node: for a space, its label (or file) and output grid."""
    if space is not None and space.kind == "file":
        template, template_mask = space.path, space.mask or template_mask
    elif space is not None:
        template = space.label
    node = pe.Node(TemplateSource(template=str(template)), name="template_source")
    if template_mask:
        node.inputs.template_mask = str(template_mask)
    if space is not None and space.kind == "standard":
        node.inputs.output_resolution = space.output_res()
    return node


def _needs_grid(space: sp.Space | None) -> bool:
    """Whether the output grid differs from the registration target's (res-1)."""
    return (space is not None and space.kind == "standard"
            and space.output_res() != sp.TARGET_RESOLUTION)


def _registration_node(interface, *, dof, metric, seed, device, omp_nthreads, mem_gb) -> pe.Node:
    """The node running ``interface`` (a brain-to-template registration), with its resources.

    Brains are registered without masks and with the engine's ``template`` preset: the
    outline of the brain is the feature two anatomies share best, and masks would take the
    background (hence the outline) out of the metric (see :mod:`niaffine.presets`).
    """
    return registration_node(interface, dof=dof, metric=metric, seed=seed, device=device,
                             omp_nthreads=omp_nthreads, mem_gb=mem_gb, preset="template")


#: Inputs of ``init_template_wf(precomputed=True)``: a registration done elsewhere.
PRECOMPUTED_FIELDS = ("t1w2template_xfm", "template2t1w_xfm", "t1w_template", "run_facts")


def init_template_wf(
    *,
    template: str = sp.BUILTIN_TEMPLATE,
    template_mask: str | None = None,
    space: sp.Space | str | None = None,
    dof: int = choices.DEFAULT_DOF,
    metric: str = "auto",
    device: str = "cpu",
    seed: int = 0,
    omp_nthreads: int = 1,
    precomputed: bool = False,
    name: str = "template_wf",
) -> pe.Workflow:
    """Register the T1w brain to a template (12 dof by default), or take a given registration.

    The registration target is the template's res-1 image (TemplateFlow's, where it is in
    ``TEMPLATEFLOW_HOME``, else the space's own resolution); the outputs (``template``,
    ``template_mask``, ``t1w_template``) lie on the space's own ``res-N`` grid (res-1 when
    none is given), as in fMRIPrep. The transform maps world coordinates, so it is valid
    for every grid of the template.

    Parameters
    ----------
    template : str
        ``"MNI152NLin2009aSym"`` (built in: nilearn's 1 mm copy), a TemplateFlow entry
        (``"MNI152NLin6Asym:res-2"``) or the path of a template image.
    template_mask : str, optional
        Brain mask on the template grid (give one for a template with a head); without
        it the template is taken as skull-stripped.
    space : Space or str, optional
        The template space (from :func:`niaffine.spaces.parse_spaces`, or one
        ``--output-spaces`` entry); replaces ``template`` (and, for a file space, brings
        its own mask).
    dof : int
        Degrees of freedom, one of :data:`niaffine.choices.DOFS`.
    metric : str
        One of :data:`niaffine.choices.METRIC_CHOICES` (``auto``: the engine's ``template``
        preset, normalised mutual information).
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a CUDA node is marked for nipype's GPU slots.
    seed : int
        Random seed of the registration.
    omp_nthreads : int
        CPU threads of the registration node.
    precomputed : bool
        Do not register: take the registration's outputs as inputs (``t1w2template_xfm``,
        ``template2t1w_xfm``, ``t1w_template``, ``run_facts``), e.g. from a batched
        registration of many subjects; the template, its mask and the reportlet are still
        made here.
    name : str
        Workflow name.

    Inputs
    ------
    t1w_brain
        Skull-stripped T1w.
    t1w_mask
        T1w brain mask (brains are registered without masks, see ``_registration_node``).
    t1w2template_xfm, template2t1w_xfm, t1w_template, run_facts
        Only with ``precomputed``: the registration's outputs (see Outputs).

    Outputs
    -------
    t1w2template_xfm
        ITK transform, T1w -> template (maps template points to T1w points: resamples
        T1w images into template space).
    template2t1w_xfm
        ITK transform, template -> T1w.
    t1w_template
        T1w brain resampled into template space.
    template
        Template image on the output grid (the resampling reference of the space).
    template_mask
        Template brain mask on the output grid.
    out_report
        SVG reportlet: the T1w brain in template space over the template.
    run_facts
        JSON file of run facts.

    Examples
    --------
    >>> wf = init_template_wf(dof=9)
    >>> wf.get_node("registration").inputs.dof
    9
    >>> init_template_wf(precomputed=True).get_node("registration") is None
    True
    >>> wf = init_template_wf(space="MNI152NLin2009aSym:res-2")
    >>> wf.get_node("template_source").inputs.output_resolution, bool(wf.get_node("to_grid"))
    ('2', True)
    """
    workflow = pe.Workflow(name=name)
    given = list(PRECOMPUTED_FIELDS) if precomputed else []
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_brain", "t1w_mask", *given]),
                        name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=["t1w2template_xfm", "template2t1w_xfm", "t1w_template", "template",
                    "template_mask", "out_report", "run_facts"]
        ),
        name="outputnode",
    )
    space = _as_space(template, template_mask, space)
    template_source = _template_source(template, template_mask, space)
    template_report = pe.Node(
        RegistrationReport(title=f"T1w to template ({dof} dof)"), name="template_report"
    )
    # fmt: off
    workflow.connect([
        (template_source, template_report, [("template_file", "fixed_image"),
                                            ("mask_file", "mask_file")]),
        (template_source, outputnode, [("grid_file", "template"),
                                       ("grid_mask_file", "template_mask")]),
        (template_report, outputnode, [("out_report", "out_report")]),
    ])
    # fmt: on
    if precomputed:
        workflow.connect(inputnode, "t1w_template", template_report, "moving_image")
        workflow.connect([(inputnode, outputnode, [(field, field) for field in PRECOMPUTED_FIELDS
                                                   if field != "t1w_template"])])
        _connect_t1w_template(workflow, space, inputnode, "t1w_template", inputnode,
                              "t1w2template_xfm", template_source, omp_nthreads)
        return workflow

    registration = _registration_node(AffineRegistration, dof=dof, metric=metric, seed=seed,
                                      device=device, omp_nthreads=omp_nthreads, mem_gb=1.5)
    # fmt: off
    workflow.connect([
        (inputnode, registration, [("t1w_brain", "moving_image")]),
        (template_source, registration, [("brain_file", "fixed_image")]),
        (registration, template_report, [("warped_image", "moving_image")]),
        (registration, outputnode, [("composite_transform", "t1w2template_xfm"),
                                    ("inverse_composite_transform", "template2t1w_xfm"),
                                    ("run_facts", "run_facts")]),
    ])
    # fmt: on
    _connect_t1w_template(workflow, space, registration, "warped_image", registration,
                          "composite_transform", template_source, omp_nthreads)
    return workflow


def _connect_t1w_template(workflow, space, warped, warped_field, xfm, xfm_field,
                          template_source, omp_nthreads) -> None:
    """``outputnode.t1w_template``: the warped T1w brain, or (when the output grid is not
    the registration target's) the T1w brain resampled onto the output grid, once."""
    outputnode = workflow.get_node("outputnode")
    if not _needs_grid(space):
        workflow.connect(warped, warped_field, outputnode, "t1w_template")
        return
    to_grid = resampling_node("to_grid", out_postfix="_space-template",
                              omp_nthreads=omp_nthreads)
    workflow.connect([
        (workflow.get_node("inputnode"), to_grid, [("t1w_brain", "input_image")]),
        (template_source, to_grid, [("grid_file", "reference_image")]),
        (xfm, to_grid, [(xfm_field, "transforms")]),
        (to_grid, outputnode, [("output_image", "t1w_template")]),
    ])


#: Outputs of :func:`init_batch_template_wf`, one list entry per subject.
BATCH_FIELDS = ("moving_images", "composite_transforms", "inverse_composite_transforms",
                "warped_images", "run_facts", "errors", "input_errors")


def init_batch_template_wf(
    *,
    n_subjects: int,
    template: str = sp.BUILTIN_TEMPLATE,
    template_mask: str | None = None,
    space: sp.Space | str | None = None,
    dof: int = choices.DEFAULT_DOF,
    metric: str = "auto",
    device: str = "cpu",
    seed: int = 0,
    omp_nthreads: int = 1,
    name: str = "batch_template_wf",
) -> pe.Workflow:
    """Register several subjects' T1w brains to a template in one batched engine call.

    Each subject is registered with the options :func:`init_template_wf` uses and gets the
    same transform (see :func:`niaffine.engine.register_batch`); feed the outputs, item by
    item through :class:`~niaffine.interfaces.batch.SelectBatchItem`, to
    ``init_single_subject_wf(precomputed_normalisation=True)``.

    Parameters
    ----------
    n_subjects : int
        Number of T1w brains in the batch (sets the node's memory estimate).
    template, template_mask, space, dof, metric, device, seed, omp_nthreads, name
        As :func:`init_template_wf`. The warped images lie on the registration target's
        grid; ``init_template_wf(precomputed=True, space=...)`` brings them to the space's.

    Inputs
    ------
    t1w_brains, t1w_masks
        Lists: skull-stripped T1w images and their brain masks.

    Outputs
    -------
    moving_images
        The T1w brains, in order.
    composite_transforms, inverse_composite_transforms, warped_images, run_facts
        Lists, per subject: T1w -> template and template -> T1w ITK transforms, the T1w brain
        in template space and the run facts (``None`` where that subject failed).
    errors, input_errors
        Lists, per subject: ``""`` or the one-line reason it failed, and whether bad input
        caused it.

    Examples
    --------
    >>> wf = init_batch_template_wf(n_subjects=4)
    >>> wf.get_node("registration").inputs.dof
    12
    """
    from niaffine.interfaces.batch import BatchAffineRegistration

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_brains", "t1w_masks"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(BATCH_FIELDS)), name="outputnode")
    template_source = _template_source(template, template_mask,
                                       _as_space(template, template_mask, space))
    registration = _registration_node(
        BatchAffineRegistration, dof=dof, metric=metric, seed=seed, device=device,
        omp_nthreads=omp_nthreads, mem_gb=1.0 + 0.5 * max(1, int(n_subjects)))
    # fmt: off
    workflow.connect([
        (inputnode, registration, [("t1w_brains", "moving_images")]),
        (template_source, registration, [("brain_file", "fixed_image")]),
        (inputnode, outputnode, [("t1w_brains", "moving_images")]),
        (registration, outputnode, [(field, field) for field in BATCH_FIELDS[1:]]),
    ])
    # fmt: on
    return workflow

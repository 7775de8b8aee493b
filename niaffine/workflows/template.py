# SPDX-License-Identifier: Apache-2.0
"""Spatial normalisation of the T1w brain to a template."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine.interfaces.registration import AffineRegistration
from niaffine.interfaces.reports import RegistrationReport
from niaffine.interfaces.templates import TemplateSource

from .common import compute_settings


def init_template_wf(
    *,
    template: str = "MNI152NLin2009aSym",
    template_mask: str | None = None,
    dof: int = 12,
    metric: str = "mi",
    device: str = "cpu",
    seed: int = 0,
    omp_nthreads: int = 1,
    name: str = "template_wf",
) -> pe.Workflow:
    """Register the T1w brain to a template (12 dof by default).

    Parameters
    ----------
    template : str
        ``"MNI152NLin2009aSym"`` (the 1 mm copy nilearn ships) or the path of a template
        image.
    template_mask : str, optional
        Brain mask on the template grid (give one for a template with a head); without
        it the template is taken as skull-stripped.
    dof : {3, 6, 7, 9, 12}
        Degrees of freedom.
    metric : str
        ``mi``, ``cr``, ``ncc``, ``lncc``, ``mse`` or ``auto``.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a CUDA node is marked for nipype's GPU slots.
    seed : int
        Random seed of the registration.
    omp_nthreads : int
        CPU threads of the registration node.
    name : str
        Workflow name.

    Inputs
    ------
    t1w_brain
        Skull-stripped T1w.
    t1w_mask
        T1w brain mask.

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
        Template image used.
    template_mask
        Template brain mask used.
    out_report
        SVG reportlet.
    run_facts
        JSON file of run facts.

    Examples
    --------
    >>> wf = init_template_wf(dof=9)
    >>> wf.get_node("registration").inputs.dof
    9
    """
    settings = compute_settings(device, omp_nthreads)
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_brain", "t1w_mask"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=["t1w2template_xfm", "template2t1w_xfm", "t1w_template", "template",
                    "template_mask", "out_report", "run_facts"]
        ),
        name="outputnode",
    )
    template_source = pe.Node(TemplateSource(template=str(template)), name="template_source")
    if template_mask:
        template_source.inputs.template_mask = str(template_mask)
    registration = pe.Node(
        AffineRegistration(dof=dof, metric=metric, random_seed=seed, **settings["inputs"]),
        name="registration",
        n_procs=settings["n_procs"],
        mem_gb=1.5,
    )
    template_report = pe.Node(
        RegistrationReport(title=f"T1w to template ({dof} dof)"), name="template_report"
    )

    # fmt: off
    workflow.connect([
        (inputnode, registration, [("t1w_brain", "moving_image"),
                                   ("t1w_mask", "moving_image_mask")]),
        (template_source, registration, [("brain_file", "fixed_image"),
                                         ("mask_file", "fixed_image_mask")]),
        (template_source, template_report, [("template_file", "fixed_image"),
                                            ("mask_file", "mask_file")]),
        (registration, template_report, [("warped_image", "moving_image")]),
        (template_source, outputnode, [("template_file", "template"),
                                       ("mask_file", "template_mask")]),
        (registration, outputnode, [("composite_transform", "t1w2template_xfm"),
                                    ("inverse_composite_transform", "template2t1w_xfm"),
                                    ("warped_image", "t1w_template"),
                                    ("run_facts", "run_facts")]),
        (template_report, outputnode, [("out_report", "out_report")]),
    ])
    # fmt: on
    return workflow

# SPDX-License-Identifier: Apache-2.0
"""Coregistration of another image of the subject to the T1w image."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine import choices
from niaffine.interfaces.registration import AffineRegistration
from niaffine.interfaces.reports import RegistrationReport

from .common import registration_node


def init_coreg_wf(
    *,
    dof: int = choices.DEFAULT_DOF_COREG,
    metric: str = "mi",
    device: str = "cpu",
    seed: int = 0,
    omp_nthreads: int = 1,
    title: str | None = None,
    name: str = "coreg_wf",
) -> pe.Workflow:
    """Register an image of the subject (T2w, FLAIR, PDw, BOLD or DWI reference) to the T1w.

    The metric is evaluated inside the T1w brain mask, so the moving image may keep its
    scalp. Rigid (6 dof) with mutual information by default.

    Parameters
    ----------
    dof : int
        Degrees of freedom, one of :data:`niaffine.choices.DOFS`.
    metric : str
        One of :data:`niaffine.choices.METRIC_CHOICES` (``auto``: the engine's default
        preset, mutual information).
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a CUDA node is marked for nipype's GPU slots.
    seed : int
        Random seed of the registration.
    omp_nthreads : int
        CPU threads of the registration node.
    title : str, optional
        Title of the reportlet (default: ``"<dof> dof coregistration to T1w"``).
    name : str
        Workflow name.

    Inputs
    ------
    in_file
        3D image to register (for a series, its reference volume).
    t1w_brain
        Skull-stripped T1w (fixed image).
    t1w_mask
        T1w brain mask.

    Outputs
    -------
    xfm
        ITK transform, image -> T1w (maps T1w points to image points: resamples the
        image into T1w space).
    inv_xfm
        ITK transform, T1w -> image.
    out_t1w
        The image resampled onto the T1w grid.
    out_report
        SVG reportlet: the image in T1w space over the T1w brain.
    run_facts
        JSON file of run facts.

    Examples
    --------
    >>> wf = init_coreg_wf()
    >>> wf.get_node("registration").inputs.dof
    6
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["in_file", "t1w_brain", "t1w_mask"]), name="inputnode"
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["xfm", "inv_xfm", "out_t1w", "out_report", "run_facts"]),
        name="outputnode",
    )
    registration = registration_node(AffineRegistration, dof=dof, metric=metric, seed=seed,
                                     device=device, omp_nthreads=omp_nthreads, mem_gb=1.0)
    coreg_report = pe.Node(
        RegistrationReport(title=title or f"{dof} dof coregistration to T1w"),
        name="coreg_report",
    )

    # fmt: off
    workflow.connect([
        (inputnode, registration, [("in_file", "moving_image"),
                                   ("t1w_brain", "fixed_image"),
                                   ("t1w_mask", "fixed_image_mask")]),
        (inputnode, coreg_report, [("t1w_brain", "fixed_image"),
                                   ("t1w_mask", "mask_file")]),
        (registration, coreg_report, [("warped_image", "moving_image")]),
        (registration, outputnode, [("composite_transform", "xfm"),
                                    ("inverse_composite_transform", "inv_xfm"),
                                    ("warped_image", "out_t1w"),
                                    ("run_facts", "run_facts")]),
        (coreg_report, outputnode, [("out_report", "out_report")]),
    ])
    # fmt: on
    return workflow

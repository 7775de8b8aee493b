# SPDX-License-Identifier: Apache-2.0
"""Brain extraction of the T1w image, with its reportlet."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine.interfaces.brainmask import BrainExtraction
from niaffine.interfaces.reports import RegistrationReport

from .common import compute_settings


def init_brainmask_wf(
    *,
    skull_stripped: bool = False,
    device: str = "cpu",
    omp_nthreads: int = 1,
    name: str = "brainmask_wf",
) -> pe.Workflow:
    """Brain mask and skull-stripped image of a T1w image (deepbet), and a reportlet.

    Parameters
    ----------
    skull_stripped : bool
        The T1w is already skull-stripped: its filled support is the mask (no deepbet).
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a CUDA node is marked for nipype's GPU slots.
    omp_nthreads : int
        CPU threads of the brain-extraction node.
    name : str
        Workflow name.

    Inputs
    ------
    t1w
        T1-weighted image (head).

    Outputs
    -------
    out_mask
        Brain mask (uint8, T1w grid).
    out_brain
        Skull-stripped T1w.
    out_report
        SVG reportlet: T1w with the mask contour.
    mask_volume_ml
        Mask volume in millilitres.

    Examples
    --------
    >>> wf = init_brainmask_wf()
    >>> sorted(wf.list_node_names())
    ['brain_extraction', 'inputnode', 'mask_report', 'outputnode']
    """
    settings = compute_settings(device, omp_nthreads)
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["out_mask", "out_brain", "out_report", "mask_volume_ml"]),
        name="outputnode",
    )
    brain_extraction = pe.Node(
        BrainExtraction(skull_stripped=skull_stripped, **settings["inputs"]),
        name="brain_extraction",
        n_procs=settings["n_procs"],
        mem_gb=1.5,
    )
    mask_report = pe.Node(RegistrationReport(title="T1w brain mask"), name="mask_report")

    # fmt: off
    workflow.connect([
        (inputnode, brain_extraction, [("t1w", "in_file")]),
        (inputnode, mask_report, [("t1w", "fixed_image")]),
        (brain_extraction, mask_report, [("out_mask", "mask_file")]),
        (brain_extraction, outputnode, [("out_mask", "out_mask"),
                                        ("out_file", "out_brain"),
                                        ("mask_volume_ml", "mask_volume_ml")]),
        (mask_report, outputnode, [("out_report", "out_report")]),
    ])
    # fmt: on
    return workflow

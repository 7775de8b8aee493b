# SPDX-License-Identifier: Apache-2.0
"""Resampling of an image into T1w and template space with a single interpolation."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine.interfaces.resampling import ApplyAffine


def resampling_node(name: str, *, out_postfix: str, interpolation: str = "Linear",
                    omp_nthreads: int = 1, mem_gb: float = 1.0) -> pe.Node:
    """An :class:`~niaffine.interfaces.resampling.ApplyAffine` node and its resources.

    Examples
    --------
    >>> node = resampling_node("to_t1w", out_postfix="_space-T1w", omp_nthreads=2)
    >>> node.inputs.out_postfix, node.n_procs
    ('_space-T1w', 2)
    """
    return pe.Node(ApplyAffine(interpolation=interpolation, num_threads=omp_nthreads,
                               out_postfix=out_postfix),
                   name=name, n_procs=omp_nthreads, mem_gb=mem_gb)


def init_resample_wf(
    *,
    with_template: bool = True,
    interpolation: str = "Linear",
    omp_nthreads: int = 1,
    mem_gb: float = 1.0,
    name: str = "resample_wf",
) -> pe.Workflow:
    """Bring an image (3D, or a 4D series) to T1w and template space in one interpolation.

    The coregistration and normalisation transforms are composed into one matrix, so the
    template-space image is interpolated once from the original data.

    Parameters
    ----------
    with_template : bool
        Also resample into template space.
    interpolation : {"Linear", "NearestNeighbor", "BSpline"}
        Interpolation (``NearestNeighbor`` for label images).
    omp_nthreads : int
        CPU threads of each resampling node.
    mem_gb : float
        Memory estimate of each resampling node (raise it for long series).
    name : str
        Workflow name.

    Inputs
    ------
    in_file
        Image or series in its own space.
    coreg_xfm
        Image -> T1w transform (from ``init_coreg_wf``).
    t1w_reference
        Image on the T1w grid.
    t1w2template_xfm
        T1w -> template transform (from ``init_template_wf``).
    template
        Image on the template grid.

    Outputs
    -------
    out_t1w
        The image on the T1w grid.
    out_template
        The image on the template grid (only when ``with_template``).

    Examples
    --------
    >>> sorted(init_resample_wf(with_template=False).list_node_names())
    ['inputnode', 'outputnode', 'to_t1w']
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["in_file", "coreg_xfm", "t1w_reference", "t1w2template_xfm", "template"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["out_t1w", "out_template"]), name="outputnode"
    )
    resources = {"interpolation": interpolation, "omp_nthreads": omp_nthreads, "mem_gb": mem_gb}
    to_t1w = resampling_node("to_t1w", out_postfix="_space-T1w", **resources)
    # fmt: off
    workflow.connect([
        (inputnode, to_t1w, [("in_file", "input_image"),
                             ("t1w_reference", "reference_image"),
                             ("coreg_xfm", "transforms")]),
        (to_t1w, outputnode, [("output_image", "out_t1w")]),
    ])
    # fmt: on
    if not with_template:
        return workflow

    merge_xfms = pe.Node(niu.Merge(2), name="merge_xfms", run_without_submitting=True)
    to_template = resampling_node("to_template", out_postfix="_space-template", **resources)
    # fmt: off
    workflow.connect([
        (inputnode, merge_xfms, [("t1w2template_xfm", "in1"),
                                 ("coreg_xfm", "in2")]),
        (inputnode, to_template, [("in_file", "input_image"),
                                  ("template", "reference_image")]),
        (merge_xfms, to_template, [("out", "transforms")]),
        (to_template, outputnode, [("output_image", "out_template")]),
    ])
    # fmt: on
    return workflow

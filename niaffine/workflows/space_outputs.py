# SPDX-License-Identifier: Apache-2.0
"""The template output spaces of one subject: one registration per template, one output
grid per space, and the nodes that bring images and series onto those grids.

``init_single_subject_wf`` builds, for every template of ``--output-spaces``
(:func:`niaffine.spaces.registration_targets`), one :func:`~.template.init_template_wf`;
each further resolution of that template resamples the T1w brain onto its own grid
(``TemplateSource.grid_file``) through the same transform. Series go onto the space's
``res-N`` grid, or (``res-native``, fMRIPrep's default for series) onto the template's
field of view at their own voxel size (:class:`~niaffine.interfaces.templates.TemplateGrid`).
"""

from __future__ import annotations

import dataclasses

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from niaffine import spaces as sp
from niaffine.interfaces.templates import TemplateGrid, TemplateSource

from .resample import resampling_node

#: Keys of one ``template_outputs`` item (one per template output space).
TEMPLATE_ROLES = ("t1w2template_xfm", "template2t1w_xfm", "t1w_template", "template",
                  "run_facts", "report")


def space_id(space: sp.Space) -> str:
    """A node-name-safe label of a space.

    >>> space_id(sp.parse_space("MNIPediatricAsym:cohort-2:res-2"))
    'MNIPediatricAsym_cohort2_res2'
    """
    return "_".join([space.name] + [f"{k}{v}" for k, v in space.entities().items()
                                    if k != "space"])


def registration_id(space: sp.Space) -> str:
    """The node-name label of a template's registration (its resolution left out).

    >>> registration_id(sp.parse_space("MNI152NLin6Asym:res-2"))
    'MNI152NLin6Asym'
    """
    return space_id(dataclasses.replace(space, res=None))


def spatial_reference(space: sp.Space) -> str:
    """The ``SpatialReference`` of images in ``space``: its name, or a user template's path."""
    return str(space.path) if space.kind == "file" else space.name


def template_groups(spaces) -> list[tuple[sp.Space, tuple[sp.Space, ...]]]:
    """The template spaces grouped by registration: ``(registered, output spaces)``.

    ``registered`` is the first space asked for of that template (its output grid is the
    template workflow's own); the output spaces are that template's spaces with distinct
    BIDS entities, in the order given.

    Examples
    --------
    >>> groups = template_groups(sp.parse_spaces(
    ...     ["MNI152NLin6Asym:res-2", "T1w", "MNI152NLin6Asym", "func"]))
    >>> [(first.label, [s.label for s in out]) for first, out in groups]
    [('MNI152NLin6Asym:res-2', ['MNI152NLin6Asym:res-2', 'MNI152NLin6Asym'])]
    """
    spaces = [space for space in spaces if space.is_template]
    groups = []
    for target in sp.registration_targets(spaces):
        key = (target.name, target.cohort, target.path)
        members = [s for s in spaces if (s.name, s.cohort, s.path) == key]
        unique = {tuple(sorted(s.entities().items())): s for s in reversed(members)}
        ordered = [s for s in members if s in unique.values()]
        groups.append((members[0], tuple(dict.fromkeys(ordered))))
    return groups


@dataclasses.dataclass
class SpacePorts:
    """Where the outputs of one template output space come from (``(node, field)`` pairs)."""

    space: sp.Space
    xfm: tuple
    inv_xfm: tuple
    grid: tuple
    t1w_template: tuple
    run_facts: tuple
    report: tuple


def connect_template_space(workflow, template_wf, registered: sp.Space, space: sp.Space,
                           t1w_brain: tuple, omp_nthreads: int) -> SpacePorts:
    """The ports of ``space``, registered by ``template_wf`` (built for ``registered``).

    A space on the registered space's grid takes the template workflow's outputs; another
    resolution gets its grid (``grid_<id>``, a :class:`TemplateSource`) and the T1w brain
    resampled onto it once (``t1w_<id>``).
    """
    out = "outputnode."
    ports = SpacePorts(space=space, xfm=(template_wf, out + "t1w2template_xfm"),
                       inv_xfm=(template_wf, out + "template2t1w_xfm"),
                       grid=(template_wf, out + "template"),
                       t1w_template=(template_wf, out + "t1w_template"),
                       run_facts=(template_wf, out + "run_facts"),
                       report=(template_wf, out + "out_report"))
    if space.kind != "standard" or space.output_res() == registered.output_res():
        return ports
    sid = space_id(space)
    grid = pe.Node(TemplateSource(template=space.label, output_resolution=space.output_res()),
                   name=f"grid_{sid}")
    to_grid = resampling_node(f"t1w_{sid}", out_postfix=f"_space-{sid}",
                              omp_nthreads=omp_nthreads)
    # fmt: off
    workflow.connect([
        (t1w_brain[0], to_grid, [(t1w_brain[1], "input_image")]),
        (grid, to_grid, [("grid_file", "reference_image")]),
        (template_wf, to_grid, [(out + "t1w2template_xfm", "transforms")]),
    ])
    # fmt: on
    return dataclasses.replace(ports, grid=(grid, "grid_file"),
                               t1w_template=(to_grid, "output_image"))


def series_grid(workflow, ports: SpacePorts, image: tuple, label: str) -> tuple:
    """The output grid of a series (or its reference) in ``ports.space``: the space's
    ``res-N`` grid, or for ``res-native`` the template's field of view at the voxel size of
    ``image`` (a ``(node, field)`` pair)."""
    if ports.space.output_res(series=True) != "native":
        return ports.grid
    grid = pe.Node(TemplateGrid(), name=f"grid_{label}_{space_id(ports.space)}")
    workflow.connect([(ports.grid[0], grid, [(ports.grid[1], "template_file")]),
                      (image[0], grid, [(image[1], "in_file")])])
    return grid, "out_file"


def chain_node(workflow, ports: SpacePorts, coreg: tuple, name: str) -> pe.Node:
    """``[t1w2template, image2t1w]``: the transforms of an image into ``ports.space``."""
    chain = pe.Node(niu.Merge(2), name=name, run_without_submitting=True)
    workflow.connect([(ports.xfm[0], chain, [(ports.xfm[1], "in1")]),
                      (coreg[0], chain, [(coreg[1], "in2")])])
    return chain


def bundle_space(workflow, ports: SpacePorts, roles: dict, name: str) -> pe.Node:
    """A node whose ``out`` is one space's outputs of an image: ``{"entities", \
"spatial_reference", role: path}`` (``roles``: ``{role: (node, field)}``)."""
    from .base import bundle_outputs

    names = ["entities", "spatial_reference", *roles]
    node = pe.Node(niu.Function(input_names=names, output_names=["out"],
                                function=bundle_outputs),
                   name=name, run_without_submitting=True)
    node.inputs.entities = ports.space.entities()
    node.inputs.spatial_reference = spatial_reference(ports.space)
    for role, (src, field) in roles.items():
        workflow.connect(src, field, node, role)
    return node


def merge_bundles(workflow, bundles: list, dst: tuple, name: str) -> None:
    """Connect ``bundles`` (nodes with ``out``) as one list into ``dst`` (``(node, field)``)."""
    if not bundles:
        setattr(dst[0].inputs, dst[1], [])
        return
    merge = pe.Node(niu.Merge(len(bundles)), name=name, run_without_submitting=True)
    for index, bundle in enumerate(bundles, start=1):
        workflow.connect(bundle, "out", merge, f"in{index}")
    workflow.connect(merge, "out", dst[0], dst[1])


def connect_static_image(workflow, ports_list, *, label: str, moving: tuple, coreg: tuple,
                         series: bool, omp_nthreads: int, mem_gb: float) -> list:
    """An image (or a series' reference, ``series``) resampled into every template space.

    Returns
    -------
    bundles : list of nipype nodes
        One per space, ``out``: ``{"entities", "spatial_reference", "image_template"}``.
    """
    bundles = []
    for ports in ports_list:
        sid = space_id(ports.space)
        chain = chain_node(workflow, ports, coreg, f"chain_{label}_{sid}")
        grid = series_grid(workflow, ports, moving, label) if series else ports.grid
        node = resampling_node(f"to_{sid}_{label}", out_postfix=f"_space-{sid}",
                               omp_nthreads=omp_nthreads, mem_gb=mem_gb)
        # fmt: off
        workflow.connect([
            (moving[0], node, [(moving[1], "input_image")]),
            (grid[0], node, [(grid[1], "reference_image")]),
            (chain, node, [("out", "transforms")]),
        ])
        # fmt: on
        bundles.append(bundle_space(workflow, ports, {"image_template": (node, "output_image")},
                                    f"outputs_{label}_{sid}"))
    return bundles


def connect_series(workflow, ports_list, *, label: str, series_wf, in_file: tuple,
                   device: str, omp_nthreads: int, mem_gb: float) -> list:
    """A realigned series, its reference and mask resampled into every template space
    (each volume once through ``hmc_t @ coreg @ normalisation``).

    Returns
    -------
    bundles : list of nipype nodes
        One per space, ``out``: ``{"entities", "spatial_reference", "series_template",
        "reference_template", "mask_template"}``.
    """
    from .hmc import init_series_space_wf

    out = "outputnode."
    bundles = []
    for ports in ports_list:
        sid = space_id(ports.space)
        chain = chain_node(workflow, ports, (series_wf, out + "coreg_xfm"),
                           f"chain_{label}_{sid}")
        grid = series_grid(workflow, ports, (series_wf, out + "reference"), label)
        space_wf = init_series_space_wf(device=device, omp_nthreads=omp_nthreads,
                                        mem_gb=mem_gb, name=f"{label}_{sid}_wf")
        # fmt: off
        workflow.connect([
            (in_file[0], space_wf, [(in_file[1], "inputnode.in_file")]),
            (series_wf, space_wf, [(out + "hmc_xfm", "inputnode.hmc_xfm"),
                                   (out + "reference", "inputnode.reference"),
                                   (out + "reference_mask", "inputnode.reference_mask")]),
            (chain, space_wf, [("out", "inputnode.transforms")]),
            (grid[0], space_wf, [(grid[1], "inputnode.grid")]),
        ])
        # fmt: on
        bundles.append(bundle_space(workflow, ports, {
            f"{role}_template": (space_wf, f"outputnode.{role}")
            for role in ("series", "reference", "mask")}, f"outputs_{label}_{sid}"))
    return bundles


def anat_bundles(workflow, ports_list) -> list:
    """One ``template_outputs`` item per template output space (``{"entities",
    "spatial_reference", role: path}`` with the roles of :data:`TEMPLATE_ROLES`)."""
    bundles = []
    for ports in ports_list:
        roles = {"t1w2template_xfm": ports.xfm, "template2t1w_xfm": ports.inv_xfm,
                 "t1w_template": ports.t1w_template, "template": ports.grid,
                 "run_facts": ports.run_facts, "report": ports.report}
        bundles.append(bundle_space(workflow, ports, roles,
                                    f"template_outputs_{space_id(ports.space)}"))
    return bundles

# SPDX-License-Identifier: Apache-2.0
"""Build-only tests: every workflow, parametrised over its options (nothing runs)."""

from __future__ import annotations

import itertools

import pytest
from nipype.pipeline import engine as pe

from niaffine.workflows.base import OUTPUT_FIELDS, init_single_subject_wf, subject_spaces
from niaffine.workflows.brainmask import init_brainmask_wf
from niaffine.workflows.coreg import init_coreg_wf
from niaffine.workflows.resample import init_resample_wf
from niaffine.workflows.template import init_template_wf


def _fields(workflow, node):
    return set(workflow.get_node(node).outputs.copyable_trait_names())


def _inputs(workflow, node="inputnode"):
    return set(workflow.get_node(node).inputs.copyable_trait_names())


def _gpu_nodes(workflow):
    return sorted(node.fullname for node in workflow._get_all_nodes() if node.is_gpu_node())


def _check_graph(workflow):
    """The graph builds and every node name is unique within its workflow."""
    workflow._create_flat_graph()
    names = workflow.list_node_names()
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("skull_stripped", "device", "threads"),
                         [(False, "cpu", 1), (True, "cpu", 4), (False, "cuda", 4)])
def test_brainmask_wf(skull_stripped, device, threads):
    wf = init_brainmask_wf(skull_stripped=skull_stripped, device=device, omp_nthreads=threads,
                           name="bm_wf")
    assert wf.name == "bm_wf"
    assert _inputs(wf) == {"t1w"}
    assert _fields(wf, "outputnode") == {"out_mask", "out_brain", "out_report", "mask_volume_ml"}
    node = wf.get_node("brain_extraction")
    assert node.inputs.skull_stripped is skull_stripped
    gpu = device == "cuda"
    assert node.is_gpu_node() is gpu
    assert node.n_procs == (1 if gpu else threads)
    _check_graph(wf)


@pytest.mark.parametrize(("dof", "metric", "device"),
                         list(itertools.product([6, 9, 12], ["mi", "cr", "ncc"], ["cpu", "cuda"])))
def test_coreg_wf(dof, metric, device):
    wf = init_coreg_wf(dof=dof, metric=metric, device=device, seed=3, omp_nthreads=2)
    assert _inputs(wf) == {"in_file", "t1w_brain", "t1w_mask"}
    assert _fields(wf, "outputnode") == {"xfm", "inv_xfm", "out_t1w", "out_report", "run_facts"}
    reg = wf.get_node("registration")
    assert (reg.inputs.dof, reg.inputs.metric, reg.inputs.random_seed) == (dof, metric, 3)
    assert _gpu_nodes(wf) == (["coreg_wf.registration"] if device == "cuda" else [])
    # the metric is masked by the T1w brain mask
    edges = wf._graph.get_edge_data(wf.get_node("inputnode"), reg)["connect"]
    assert ("t1w_mask", "fixed_image_mask") in edges
    _check_graph(wf)


def test_coreg_defaults_rigid_mi():
    reg = init_coreg_wf().get_node("registration")
    assert (reg.inputs.dof, reg.inputs.metric, reg.inputs.use_gpu) == (6, "mi", False)


@pytest.mark.parametrize(("template", "with_mask", "dof"),
                         [("MNI152NLin2009aSym", False, 12), ("MNI152NLin2009aSym", False, 9),
                          ("user", True, 12), ("user", False, 7)])
def test_template_wf(template, with_mask, dof, tmp_path):
    if template == "user":
        template = str(tmp_path / "tpl.nii.gz")
    mask = str(tmp_path / "tpl_mask.nii.gz") if with_mask else None
    if mask:  # File(exists=True) inputs are checked at build time
        (tmp_path / "tpl_mask.nii.gz").write_bytes(b"")
    wf = init_template_wf(template=template, template_mask=mask, dof=dof)
    assert _inputs(wf) == {"t1w_brain", "t1w_mask"}
    assert _fields(wf, "outputnode") == {
        "t1w2template_xfm", "template2t1w_xfm", "t1w_template", "template", "template_mask",
        "out_report", "run_facts",
    }
    source = wf.get_node("template_source")
    assert source.inputs.template == template
    assert wf.get_node("registration").inputs.dof == dof
    _check_graph(wf)


def test_template_defaults():
    reg = init_template_wf().get_node("registration")
    assert reg.inputs.dof == 12


@pytest.mark.parametrize(("with_template", "interpolation"),
                         [(True, "Linear"), (False, "Linear"), (True, "NearestNeighbor")])
def test_resample_wf(with_template, interpolation):
    wf = init_resample_wf(with_template=with_template, interpolation=interpolation)
    assert _inputs(wf) == {"in_file", "coreg_xfm", "t1w_reference", "t1w2template_xfm",
                           "template"}
    nodes = {"to_t1w", "inputnode", "outputnode"}
    if with_template:
        nodes |= {"to_template", "merge_xfms"}
    assert set(wf.list_node_names()) == nodes
    assert wf.get_node("to_t1w").inputs.interpolation == interpolation
    _check_graph(wf)


def _subject(tmp_path, suffixes=("T2w", "bold"), session=None):
    images = []
    for index, suffix in enumerate(suffixes):
        dwi = suffix == "dwi"
        images.append({"path": str(tmp_path / f"img{index}_{suffix}.nii.gz"), "suffix": suffix,
                       "bvals": str(tmp_path / "dwi.bval") if dwi else None,
                       "bvecs": str(tmp_path / "dwi.bvec") if dwi else None,
                       "metadata": {"PhaseEncodingDirection": "j-"} if dwi else {}})
    (tmp_path / "dwi.bval").write_text("0 1000\n")
    (tmp_path / "dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    return {"subject": "01", "session": session, "t1w": str(tmp_path / "T1w.nii.gz"),
            "images": images}


@pytest.mark.parametrize(
    ("suffixes", "spaces", "resample_bold", "device", "hmc"),
    [
        (("T2w", "bold"), ("T1w", "MNI152NLin2009aSym"), False, "cpu", True),
        (("T2w", "bold"), ("T1w", "MNI152NLin2009aSym"), False, "cpu", False),
        (("T2w", "bold"), ("T1w", "MNI152NLin2009aSym"), True, "cuda", False),
        (("T2w", "bold", "dwi"), ("T1w", "MNI152NLin2009aSym"), False, "cuda", True),
        (("T2w", "FLAIR", "PDw", "bold", "dwi"), ("T1w",), False, "cpu", True),
        (("T2w", "FLAIR", "PDw", "bold", "dwi"), ("T1w",), False, "cpu", False),
        ((), ("T1w", "MNI152NLin2009aSym"), False, "cpu", True),
        ((), ("T1w",), False, "cpu", True),
        (("dwi",), ("MNI152NLin2009aSym",), True, "cpu", False),
        (("dwi",), ("MNI152NLin2009aSym",), False, "cpu", True),
    ],
)
def test_single_subject_wf(tmp_path, suffixes, spaces, resample_bold, device, hmc):
    data = _subject(tmp_path, suffixes, session="A")
    wf = init_single_subject_wf(subject_data=data, spaces=spaces, hmc=hmc,
                                resample_bold=resample_bold, device=device, omp_nthreads=2)
    assert wf.name == "single_subject_wf"
    assert _fields(wf, "outputnode") == set(OUTPUT_FIELDS)
    normalise = "MNI152NLin2009aSym" in spaces
    names = wf.list_node_names()
    assert ("template_wf.registration" in names) is normalise
    out = wf.get_node("outputnode").inputs
    if not normalise:
        assert out.t1w2template_xfm is None and out.template is None
        assert out.images_template == []
    if not suffixes:
        assert out.coreg_xfms == [] and out.images_t1w == []
    for index, suffix in enumerate(suffixes):
        label = f"{suffix.lower()}{index}"
        assert f"outputs_{label}" in names
        if hmc and suffix in ("bold", "dwi"):  # realigned, then resampled once per volume
            series = f"series_{label}_wf"
            assert f"{series}.{suffix}_hmc_wf.realign" in names
            assert f"{series}.coreg_wf.registration" in names
            assert f"{series}.resample_wf.series_t1w" in names
            # DWI: T1w space only (where its b-vectors are rotated)
            in_template = normalise and suffix == "bold"
            space_wf = f"{label}_MNI152NLin2009aSym_wf"
            assert (f"{space_wf}.series" in names) is in_template
            # res-native: the template's field of view at the series' voxel size
            assert (f"grid_{label}_MNI152NLin2009aSym" in names) is in_template
            continue
        assert f"coreg_{label}_wf.registration" in names
        assert (f"image_reference_{label}" in names) is (suffix in ("bold", "dwi"))
        assert (f"to_MNI152NLin2009aSym_{label}" in names) is normalise
    # one reportlet per registration plus the brain mask; one metrics file per registration
    n_reg = int(normalise) + len(suffixes)
    assert wf.get_node("merge_reportlets").interface._numinputs == 1 + n_reg
    if n_reg:
        assert wf.get_node("merge_metrics").interface._numinputs == n_reg
    gpu = _gpu_nodes(wf)
    if device == "cuda":  # + per series: realignment and its resampling (1 or 2 spaces)
        assert "brainmask_wf.brain_extraction" in gpu
        series_gpu = sum(2 + int(normalise and s == "bold") for s in suffixes
                         if hmc and s in ("bold", "dwi"))
        assert len(gpu) == 1 + n_reg + series_gpu
    else:
        assert gpu == []
    _check_graph(wf)


def test_bold_series_or_reference(tmp_path):
    """``resample_bold`` feeds the whole series (not the reference) to the resampling."""
    data = _subject(tmp_path, ("bold",))
    for resample_bold, source in ((False, "image_reference_bold0"), (True, "select_image_bold0")):
        wf = init_single_subject_wf(subject_data=data, resample_bold=resample_bold, hmc=False)
        resample = wf.get_node("resample_bold0_wf")
        sources = [u.name for u, v in wf._graph.in_edges(resample)]
        assert source in sources


def test_gpu_nodes_fit_multiproc_slots(tmp_path):
    """CUDA nodes ask for one GPU slot each, so ``n_gpu_procs=1`` runs them one at a time."""
    wf = init_single_subject_wf(subject_data=_subject(tmp_path), device="cuda", omp_nthreads=8)
    for node in wf._get_all_nodes():
        if node.is_gpu_node():
            assert node.n_procs == 1
            assert node.inputs.device == "cuda"


@pytest.mark.parametrize("bad", [
    {"subject": "01", "t1w": None, "images": []},
    {"subject": "01", "t1w": "T1w.nii.gz", "images": [{"path": "x.nii.gz", "suffix": "T1map"}]},
])
def test_single_subject_rejects_bad_data(bad):
    with pytest.raises(ValueError):
        init_single_subject_wf(subject_data=bad)


def test_subject_spaces(tmp_path):
    """Entries or Space objects; a ``template`` path replaces the template spaces."""
    tpl = tmp_path / "tpl-Mine_T1w.nii.gz"
    tpl.write_bytes(b"")
    assert [s.label for s in subject_spaces(["func", "MNI152NLin6Asym:res-2"])] == [
        "T1w", "func", "MNI152NLin6Asym:res-2"]
    spaces = subject_spaces(["T1w", "MNI152NLin2009aSym"], template=str(tpl))
    assert [(s.name, s.kind) for s in spaces] == [("T1w", "nonstandard"), ("Mine", "file")]
    assert subject_spaces(["T1w"], template=str(tpl))[-1].name == "T1w"


def test_several_template_spaces(tmp_path):
    """One registration per template; a further resolution gets its own grid node."""
    wf = init_single_subject_wf(
        subject_data=_subject(tmp_path, ("T2w", "bold")),
        spaces=["MNI152NLin2009aSym:res-2", "MNI152NLin2009aSym", "T1w", "func",
                "MNI152NLin2009aSym:res-native"])
    names = wf.list_node_names()
    assert [n for n in names if n.endswith(".registration") and "template" in n] == [
        "template_wf.registration"]
    assert "grid_MNI152NLin2009aSym" in names and "t1w_MNI152NLin2009aSym" in names
    assert {"bold1_MNI152NLin2009aSym_res2_wf.series", "bold1_MNI152NLin2009aSym_wf.series",
            "to_MNI152NLin2009aSym_res2_t2w0", "to_MNI152NLin2009aSym_t2w0"} <= set(names)
    assert "grid_bold1_MNI152NLin2009aSym_res2" not in names  # res-2: the template's grid
    assert wf.get_node("template_wf.template_source").inputs.output_resolution == "2"
    _check_graph(wf)


def test_workflows_are_nipype_workflows(tmp_path):
    for wf in (init_brainmask_wf(), init_coreg_wf(), init_template_wf(), init_resample_wf(),
               init_single_subject_wf(subject_data=_subject(tmp_path))):
        assert isinstance(wf, pe.Workflow)
        assert {"inputnode", "outputnode"} <= set(wf.list_node_names())


@pytest.mark.parametrize(("n_gpu_procs", "fits"), [(1, True), (0, False)])
def test_multiproc_gpu_accounting(tmp_path, n_gpu_procs, fits):
    """MultiProc's own resource check accepts the CUDA graph with one GPU slot, not with none."""
    from nipype.pipeline.plugins.multiproc import MultiProcPlugin

    wf = init_single_subject_wf(subject_data=_subject(tmp_path), device="cuda", omp_nthreads=2)
    wf.base_dir = str(tmp_path / "work")
    graph = wf._create_flat_graph()
    plugin = MultiProcPlugin(plugin_args={"n_procs": 2, "n_gpu_procs": n_gpu_procs,
                                          "memory_gb": 8, "raise_insufficient": True})
    try:
        if fits:
            plugin._prerun_check(graph)
        else:
            with pytest.raises(RuntimeError, match="GPU"):
                plugin._prerun_check(graph)
    finally:
        plugin.pool.shutdown(wait=False)


@pytest.mark.parametrize(("brainmask", "normalisation"), [(True, True), (False, True), (True, False)])
def test_precomputed_brainmask_and_normalisation(tmp_path, brainmask, normalisation):
    """Given brain mask / template registration: nothing computes them inside the graph."""
    wf = init_single_subject_wf(subject_data=_subject(tmp_path, ("T2w",)),
                                precomputed_brainmask=brainmask,
                                precomputed_normalisation=normalisation)
    names = wf.list_node_names()
    assert ("brainmask_wf.brain_extraction" in names) is not brainmask
    assert ("anatnode" in names) is brainmask
    assert ("template_wf.registration" in names) is not normalisation
    assert ("normnode" in names) is normalisation
    if normalisation:
        assert _inputs(wf, "normnode") == {"t1w2template_xfm", "template2t1w_xfm",
                                           "t1w_template", "template_run_facts"}
        assert "template_wf.template_report" in names  # the reportlet is still made here
    assert "coreg_t2w0_wf.registration" in names
    _check_graph(wf)


def test_precomputed_normalisation_ignored_without_template(tmp_path):
    wf = init_single_subject_wf(subject_data=_subject(tmp_path, ()), spaces=["T1w"],
                                precomputed_normalisation=True)
    assert "normnode" not in wf.list_node_names()


def test_batch_template_wf(tmp_path):
    from niaffine.workflows.template import BATCH_FIELDS, init_batch_template_wf

    wf = init_batch_template_wf(n_subjects=4, dof=9, device="cuda", seed=3, omp_nthreads=4)
    registration = wf.get_node("registration")
    assert (registration.inputs.dof, registration.inputs.random_seed) == (9, 3)
    assert registration.is_gpu_node() and registration.n_procs == 1
    assert registration.mem_gb == pytest.approx(3.0)
    assert _fields(wf, "outputnode") == set(BATCH_FIELDS)
    _check_graph(wf)

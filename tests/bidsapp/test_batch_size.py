# SPDX-License-Identifier: Apache-2.0
"""``--batch-size N``: T1w-to-template registrations of N subjects in one engine call.

The graph test checks the wiring; the end-to-end test runs the real app on a generated
two-subject dataset (three T1w images: sub-01, sub-02 ses-A and ses-B) with and without
batches and compares every transform.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from niaffine.bidsapp.parser import build_parser
from niaffine.bidsapp.run import main
from niaffine.bidsapp.settings import Settings
from niaffine.bidsapp.workflow import init_niaffine_wf
from niaffine.data.bids_demo import DemoSubject, generate_demo_dataset
from niaffine.spaces import parse_spaces

#: Batched and single transforms agree to float32 round-off (measured 0.004-0.012 mm).
MAX_BATCH_DIFFERENCE_MM = 0.05


def _subjects(tmp_path, n=3):
    return [{"subject": f"{k:02d}", "session": None, "t1w": str(tmp_path / f"sub-{k:02d}.nii.gz"),
             "images": [{"path": str(tmp_path / f"sub-{k:02d}_T2w.nii.gz"), "suffix": "T2w",
                         "bvals": None}]}
            for k in range(1, n + 1)]


def _settings(tmp_path, **kwargs):
    return Settings(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "work", **kwargs)


def test_parser_takes_a_positive_batch_size(capsys):
    parse = build_parser().parse_args
    assert parse(["b", "o", "participant"]).batch_size == 1
    assert parse(["b", "o", "participant", "--batch-size", "8"]).batch_size == 8
    with pytest.raises(SystemExit) as info:
        parse(["b", "o", "participant", "--batch-size", "0"])
    assert info.value.code == 2


def test_batched_graph(tmp_path):
    """Three subjects, batches of two: two batch workflows, brain masks beside each subject."""
    wf = init_niaffine_wf(_settings(tmp_path, batch_size=2, device="cuda"), _subjects(tmp_path))
    names = wf.list_node_names()
    assert {n.split(".")[0] for n in names if n.startswith("batch_template_")} == {
        "batch_template_0_wf", "batch_template_1_wf"}
    for k in ("01", "02", "03"):
        assert f"sub_{k}_anat_wf.brain_extraction" in names
        assert f"sub_{k}_batch" in names
        assert f"sub_{k}_wf.brainmask_wf.brain_extraction" not in names
        assert f"sub_{k}_wf.template_wf.registration" not in names
        assert f"sub_{k}_wf.coreg_t2w0_wf.registration" in names
    first = wf.get_node("batch_template_0_wf.registration")
    assert first.is_gpu_node() and first.inputs.dof == 12
    assert [wf.get_node(f"sub_{k}_batch").inputs.index for k in ("01", "02", "03")] == [0, 1, 0]
    wf._create_flat_graph()  # a DAG at every level


def test_batched_graph_two_templates(tmp_path):
    """Each template is registered in its own batches; resolutions share them."""
    spaces = parse_spaces(["MNI152NLin2009aSym:res-2", "MNI152NLin2009aSym", "T1w",
                           "MNI152NLin6Asym:res-2"])
    wf = init_niaffine_wf(_settings(tmp_path, batch_size=2, spaces=spaces), _subjects(tmp_path))
    names = wf.list_node_names()
    assert {n.split(".")[0] for n in names if n.startswith("batch_template")} == {
        "batch_template_0_wf", "batch_template_1_wf", "batch_template_MNI152NLin6Asym_0_wf",
        "batch_template_MNI152NLin6Asym_1_wf"}
    source = wf.get_node("batch_template_0_wf.template_source")
    assert source.inputs.template == "MNI152NLin2009aSym:res-2"
    for k in ("01", "02", "03"):
        assert {f"sub_{k}_batch", f"sub_{k}_MNI152NLin6Asym_batch"} <= set(names)
        assert f"sub_{k}_wf.template_MNI152NLin6Asym_wf.template_source" in names
        assert not [n for n in names if n.startswith(f"sub_{k}_wf.") and n.endswith(
            ".registration") and "template" in n]
    wf._create_flat_graph()


@pytest.mark.parametrize("kwargs", [{"batch_size": 1},
                                    {"batch_size": 4, "output_spaces": ("T1w",),
                                     "template_space": None,
                                     "spaces": parse_spaces(["T1w"])}])
def test_unbatched_graph(tmp_path, kwargs):
    """Batch size 1, or no template space: every subject registers on its own."""
    wf = init_niaffine_wf(_settings(tmp_path, **kwargs), _subjects(tmp_path, 2))
    names = wf.list_node_names()
    assert not [n for n in names if "batch" in n or "anat_wf" in n]
    assert "sub_01_wf.brainmask_wf.brain_extraction" in names


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory) -> Path:
    """sub-01 (2 mm LPS, tilted) and sub-02 with two sessions on another grid; T1w and T2w."""
    root = tmp_path_factory.mktemp("batch") / "bids"
    subjects = (DemoSubject("01", (None,), (2.0, 2.0, 2.0), (2.2, 2.2, 2.5), "LPS", 6.0),
                DemoSubject("02", ("A", "B"), (2.2, 2.0, 2.4), (2.2, 2.2, 2.5), "RAS", -5.0))
    generate_demo_dataset(root, subjects=subjects, seed=2, resolution=2.0, bold=False)
    return root


def _run(bids: Path, base: Path, *extra) -> Path:
    out = base / "out"
    code = main([str(bids), str(out), "participant", "-w", str(base / "work"), "--nprocs", "2",
                 "--omp-nthreads", "1", "--device", "cpu", "--skip-bids-validation", *extra])
    assert code == 0
    return out


def _displacement_mm(a: np.ndarray, b: np.ndarray) -> float:
    """Largest displacement between two affines over a sphere of 80 mm radius."""
    pts = np.random.default_rng(0).normal(size=(2000, 3))
    pts = 80.0 * pts / np.linalg.norm(pts, axis=1, keepdims=True)
    homogeneous = np.c_[pts, np.ones(len(pts))]
    return float(np.linalg.norm((homogeneous @ (a - b).T)[:, :3], axis=1).max())


def test_batched_run_equals_one_by_one(two_subjects, tmp_path):
    """Batches of two (sub-01 with sub-02 ses-A; ses-B alone) against no batches."""
    from niaffine.io import load_transform

    single = _run(two_subjects, tmp_path / "single")
    batched = _run(two_subjects, tmp_path / "batched", "--batch-size", "2")
    files = sorted(p.relative_to(single) for p in single.rglob("*")
                   if p.is_file() and "logs" not in p.parts)
    assert files == sorted(p.relative_to(batched) for p in batched.rglob("*")
                           if p.is_file() and "logs" not in p.parts)
    xfms = [f for f in files if f.name.endswith("_xfm.txt")]
    assert len(xfms) == 12
    for xfm in xfms:
        difference = _displacement_mm(load_transform(single / xfm), load_transform(batched / xfm))
        assert difference < MAX_BATCH_DIFFERENCE_MM, (xfm, difference)
    sizes = {}
    for sidecar in batched.rglob("*from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json"):
        sizes[sidecar.name.split("_from")[0]] = json.loads(sidecar.read_text())["BatchSize"]
    assert sizes == {"sub-01": 2, "sub-02_ses-A": 2, "sub-02_ses-B": 1}
    for sidecar in single.rglob("*from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json"):
        assert "BatchSize" not in json.loads(sidecar.read_text())

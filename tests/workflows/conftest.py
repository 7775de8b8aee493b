# SPDX-License-Identifier: Apache-2.0
"""Fixtures for workflow run tests: a tiny synthetic subject and a 2 mm template."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from niaffine.workflows.base import OUTPUT_FIELDS
from tests.interfaces.conftest import downsample


def _collect(**fields):
    """Write the fields a workflow's outputnode received to outputs.json."""
    import json
    import os

    path = os.path.abspath("outputs.json")
    with open(path, "w") as stream:
        json.dump(fields, stream, indent=1)
    return path


def run_collecting(workflow, base_dir, fields=OUTPUT_FIELDS, *, plugin="MultiProc",
                   plugin_args=None) -> dict:
    """Run ``workflow`` inside a wrapper that records its outputnode; return the outputs."""
    top = pe.Workflow(name="top", base_dir=str(base_dir))
    collect = pe.Node(Function(input_names=list(fields), output_names=["out"],
                               function=_collect), name="collect")
    top.connect([(workflow, collect, [(f"outputnode.{field}", field) for field in fields])])
    top.config["execution"].update({"poll_sleep_duration": 0.2,
                                    "crashdump_dir": str(base_dir),
                                    "crashfile_format": "txt"})
    top.run(plugin=plugin, plugin_args=plugin_args or {"n_procs": 2})
    return json.loads((base_dir / "top" / "collect" / "outputs.json").read_text())


@pytest.fixture(scope="session")
def template_2mm(tmp_path_factory):
    """The MNI152 2009a T1 and brain mask at 2 mm, as a user-given template."""
    from niaffine.data.templates import load_mni_brain_mask, load_mni_t1

    folder = tmp_path_factory.mktemp("template")
    downsample(load_mni_t1()).to_filename(folder / "tpl_T1w.nii.gz")
    mask = downsample(load_mni_brain_mask())
    nb.Nifti1Image((np.asarray(mask.dataobj) >= 0.5).astype(np.uint8), mask.affine).to_filename(
        folder / "tpl_mask.nii.gz"
    )
    return {"t1": str(folder / "tpl_T1w.nii.gz"), "mask": str(folder / "tpl_mask.nii.gz")}


def subject_from_truth(root, key: str, entry: dict) -> dict:
    """The plain subject description the BIDS-App builds, from a demo dataset entry."""
    subject, _, session = key.partition("_ses-")
    images = [{"path": str(root / path), "suffix": info["suffix"], "bvals": None}
              for path, info in entry["images"].items()]
    return {"subject": subject[4:], "session": session or None, "t1w": str(root / entry["t1w"]),
            "images": images}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """One synthetic subject at 2 mm: T1w with a scalp, a T2w and a 3-volume BOLD run."""
    from niaffine.data.bids_demo import TINY_SUBJECTS, generate_demo_dataset

    root = tmp_path_factory.mktemp("bids")
    truth = generate_demo_dataset(root, subjects=TINY_SUBJECTS, seed=0, resolution=2.0,
                                  bold_volumes=3)
    return root, truth

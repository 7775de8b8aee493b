# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the BIDS-App tests: generated datasets and a fast stand-in workflow."""

import functools
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from niaffine.data.bids_demo import TINY_SUBJECTS, generate_demo_dataset

from . import fake_workflow


def install_fake_workflows(monkeypatch, **kwargs):
    """Make ``niaffine.workflows.base.init_single_subject_wf`` the fast stand-in."""
    module = types.ModuleType("niaffine.workflows.base")
    module.init_single_subject_wf = functools.partial(fake_workflow.init_single_subject_wf,
                                                      **kwargs)
    monkeypatch.setitem(sys.modules, "niaffine.workflows.base", module)


ROOT = Path(__file__).resolve().parents[2]
#: ``python -c`` program: the BIDS-App with the stand-in workflow (its keywords in $FAKE_KW).
_APP = (
    "import functools, json, os, sys, types\n"
    "from tests.bidsapp import fake_workflow\n"
    "m = types.ModuleType('niaffine.workflows.base')\n"
    "m.init_single_subject_wf = functools.partial(fake_workflow.init_single_subject_wf,\n"
    "                                             **json.loads(os.environ['FAKE_KW']))\n"
    "sys.modules['niaffine.workflows.base'] = m\n"
    "from niaffine.bidsapp.run import main\n"
    "sys.exit(main(sys.argv[1:]))\n")


def snapshot(root: Path) -> dict:
    """``{relative path: (size, mtime)}`` of everything under ``root`` (to prove it untouched)."""
    return {p.relative_to(root).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def run_app(capsys, *argv) -> tuple[int, str]:
    """``main(argv)`` in this process: exit code and everything printed."""
    from niaffine.bidsapp.run import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def start_app(*argv, fake=None, **popen) -> subprocess.Popen:
    """The BIDS-App (stand-in workflow) in its own process and session, output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "FAKE_KW": json.dumps(fake or {})}
    return subprocess.Popen([sys.executable, "-c", _APP, *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory) -> Path:
    """One 2 mm subject with T1w, T2w and a 5-volume BOLD (about 8 s to make). Read-only."""
    root = tmp_path_factory.mktemp("tiny") / "bids"
    generate_demo_dataset(root, subjects=TINY_SUBJECTS, seed=1)
    return root


def write_skeleton(root: Path, subjects=("01",), *, no_t1w=(), sessions=None) -> Path:
    """A minimal valid BIDS dataset with tiny (12^3) random images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "skeleton", "BIDSVersion": "1.10.0", "DatasetType": "raw",
         "Authors": ["a", "b"]}))
    (root / "README").write_text("skeleton dataset for tests\n")
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for sub in subjects:
        for ses in (sessions or [None]):
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            data = (rng.random((12, 12, 12)) * 100).astype(np.int16)
            suffixes = ["T2w"] if sub in no_t1w else ["T1w", "T2w"]
            for suffix in suffixes:
                nb.save(nb.Nifti1Image(data, affine), folder / f"{prefix}_{suffix}.nii.gz")
    return root


@pytest.fixture
def skeleton(tmp_path) -> Path:
    """Two tiny subjects, both with T1w and T2w."""
    return write_skeleton(tmp_path / "bids", subjects=("01", "02"))


@pytest.fixture
def tiny_copy(tiny_bids, tmp_path) -> Path:
    """A writable copy of :func:`tiny_bids`."""
    return Path(shutil.copytree(tiny_bids, tmp_path / "bids"))

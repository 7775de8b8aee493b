# SPDX-License-Identifier: Apache-2.0
"""The threading policy: set before torch loads, thread counts from affinity and cgroup quota."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from niaffine import threads

CLEAN = {k: v for k, v in os.environ.items()
         if k not in threads.THREAD_VARIABLES + ("OMP_WAIT_POLICY",)}


def _python(code: str, *, cpus: set[int] | None = None, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (optionally pinned to ``cpus``); it prints JSON."""
    pin = None
    if cpus is not None:
        def pin():
            os.sched_setaffinity(0, cpus)
    out = subprocess.run([sys.executable, "-c", code], env=CLEAN | (env or {}), check=True,
                         capture_output=True, text=True, timeout=120, preexec_fn=pin)
    return json.loads(out.stdout.strip().splitlines()[-1])


REPORT = ("import json, os, torch; print(json.dumps({'policy': os.environ.get('OMP_WAIT_POLICY'),"
          " 'omp': os.environ.get('OMP_NUM_THREADS'), 'torch': torch.get_num_threads()}))")


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads._cgroup_quota(tmp_path) == 1.0
    assert threads.available_cpus(cgroup_root=tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads._cgroup_quota(tmp_path) is None


def test_environment_keeps_user_choices_unless_threads_are_given():
    env = {"OMP_NUM_THREADS": "7"}
    assert threads.configure_environment(environ=env) == 7
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["MKL_NUM_THREADS"] == "7"
    assert threads.configure_environment(2, environ=env) == 2
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    env = {"OMP_WAIT_POLICY": "active"}
    threads.configure_environment(environ=env)
    assert env["OMP_WAIT_POLICY"] == "active"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_engine_import_sets_policy_before_torch_from_affinity():
    """The Python API: importing the engine first sets the policy and the affinity's count."""
    facts = _python("import niaffine.engine\n" + REPORT, cpus={0})
    assert facts == {"policy": "PASSIVE", "omp": "1", "torch": 1}


def test_user_settings_win_over_the_defaults():
    facts = _python("import niaffine.engine\n" + REPORT,
                    env={"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"})
    assert facts == {"policy": "ACTIVE", "omp": "1", "torch": 1}


def test_register_cli_sets_policy_and_threads(tmp_path):
    """``niaffine-register --threads 1``: the policy is in place and torch uses one thread."""
    code = ("import sys; from niaffine.cli import main\n"
            f"code = main([{str(tmp_path / 'no.nii')!r}, {str(tmp_path / 'no.nii')!r}, "
            f"'-o', {str(tmp_path / 'x.txt')!r}, '--threads', '1'])\n"
            "assert code == 65, code\n" + REPORT)
    assert _python(code) == {"policy": "PASSIVE", "omp": "1", "torch": 1}


def test_realign_cli_sets_policy_and_threads(tmp_path):
    """``niaffine-realign --threads 1``: the same policy, set before torch loads (a missing
    series is still exit code 65)."""
    code = ("import sys; from niaffine.realign import main\n"
            f"code = main([{str(tmp_path / 'no.nii.gz')!r}, '-o', {str(tmp_path / 'x.txt')!r}, "
            "'--threads', '1'])\n"
            "assert code == 65, code\n" + REPORT)
    assert _python(code) == {"policy": "PASSIVE", "omp": "1", "torch": 1}


def test_bids_app_sets_policy_before_torch_and_its_workers_inherit_it():
    """``niaffine ...``: the policy is in the environment before anything loads torch, so the
    processes MultiProc starts for the nodes inherit it."""
    code = ("import json, multiprocessing as mp, os, sys\n"
            "from niaffine.bidsapp.run import main\n"
            "assert main(['--version']) == 0 and 'torch' not in sys.modules\n"
            "ctx = mp.get_context('spawn')\n"
            "with ctx.Pool(1) as pool:\n"
            "    child = pool.apply(os.getenv, ('OMP_WAIT_POLICY',))\n"
            "print(json.dumps({'policy': os.environ.get('OMP_WAIT_POLICY'), 'child': child}))")
    assert _python(code) == {"policy": "PASSIVE", "child": "PASSIVE"}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_bids_app_nprocs_default_follows_the_affinity(tmp_path):
    code = ("import json; from niaffine.bidsapp.parser import build_parser\n"
            "from niaffine.bidsapp import settings\n"
            "args = build_parser().parse_args(['/nonexistent', '/tmp/out', 'participant'])\n"
            "print(json.dumps({'nprocs': args.nprocs or settings.available_cpus()}))")
    assert _python(code, cpus={0}) == {"nprocs": 1}

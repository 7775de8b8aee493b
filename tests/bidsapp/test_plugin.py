# SPDX-License-Identifier: Apache-2.0
"""Tests for niaffine.bidsapp.plugin: plugin resolution and per-node GPU requests."""

import json
import os
import stat

import pytest
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from nipype.pipeline import engine as pe
from nipype.pipeline.plugins.slurm import SLURMPlugin
from nipype.pipeline.plugins.slurmgraph import SLURMGraphPlugin

from niaffine.bidsapp import plugin as pl


class _ToyInputSpec(BaseInterfaceInputSpec):
    value = traits.Int(1, usedefault=True)
    use_gpu = traits.Bool(False, usedefault=True, desc="run on a GPU")
    device = traits.Str("cpu", usedefault=True)


class _ToyOutputSpec(TraitedSpec):
    value = traits.Int()
    out_file = File()


class Toy(SimpleInterface):
    """A stand-in for a niaffine interface: doubles an integer."""

    input_spec = _ToyInputSpec
    output_spec = _ToyOutputSpec

    def _run_interface(self, runtime):
        self._results["value"] = 2 * self.inputs.value
        return runtime


class FlaggedToy(Toy):
    """An interface that declares GPU use as a class attribute instead of an input."""

    use_gpu = True


def _two_node_wf(tmp_path, name="toy_wf"):
    wf = pe.Workflow(name=name, base_dir=str(tmp_path))
    cpu = pe.Node(Toy(value=1), name="cpu_node")
    gpu = pe.Node(Toy(use_gpu=True), name="gpu_node")
    wf.connect(cpu, "value", gpu, "value")
    return wf


@pytest.fixture
def no_login(monkeypatch):
    monkeypatch.delenv("LOGNAME", raising=False)
    monkeypatch.delenv("USER", raising=False)


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An ``sbatch``/``squeue`` pair on PATH that records the sbatch command line."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "sbatch.log"
    (bindir / "sbatch").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\necho "Submitted batch job 4242"\n'
    )
    (bindir / "squeue").write_text("#!/bin/sh\nexit 0\n")
    for exe in bindir.iterdir():
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


# ---------------------------------------------------------------- resolve_plugin


def test_default_is_multiproc():
    name, args = pl.resolve_plugin(None, None, None, nprocs=3, n_gpu_procs=2, mem_gb=None)
    assert name == "MultiProc"
    assert args == {"n_procs": 3, "n_gpu_procs": 2, "raise_insufficient": False}


def test_multiproc_memory_and_explicit_args_win():
    name, args = pl.resolve_plugin(
        "multiproc", '{"n_procs": 8, "raise_insufficient": true}', None, 2, 1, 6
    )
    assert name == "MultiProc"
    assert args == {"n_procs": 8, "n_gpu_procs": 1, "memory_gb": 6.0, "raise_insufficient": True}


def test_multiproc_rejects_zero_procs():
    with pytest.raises(pl.PluginError, match="n_procs"):
        pl.resolve_plugin(None, None, None, nprocs=0, n_gpu_procs=1, mem_gb=None)


def test_linear_has_no_args():
    assert pl.resolve_plugin("Linear", None, None, 4, 1, 4) == ("Linear", {})


def test_unknown_plugin():
    with pytest.raises(pl.PluginError, match="unknown nipype plugin 'Dask'"):
        pl.resolve_plugin("Dask", None, None, 1, 1, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("", {}),
        ({"max_jobs": 3}, {"max_jobs": 3}),
        ('{"sbatch_args": "-p gpu --time=1:00:00"}', {"sbatch_args": "-p gpu --time=1:00:00"}),
        ("sbatch_args=-p short", {"sbatch_args": "-p short"}),
        (
            "sbatch_args=--mem=4G --nodelist=n1,n2, max_jobs=10,retry_timeout=2.5",
            {"sbatch_args": "--mem=4G --nodelist=n1,n2", "max_jobs": 10, "retry_timeout": 2.5},
        ),
        ("dont_resubmit_completed_jobs=true", {"dont_resubmit_completed_jobs": True}),
        ("template='#!/bin/bash'", {"template": "#!/bin/bash"}),
    ],
)
def test_parse_plugin_args(text, expected):
    assert pl.parse_plugin_args(text) == expected


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "sbatch_args", "1x=2"])
def test_parse_plugin_args_errors(text):
    with pytest.raises(pl.PluginError):
        pl.parse_plugin_args(text)


def test_plugin_file_and_precedence(tmp_path, no_login):
    pfile = tmp_path / "plugin.yml"
    pfile.write_text(
        "plugin: SLURM\nplugin_args:\n  sbatch_args: --partition=short\n  max_jobs: 50\n"
    )
    name, args = pl.resolve_plugin(None, None, pfile, 2, 1, None, check_commands=False)
    assert name == "SLURM"
    assert args == {"sbatch_args": "--partition=short", "max_jobs": 50}
    # the command line wins over the file, key by key
    name, args = pl.resolve_plugin(None, "max_jobs=5", pfile, 2, 1, None, check_commands=False)
    assert args == {"sbatch_args": "--partition=short", "max_jobs": 5}
    # and --plugin wins over the file's plugin: MultiProc defaults fill in
    name, args = pl.resolve_plugin("MultiProc", None, pfile, 2, 1, None)
    assert name == "MultiProc"
    assert args["n_procs"] == 2 and args["max_jobs"] == 50


def test_plugin_file_multiproc_keeps_file_nprocs(tmp_path):
    pfile = tmp_path / "plugin.json"
    pfile.write_text(json.dumps({"plugin": "MultiProc", "plugin_args": {"n_procs": 12}}))
    assert pl.resolve_plugin(None, None, pfile, 2, 1, None)[1]["n_procs"] == 12


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("plugin: SLURM\nextra: 1\n", "unknown keys: extra"),
        ("- SLURM\n", "must hold a mapping"),
        ("plugin_args: [1]\n", "must be a mapping"),
        ("plugin: [SLURM\n", "not valid YAML"),
    ],
)
def test_plugin_file_errors(tmp_path, content, match):
    pfile = tmp_path / "plugin.yml"
    pfile.write_text(content)
    with pytest.raises(pl.PluginError, match=match):
        pl.resolve_plugin(None, None, pfile, 1, 1, None)


def test_plugin_file_missing(tmp_path):
    with pytest.raises(pl.PluginError, match="cannot read plugin file"):
        pl.resolve_plugin(None, None, tmp_path / "nope.yml", 1, 1, None)


def test_slurm_sets_logname(no_login, monkeypatch):
    monkeypatch.setattr(pl.getpass, "getuser", lambda: "alice.smith")
    name, args = pl.resolve_plugin(
        "slurm", {"sbatch_args": "--time=10"}, None, 4, 1, 8, check_commands=False
    )
    assert (name, args) == ("SLURM", {"sbatch_args": "--time=10"})
    assert os.environ["LOGNAME"] == "alice_smith"
    assert os.environ["USER"] == "alice_smith"


def test_login_name_without_passwd_entry(no_login, monkeypatch):
    def _no_entry():
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr(pl.getpass, "getuser", _no_entry)
    env = {}
    assert pl.ensure_login_name(env) == f"uid{os.getuid()}"
    assert env == {"LOGNAME": f"uid{os.getuid()}", "USER": f"uid{os.getuid()}"}


def test_login_name_kept_when_set():
    env = {"LOGNAME": "bob"}
    assert pl.ensure_login_name(env) == "bob"
    assert env == {"LOGNAME": "bob", "USER": "bob"}


def test_slurm_missing_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pl.PluginError, match="needs sbatch, squeue on PATH"):
        pl.resolve_plugin("SLURM", None, None, 1, 1, None)


def test_slurm_bad_sbatch_args():
    with pytest.raises(pl.PluginError, match="sbatch_args must be a string"):
        pl.resolve_plugin("SLURM", {"sbatch_args": 3}, None, 1, 1, None, check_commands=False)


# ---------------------------------------------------------------- mark_gpu_nodes


def test_mark_gpu_nodes_slurm(tmp_path):
    wf = _two_node_wf(tmp_path)
    marked = pl.mark_gpu_nodes(wf, plugin="SLURM")
    assert marked == ["toy_wf.gpu_node"]
    gpu, cpu = wf.get_node("gpu_node"), wf.get_node("cpu_node")
    assert gpu.plugin_args == {"sbatch_args": " --gres=gpu:1", "overwrite": False}
    assert cpu.plugin_args == {}
    # idempotent
    pl.mark_gpu_nodes(wf, plugin="SLURM")
    assert gpu.plugin_args["sbatch_args"] == " --gres=gpu:1"


def test_mark_gpu_nodes_override_and_existing_args(tmp_path):
    wf = _two_node_wf(tmp_path)
    gpu = wf.get_node("gpu_node")
    gpu.plugin_args = {"sbatch_args": "--mem=8G", "overwrite": True}
    pl.mark_gpu_nodes(wf, plugin="SLURM", gpu_sbatch_args="--gpus=a100:1 -p gpu")
    assert gpu.plugin_args == {"sbatch_args": " --mem=8G --gpus=a100:1 -p gpu", "overwrite": True}


@pytest.mark.parametrize(
    ("plugin", "key"), [("SGE", "qsub_args"), ("PBSGraph", "qsub_args"), ("LSF", "bsub_args")]
)
def test_mark_gpu_nodes_other_schedulers(tmp_path, plugin, key):
    wf = _two_node_wf(tmp_path)
    pl.mark_gpu_nodes(wf, plugin=plugin, gpu_sbatch_args="-l gpu=1")
    assert wf.get_node("gpu_node").plugin_args == {key: " -l gpu=1", "overwrite": False}
    assert wf.get_node("cpu_node").plugin_args == {}


@pytest.mark.parametrize("plugin", ["MultiProc", "Linear", "LegacyMultiProc"])
def test_mark_gpu_nodes_local_plugins_untouched(tmp_path, plugin):
    wf = _two_node_wf(tmp_path)
    assert pl.mark_gpu_nodes(wf, plugin=plugin) == []
    assert wf.get_node("gpu_node").plugin_args == {}


def test_mark_gpu_nodes_empty_request(tmp_path):
    wf = _two_node_wf(tmp_path)
    assert pl.mark_gpu_nodes(wf, plugin="SLURM", gpu_sbatch_args="") == []


def test_mark_gpu_nodes_nested_mapnode_and_flags(tmp_path):
    outer = pe.Workflow(name="outer", base_dir=str(tmp_path))
    inner = pe.Workflow(name="inner")
    flagged = pe.Node(FlaggedToy(), name="flagged")
    by_device = pe.Node(Toy(device="cuda:0"), name="by_device")
    mapped = pe.MapNode(Toy(use_gpu=True), iterfield=["value"], name="mapped")
    mapped.inputs.value = [1, 2]
    cpu = pe.Node(Toy(device="cpu"), name="cpu")
    inner.add_nodes([flagged, by_device, mapped])
    outer.add_nodes([inner, cpu])
    marked = pl.mark_gpu_nodes(outer, plugin="slurm")
    assert sorted(marked) == ["inner.by_device", "inner.flagged", "inner.mapped"]
    assert cpu.plugin_args == {}


def test_nipype_slurm_combines_global_and_node_args(tmp_path, fake_sbatch, no_login):
    """Submit both nodes through nipype's own SLURM submission code to a fake sbatch."""
    name, args = pl.resolve_plugin("SLURM", "sbatch_args=--time=5 -p debug", None, 1, 1, None)
    wf = _two_node_wf(tmp_path)
    pl.mark_gpu_nodes(wf, plugin=name)
    runner = SLURMPlugin(plugin_args=args)
    for node_name in ("cpu_node", "gpu_node"):
        node = wf.get_node(node_name)
        node.base_dir = str(tmp_path / "work")
        script = tmp_path / f"{node_name}.sh"
        script.write_text("#!/bin/bash\n")
        assert runner._submit_batchtask(str(script), node) == 4242
    # the fake sbatch echoes its words: runs of spaces collapse
    cpu_line, gpu_line = fake_sbatch.read_text().splitlines()
    assert cpu_line.startswith("--time=5 -p debug -o ")
    assert "--gres" not in cpu_line
    assert gpu_line.startswith("--time=5 -p debug --gres=gpu:1 -o ")
    assert f"-J gpu_node.toy_wf.{os.environ['LOGNAME']} " in gpu_line


def test_nipype_slurmgraph_combines_global_and_node_args(tmp_path):
    wf = _two_node_wf(tmp_path)
    pl.mark_gpu_nodes(wf, plugin="SLURMGraph")
    runner = SLURMGraphPlugin(plugin_args={"sbatch_args": "--time=5"})
    (_, gpu_args) = runner._get_args(wf.get_node("gpu_node"), ["template", "sbatch_args"])
    (_, cpu_args) = runner._get_args(wf.get_node("cpu_node"), ["template", "sbatch_args"])
    assert gpu_args == "--time=5 --gres=gpu:1"
    assert cpu_args == "--time=5"


def test_multiproc_runs_marked_workflow(tmp_path):
    """The same toy workflow runs locally with the resolved MultiProc settings."""
    wf = _two_node_wf(tmp_path)
    name, args = pl.resolve_plugin(None, None, None, nprocs=2, n_gpu_procs=1, mem_gb=1)
    pl.mark_gpu_nodes(wf, plugin=name)
    graph = wf.run(plugin=name, plugin_args=args)
    results = {node.name: node.result.outputs.value for node in graph.nodes()}
    assert results == {"cpu_node": 2, "gpu_node": 4}


@pytest.mark.parametrize(("device", "expected"), [("cuda", 6), ("cpu", 0)])
def test_mark_gpu_nodes_on_the_subject_workflow(device, expected):
    """On niaffine's own graph: brain extraction, the registrations, the series realignment
    and the series resampling ask for a GPU; the single-image resamplers do not."""
    base = pytest.importorskip("niaffine.workflows.base")
    subject = {
        "subject": "01",
        "session": None,
        "t1w": "/data/sub-01/anat/sub-01_T1w.nii.gz",
        "images": [
            {
                "path": "/data/sub-01/func/sub-01_task-rest_bold.nii.gz",
                "suffix": "bold",
                "bvals": None,
            }
        ],
    }
    wf = base.init_single_subject_wf(subject_data=subject, device=device)
    marked = pl.mark_gpu_nodes(wf, plugin="SLURM")
    assert len(marked) == expected
    assert all(name.endswith(("brain_extraction", "registration", "realign", "series_t1w",
                              ".series")) for name in marked)
    resamplers = [n for n in wf._get_all_nodes()
                  if n.fullname.startswith("resample") and ".series_" not in n.fullname]
    assert resamplers and all("sbatch_args" not in n.plugin_args for n in resamplers)


def test_gpu_request_from_plugin_args(tmp_path, no_login, fake_sbatch):
    """``gpu_sbatch_args`` in --plugin-args replaces the request; nipype ignores the key."""
    name, args = pl.resolve_plugin(
        "SLURM", "sbatch_args=-p short,gpu_sbatch_args=--gpus=a100:1 -p gpu", None, 1, 1, None
    )
    assert args == {"sbatch_args": "-p short", "gpu_sbatch_args": "--gpus=a100:1 -p gpu"}
    assert pl.gpu_request(args) == "--gpus=a100:1 -p gpu"
    wf = _two_node_wf(tmp_path)
    pl.mark_gpu_nodes(wf, plugin=name, gpu_sbatch_args=pl.gpu_request(args))
    node = wf.get_node("gpu_node")
    node.base_dir = str(tmp_path / "work")
    script = tmp_path / "gpu.sh"
    script.write_text("#!/bin/bash\n")
    SLURMPlugin(plugin_args=args)._submit_batchtask(str(script), node)
    assert fake_sbatch.read_text().startswith("-p short --gpus=a100:1 -p gpu -o ")
    assert pl.gpu_request({}) == pl.gpu_request(None) == "--gres=gpu:1"


def test_gpu_request_must_be_a_string():
    with pytest.raises(pl.PluginError, match="gpu_sbatch_args must be a string"):
        pl.resolve_plugin("SLURM", {"gpu_sbatch_args": 1}, None, 1, 1, None, check_commands=False)

# SPDX-License-Identifier: Apache-2.0
"""Nipype execution plugins for the BIDS-App: MultiProc by default, SLURM and friends on clusters.

Two entry points are used by :mod:`niaffine.bidsapp.run`:

* :func:`resolve_plugin` turns the command-line options (``--nprocs``, ``--mem-gb``,
  ``--plugin``, ``--plugin-args``, ``--use-plugin``) into the ``(plugin, plugin_args)`` pair given
  to :meth:`nipype.pipeline.engine.Workflow.run`, and fixes the environment pitfalls of Nipype's
  batch plugins (a missing ``LOGNAME`` makes nipype 1.11's SLURM plugin raise ``KeyError``).
* :func:`mark_gpu_nodes` adds a GPU request (``--gres=gpu:1`` by default) to the per-node
  ``plugin_args`` of the nodes that run on a GPU, so that only those jobs ask the scheduler for one.

How nipype 1.11 combines the per-node and the global submission arguments (checked in its
``SLURMPlugin._submit_batchtask`` and ``GraphPluginBase._get_args``):

* ``SLURM`` (and ``SGE``/``PBS``/``LSF``): the node's ``sbatch_args`` are appended to the global
  ones with a space in between, unless the node sets ``"overwrite": True``, which replaces them.
* ``SLURMGraph``/``SGEGraph``: the node's string is appended *without* a separator, so the GPU
  request written here always starts with a space.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)

#: Plugins that run every node in local processes.
LOCAL_PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc")

#: Batch-system plugins and the per-node ``plugin_args`` key that holds their submission arguments.
SUBMIT_ARGS_KEY = {
    "SLURM": "sbatch_args",
    "SLURMGraph": "sbatch_args",
    "SGE": "qsub_args",
    "SGEGraph": "qsub_args",
    "PBS": "qsub_args",
    "PBSGraph": "qsub_args",
    "OAR": "oarsub_args",
    "LSF": "bsub_args",
    "Condor": "qsub_args",
    "CondorDAGMan": "qsub_args",
}

#: The submission commands each batch plugin calls (checked before a run starts).
SUBMIT_COMMANDS = {
    "SLURM": ("sbatch", "squeue"),
    "SLURMGraph": ("sbatch",),
    "SGE": ("qsub", "qstat"),
    "SGEGraph": ("qsub",),
    "PBS": ("qsub", "qstat"),
    "PBSGraph": ("qsub",),
    "OAR": ("oarsub", "oarstat"),
    "LSF": ("bsub", "bjobs"),
    "Condor": ("condor_qsub", "condor_q"),
    "CondorDAGMan": ("condor_submit_dag",),
}

DEFAULT_GPU_SBATCH_ARGS = "--gres=gpu:1"

#: The ``plugin_args`` key (``--plugin-args``/``--use-plugin``) that replaces the GPU request;
#: nipype's plugins ignore it, :func:`gpu_request` reads it.
GPU_ARGS_KEY = "gpu_sbatch_args"

_KNOWN_PLUGINS = {name.lower(): name for name in (*LOCAL_PLUGINS, *SUBMIT_ARGS_KEY, "IPython")}
_PAIR_SPLIT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")


class PluginError(ValueError):
    """An unusable plugin setting: unknown plugin, bad plugin file or ``--plugin-args``."""


def canonical_plugin_name(plugin: str) -> str:
    """Return nipype's spelling of a plugin name, matched case-insensitively.

    Parameters
    ----------
    plugin : str
        A plugin name such as ``"slurm"`` or ``"MultiProc"``; a ``Plugin`` suffix is accepted.

    Returns
    -------
    str
        The name nipype expects.

    Examples
    --------
    >>> canonical_plugin_name("slurm")
    'SLURM'
    >>> canonical_plugin_name("MultiProcPlugin")
    'MultiProc'
    """
    key = str(plugin).strip()
    if key.lower().endswith("plugin"):
        key = key[: -len("plugin")]
    try:
        return _KNOWN_PLUGINS[key.lower()]
    except KeyError:
        known = ", ".join(sorted(_KNOWN_PLUGINS.values()))
        raise PluginError(f"unknown nipype plugin {plugin!r} (known: {known})") from None


def _convert_value(text: str) -> Any:
    """Turn one ``key=value`` value into a bool, None, int, float, or leave it a string.

    Examples
    --------
    >>> [_convert_value(v) for v in ("4", "2.5", "true", "None", "--mem=4G")]
    [4, 2.5, True, None, '--mem=4G']
    """
    value = text.strip()
    lowered = value.lower()
    if lowered in {"true", "yes", "on"}:
        return True
    if lowered in {"false", "no", "off"}:
        return False
    if lowered in {"none", "null"}:
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_plugin_args(plugin_args: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Parse ``--plugin-args``: a mapping, a JSON object, or ``key=value,key=value``.

    In the ``key=value`` form, values may contain ``=`` and commas (``sbatch_args=--mem=4G``,
    ``sbatch_args=--nodelist=a,b``): a comma starts a new pair only where it is followed by
    ``name=``. Use JSON for values that contain ``,name=``.

    Parameters
    ----------
    plugin_args : dict or str or None
        The option as given.

    Returns
    -------
    dict
        A new dictionary (empty for ``None`` or a blank string).

    Examples
    --------
    >>> parse_plugin_args('{"sbatch_args": "-p gpu", "max_jobs": 10}')
    {'sbatch_args': '-p gpu', 'max_jobs': 10}
    >>> parse_plugin_args("sbatch_args=--time=1:00:00 --nodelist=a,b,max_jobs=4")
    {'sbatch_args': '--time=1:00:00 --nodelist=a,b', 'max_jobs': 4}
    """
    if plugin_args is None:
        return {}
    if isinstance(plugin_args, Mapping):
        return dict(plugin_args)
    text = str(plugin_args).strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise PluginError(f"--plugin-args is not valid JSON: {err}") from None
        if not isinstance(parsed, dict):
            raise PluginError("--plugin-args JSON must be an object")
        return parsed
    parsed = {}
    for item in _PAIR_SPLIT.split(text):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise PluginError(
                f"--plugin-args item {item!r} is not key=value (or pass a JSON object)"
            )
        parsed[key] = _convert_value(value)
    return parsed


def load_plugin_file(path: str | os.PathLike) -> tuple[str | None, dict[str, Any]]:
    """Read a plugin file as fMRIPrep's ``--use-plugin`` accepts it.

    The file is YAML (JSON is valid YAML)::

        plugin: SLURM
        plugin_args:
          sbatch_args: --partition=short --time=02:00:00
          max_jobs: 50

    Parameters
    ----------
    path : path-like
        The YAML or JSON file.

    Returns
    -------
    plugin : str or None
        The plugin named in the file, if any.
    plugin_args : dict
        Its ``plugin_args`` (empty if absent).
    """
    import yaml

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as err:
        raise PluginError(f"cannot read plugin file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise PluginError(f"plugin file {path} is not valid YAML: {err}") from None
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise PluginError(f"plugin file {path} must hold a mapping with 'plugin'/'plugin_args'")
    unknown = set(content) - {"plugin", "plugin_args"}
    if unknown:
        raise PluginError(f"plugin file {path} has unknown keys: {', '.join(sorted(unknown))}")
    args = content.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise PluginError(f"plugin file {path}: 'plugin_args' must be a mapping")
    plugin = content.get("plugin")
    return (str(plugin) if plugin else None), dict(args)


def ensure_login_name(environ: dict[str, str] | None = None) -> str:
    """Make sure ``LOGNAME`` and ``USER`` are set: nipype's batch plugins name jobs after them.

    nipype 1.11's SLURM, SGE, PBS and LSF plugins read ``os.environ["LOGNAME"]`` and raise
    ``KeyError`` where it is unset (CI runners, ``docker run -u``, cron). The name is taken from
    ``LOGNAME``, ``USER``, the password database, and finally ``uid<N>`` for a user id without
    an entry (containers run with ``-u $(id -u)``).

    Parameters
    ----------
    environ : dict, optional
        The environment to fix in place (``os.environ`` by default).

    Returns
    -------
    str
        The login name now in ``environ["LOGNAME"]``.
    """
    env = os.environ if environ is None else environ
    name = env.get("LOGNAME") or env.get("USER")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for this uid
            name = f"uid{os.getuid()}"
        if not name:
            name = f"uid{os.getuid()}"
    # nipype puts the name into the job name, which it splits on dots
    name = name.replace(".", "_")
    if env.get("LOGNAME") != name:
        LOGGER.debug("setting LOGNAME=%s for nipype's batch plugins", name)
        env["LOGNAME"] = name
    env.setdefault("USER", name)
    return name


def resolve_plugin(
    plugin: str | None = None,
    plugin_args: Mapping[str, Any] | str | None = None,
    use_plugin_file: str | os.PathLike | None = None,
    nprocs: int = 1,
    n_gpu_procs: int = 1,
    mem_gb: float | None = None,
    *,
    check_commands: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Choose the nipype plugin and its arguments from the command-line options.

    Precedence, lowest first: built-in defaults, the plugin file (``--use-plugin``), then the
    explicit ``plugin`` and ``plugin_args`` (``--plugin``, ``--plugin-args``).

    Parameters
    ----------
    plugin : str, optional
        ``--plugin``: a nipype plugin name (case-insensitive); default ``MultiProc``.
    plugin_args : dict or str, optional
        ``--plugin-args``: a mapping, a JSON object or ``key=value,...`` (see
        :func:`parse_plugin_args`).
    use_plugin_file : path-like, optional
        ``--use-plugin``: a YAML file ``{plugin: ..., plugin_args: {...}}``.
    nprocs : int
        ``--nprocs``: processes for MultiProc (``n_procs``).
    n_gpu_procs : int
        Concurrent GPU nodes for MultiProc (``n_gpu_procs``).
    mem_gb : float, optional
        ``--mem-gb``: the memory MultiProc may schedule (``memory_gb``).
    check_commands : bool
        For batch plugins, check that the submission commands (``sbatch``, ``squeue``...) are
        on ``PATH`` and fail early with a clear message otherwise.

    Returns
    -------
    plugin : str
        nipype's plugin name.
    plugin_args : dict
        Arguments for ``Workflow.run(plugin=..., plugin_args=...)``.

    Raises
    ------
    PluginError
        Unknown plugin, malformed arguments or plugin file, missing submission commands.

    Notes
    -----
    Batch plugins (``SLURM`` and the others in :data:`SUBMIT_ARGS_KEY`) also get ``LOGNAME`` and
    ``USER`` set in ``os.environ`` (see :func:`ensure_login_name`); their submission arguments
    (``sbatch_args``) pass through untouched. The node jobs run ``sys.executable`` on the compute
    nodes, in the nipype working directory: both must be on a shared filesystem.

    Examples
    --------
    >>> resolve_plugin(None, None, None, nprocs=4, n_gpu_procs=1, mem_gb=8)
    ('MultiProc', {'n_procs': 4, 'n_gpu_procs': 1, 'memory_gb': 8.0, 'raise_insufficient': False})
    >>> resolve_plugin("Linear", None, None, nprocs=4, n_gpu_procs=1, mem_gb=None)
    ('Linear', {})
    """
    file_plugin, file_args = (None, {})
    if use_plugin_file is not None:
        file_plugin, file_args = load_plugin_file(use_plugin_file)

    name = canonical_plugin_name(plugin or file_plugin or "MultiProc")
    args = dict(file_args)
    args.update(parse_plugin_args(plugin_args))

    if name in ("MultiProc", "LegacyMultiProc"):
        args.setdefault("n_procs", int(nprocs))
        args.setdefault("n_gpu_procs", int(n_gpu_procs))
        if mem_gb is not None:
            args.setdefault("memory_gb", float(mem_gb))
        args.setdefault("raise_insufficient", False)
        if int(args["n_procs"]) < 1:
            raise PluginError(f"n_procs must be at least 1, got {args['n_procs']}")
    elif name in SUBMIT_ARGS_KEY:
        ensure_login_name()
        key = SUBMIT_ARGS_KEY[name]
        if args.get(key) is None:
            args.pop(key, None)
        elif not isinstance(args[key], str):
            raise PluginError(f"{key} must be a string, got {args[key]!r}")
        if not isinstance(args.get(GPU_ARGS_KEY, ""), str):
            raise PluginError(f"{GPU_ARGS_KEY} must be a string, got {args[GPU_ARGS_KEY]!r}")
        if check_commands:
            missing = [cmd for cmd in SUBMIT_COMMANDS[name] if shutil.which(cmd) is None]
            if missing:
                raise PluginError(
                    f"plugin {name} needs {', '.join(missing)} on PATH (run on a submit host)"
                )
    LOGGER.debug("nipype plugin %s with %s", name, args)
    return name, args


def gpu_request(plugin_args: Mapping[str, Any] | None) -> str:
    """The GPU request for :func:`mark_gpu_nodes`: ``plugin_args["gpu_sbatch_args"]`` or the default.

    Lets users replace ``--gres=gpu:1`` from the command line, e.g.
    ``--plugin-args "sbatch_args=-p short,gpu_sbatch_args=--gpus=a100:1 -p gpu"``.

    Examples
    --------
    >>> gpu_request({"sbatch_args": "-p short"})
    '--gres=gpu:1'
    >>> gpu_request({"gpu_sbatch_args": "--gpus=a100:1"})
    '--gpus=a100:1'
    """
    value = (plugin_args or {}).get(GPU_ARGS_KEY)
    return DEFAULT_GPU_SBATCH_ARGS if value is None else str(value)


def _flag_true(value: Any) -> bool:
    """``True`` for a set, truthy trait value (``Undefined`` is falsy)."""
    try:
        return bool(value)
    except Exception:  # pragma: no cover - exotic trait values
        return False


def node_uses_gpu(node) -> bool:
    """Whether a nipype node runs on a GPU.

    True where ``node.is_gpu_node()`` is (its ``use_gpu``/``use_cuda`` input is set), where its
    interface carries a truthy ``use_gpu`` attribute, or where its ``device`` input names a CUDA
    device (``"cuda"``, ``"cuda:0"``).

    Parameters
    ----------
    node : nipype.pipeline.engine.Node
        The node.

    Returns
    -------
    bool
    """
    is_gpu = getattr(node, "is_gpu_node", None)
    if callable(is_gpu) and is_gpu():
        return True
    interface = getattr(node, "interface", None)
    if _flag_true(getattr(interface, "use_gpu", False)):
        return True
    inputs = getattr(node, "inputs", None)
    device = getattr(inputs, "device", None)
    return isinstance(device, str) and device.strip().lower().startswith("cuda")


def _contains_tokens(args: str, request: str) -> bool:
    """Whether the words of ``request`` appear, in a row, among the words of ``args``.

    Examples
    --------
    >>> _contains_tokens("-p gpu --gres=gpu:1", "--gres=gpu:1")
    True
    >>> _contains_tokens("--gres=gpu:10", "--gres=gpu:1")
    False
    """
    words, wanted = args.split(), request.split()
    n = len(wanted)
    return any(words[i : i + n] == wanted for i in range(len(words) - n + 1))


def _all_nodes(workflow) -> Iterable:
    """Every node of a workflow, nested workflows included (a bare node is its own list)."""
    getter = getattr(workflow, "_get_all_nodes", None)
    if callable(getter):
        return list(getter())
    return [workflow]


def mark_gpu_nodes(
    workflow, *, plugin: str, gpu_sbatch_args: str = DEFAULT_GPU_SBATCH_ARGS
) -> list[str]:
    """Ask the batch system for a GPU for the GPU nodes only.

    For batch plugins, each node for which :func:`node_uses_gpu` is true gets ``gpu_sbatch_args``
    added to its ``plugin_args`` under the plugin's submission key (``sbatch_args`` for SLURM,
    ``qsub_args`` for SGE/PBS, ``bsub_args`` for LSF) with ``"overwrite": False``, so nipype
    appends it to the global ``--plugin-args`` submission arguments. Arguments a node already
    has are kept (the GPU request is appended once). CPU nodes are left alone. Local plugins
    (MultiProc, Linear) need nothing: MultiProc counts GPU nodes against ``n_gpu_procs``.

    Parameters
    ----------
    workflow : nipype.pipeline.engine.Workflow or Node
        The graph to mark, in place (nested workflows and MapNodes included).
    plugin : str
        The plugin that will run it (as returned by :func:`resolve_plugin`).
    gpu_sbatch_args : str
        The request in the scheduler's own syntax: ``--gres=gpu:1`` (SLURM, the default),
        e.g. ``--gpus=a100:1 --partition=gpu``; for SGE/PBS/LSF give their syntax
        (``-l gpu=1``, ``-gpu num=1``). An empty string marks nothing.

    Returns
    -------
    list of str
        The full names of the nodes that were marked.
    """
    name = canonical_plugin_name(plugin)
    key = SUBMIT_ARGS_KEY.get(name)
    request = (gpu_sbatch_args or "").strip()
    if key is None or not request:
        return []

    marked = []
    for node in _all_nodes(workflow):
        if not node_uses_gpu(node):
            continue
        node_args = dict(getattr(node, "plugin_args", None) or {})
        current = str(node_args.get(key) or "").strip()
        if not _contains_tokens(current, request):
            current = f"{current} {request}".strip()
        # the graph plugins concatenate per-node strings without a separator
        node_args[key] = " " + current
        node_args.setdefault("overwrite", False)
        node.plugin_args = node_args
        marked.append(getattr(node, "fullname", None) or node.name)
    LOGGER.info("%s: GPU request %r on %d node(s)", name, request, len(marked))
    return marked

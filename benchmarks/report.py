# SPDX-License-Identifier: Apache-2.0
"""Summaries, markdown tables, the error-versus-time plot and the generated docs sections.

A row is one (tool, case, phase, repeat) run (see `benchmarks.run_benchmarks`); repeats of
one (tool, case, phase) are first reduced to their median time (and median scores), then
cases are summarised per (set, group, tool, phase).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np

from .tools import LABELS, TOOLS, base_tool

LOGGER = logging.getLogger(__name__)

FAIL_MM = 1.0
"""A registration whose mean displacement error exceeds this many mm counts as a failure."""

SAME_ANATOMY = ("synthetic", "heads", "large")
SECTIONS = ("same-anatomy", "intersubject", "load")
"""Generated sections of ``docs/benchmarks.md``, each between its own markers."""

CSV_FIELDS = ("set", "group", "case", "tool", "phase", "repeat", "status", "mean_error_mm",
              "max_error_mm", "dice", "distance_mm", "determinant", "seconds", "peak_rss_mb",
              "baseline_rss_mb", "device", "threads", "message")

_SCORES = ("seconds", "mean_error_mm", "max_error_mm", "dice", "distance_mm", "determinant",
           "peak_rss_mb")


def markers(section: str) -> tuple[str, str]:
    """Begin and end markers of one generated section of ``docs/benchmarks.md``."""
    return (f"<!-- BEGIN GENERATED: {section} (python -m benchmarks.run_benchmarks "
            "--update-docs; do not edit by hand) -->", f"<!-- END GENERATED: {section} -->")


def write_raw(rows: list[dict], out_dir: Path) -> None:
    """``results.json`` (everything, matrices included) and ``results.csv`` (flat fields)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1, default=_json_default))
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj)}")


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def tool_order(tools) -> list[str]:
    """Tools in `TOOLS` order, niaffine variants after niaffine."""
    rank = {t: i for i, t in enumerate(TOOLS)}
    return sorted(set(tools), key=lambda t: (rank.get(base_tool(t), len(rank)), t))


def collapse_repeats(rows: list[dict]) -> list[dict]:
    """One row per (set, group, case, tool, phase): median of each score over its repeats."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["set"], row["group"], row["case"], row["tool"], row.get("phase", "quiet"))
        groups.setdefault(key, []).append(row)
    out = []
    for (set_name, group, case, tool, phase), items in groups.items():
        ok = [r for r in items if r["status"] == "ok"]
        merged = {"set": set_name, "group": group, "case": case, "tool": tool, "phase": phase,
                  "repeats": len(items), "status": "ok" if ok else items[0]["status"],
                  "message": "" if ok else items[0].get("message", "")}
        merged.update({k: _median(r.get(k) for r in ok) for k in _SCORES})
        out.append(merged)
    return out


def failed(row: dict) -> bool:
    """A crash, a timeout, or (same anatomy) a mean error above `FAIL_MM`."""
    if row["status"] != "ok":
        return True
    error = row.get("mean_error_mm")
    return error is not None and error > FAIL_MM


def summarise(rows: list[dict]) -> list[dict]:
    """One summary per (set, group, tool, phase): medians, worst case, failures, time ratio."""
    cases = collapse_repeats(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in cases:
        groups.setdefault((row["set"], row["group"], row["tool"], row["phase"]), []).append(row)
    reference = {}
    for (set_name, group, tool, phase), items in groups.items():
        if tool == "niaffine":
            reference[(set_name, group, phase)] = _median(r["seconds"] for r in items)
    summary = []
    for (set_name, group, tool, phase), items in groups.items():
        ok = [r for r in items if r["status"] == "ok"]
        seconds = _median(r["seconds"] for r in ok)
        ref = reference.get((set_name, group, phase))
        errors = [r["mean_error_mm"] for r in ok if r.get("mean_error_mm") is not None]
        summary.append({
            "set": set_name, "group": group, "tool": tool, "phase": phase,
            "cases": len(items), "crashed": len(items) - len(ok),
            "failures": sum(failed(r) for r in items),
            "median_error_mm": _median(errors), "max_error_mm": max(errors) if errors else None,
            "median_dice": _median(r.get("dice") for r in ok),
            "median_distance_mm": _median(r.get("distance_mm") for r in ok),
            "median_determinant": _median(r.get("determinant") for r in ok),
            "median_seconds": seconds,
            "time_ratio": seconds / ref if seconds and ref else None,
            "median_peak_rss_mb": _median(r.get("peak_rss_mb") for r in ok),
            "message": next((r["message"] for r in items if r["status"] != "ok"), ""),
        })
    order = {s: i for i, s in enumerate((*SAME_ANATOMY, "intersubject"))}
    tools = tool_order(s["tool"] for s in summary)
    summary.sort(key=lambda s: (s["phase"] != "quiet", order.get(s["set"], 9), s["group"],
                                tools.index(s["tool"])))
    return summary


def slowdowns(rows: list[dict]) -> list[dict]:
    """Per tool: median quiet and loaded times and the median per-case slowdown factor."""
    cases = collapse_repeats(rows)
    quiet = {(r["set"], r["group"], r["case"], r["tool"]): r for r in cases
             if r["phase"] == "quiet" and r["status"] == "ok"}
    per_tool: dict[str, list[tuple[float, float]]] = {}
    for r in cases:
        q = quiet.get((r["set"], r["group"], r["case"], r["tool"]))
        if r["phase"] == "loaded" and r["status"] == "ok" and q and q["seconds"]:
            per_tool.setdefault(r["tool"], []).append((q["seconds"], r["seconds"]))
    out = []
    for tool in tool_order(per_tool):
        pairs = per_tool[tool]
        out.append({"tool": tool, "cases": len(pairs),
                    "quiet_seconds": _median(q for q, _ in pairs),
                    "loaded_seconds": _median(lo for _, lo in pairs),
                    "slowdown": _median(lo / q for q, lo in pairs),
                    "max_slowdown": max(lo / q for q, lo in pairs)})
    return out


def _fmt(value, pattern="{:.3f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def _label(tool: str) -> str:
    return LABELS.get(tool, f"niaffine `{tool.split(':', 1)[1]}`" if ":" in tool else tool)


def _cell_error(s: dict) -> str:
    if s["crashed"] == s["cases"]:
        return "crash" if "timeout" not in s["message"] else "timeout"
    err, secs = s["median_error_mm"], _fmt(s["median_seconds"], "{:.1f} s")
    if s["cases"] == 1:
        return f"fails ({err:.0f} mm)" if s["failures"] else f"{err:.3f} / {secs}"
    fails = f", {s['failures']}/{s['cases']} fail" if s["failures"] else ""
    return f"{_fmt(err)} / {secs}{fails}"


def _wide(summary, sets, phase, cell, first_column) -> str:
    chosen = [s for s in summary if s["set"] in sets and s["phase"] == phase]
    if not chosen:
        return ""
    tools = tool_order(s["tool"] for s in chosen)
    by_key = {(s["set"], s["group"], s["tool"]): s for s in chosen}
    rows = list(dict.fromkeys((s["set"], s["group"]) for s in chosen))
    lines = [f"| {first_column} | " + " | ".join(_label(t) for t in tools) + " |",
             "|---" * (len(tools) + 1) + "|"]
    for set_name, group in rows:
        cells = [cell(by_key[(set_name, group, t)]) if (set_name, group, t) in by_key else "-"
                 for t in tools]
        lines.append(f"| {set_name} / {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def same_anatomy_table(summary: list[dict], phase: str = "quiet") -> str:
    """Wide table: one row per case group, one column per tool, ``error / time`` (medians)."""
    return _wide(summary, SAME_ANATOMY, phase, _cell_error,
                 f"case ({phase}; median mean error mm / time)")


def _cell_intersubject(s: dict) -> str:
    if s["crashed"] == s["cases"]:
        return "crash"
    dist = _fmt(s["median_distance_mm"], "{:.1f} mm")
    return (f"{_fmt(s['median_dice'])} / {dist}, det {_fmt(s['median_determinant'], '{:.3f}')}, "
            f"{_fmt(s['median_seconds'], '{:.1f} s')}")


def intersubject_table(summary: list[dict], phase: str = "quiet") -> str:
    """Wide table: ``Dice / distance from the peers, determinant, time`` per subject and tool."""
    return _wide(summary, ("intersubject",), phase, _cell_intersubject,
                 "T1w brain -> MNI152 T1 brain (Dice / distance, det, time)")


def summary_table(summary: list[dict]) -> str:
    """Long markdown table of `summarise` output."""
    lines = [
        "| set | group | phase | tool | cases | median error (mm) | max error (mm) "
        f"| failures (> {FAIL_MM:g} mm or crash) | Dice | distance (mm) | det "
        "| median time (s) | time / niaffine | median peak RSS (MB) |",
        "|---" * 14 + "|",
    ]
    for s in summary:
        lines.append(
            f"| {s['set']} | {s['group']} | {s['phase']} | {s['tool']} | {s['cases']} "
            f"| {_fmt(s['median_error_mm'])} | {_fmt(s['max_error_mm'])} | {s['failures']} "
            f"| {_fmt(s['median_dice'])} | {_fmt(s['median_distance_mm'], '{:.2f}')} "
            f"| {_fmt(s['median_determinant'])} | {_fmt(s['median_seconds'], '{:.1f}')} "
            f"| {_fmt(s['time_ratio'], '{:.2f}')} | {_fmt(s['median_peak_rss_mb'], '{:.0f}')} |")
    return "\n".join(lines)


def load_table(loads: list[dict], processes: int | None = None) -> str:
    """Markdown table of `slowdowns`: quiet and loaded times, slowdown factor per tool."""
    if not loads:
        return ""
    head = (f"Load: {processes} busy processes (one per available core), "
            "`benchmarks/load.py`.\n\n" if processes else "")
    lines = ["| tool | cases | median quiet time (s) | median loaded time (s) "
             "| slowdown (median of loaded / quiet) | worst slowdown |", "|---" * 6 + "|"]
    for s in loads:
        lines.append(f"| {_label(s['tool'])} | {s['cases']} | {_fmt(s['quiet_seconds'], '{:.1f}')} "
                     f"| {_fmt(s['loaded_seconds'], '{:.1f}')} | {_fmt(s['slowdown'], '{:.2f}')}x "
                     f"| {_fmt(s['max_slowdown'], '{:.2f}')}x |")
    return head + "\n".join(lines)


def cases_table(rows: list[dict]) -> str:
    """Markdown table of every run."""
    lines = ["| set | group | case | tool | phase | repeat | status | mean error (mm) "
             "| Dice | distance (mm) | det | time (s) | peak RSS (MB) |", "|---" * 13 + "|"]
    tools = tool_order(r["tool"] for r in rows)
    for r in sorted(rows, key=lambda r: (r["set"], r["group"], r["case"], r.get("phase", ""),
                                         tools.index(r["tool"]), r.get("repeat", 0))):
        lines.append(
            f"| {r['set']} | {r['group']} | {r['case']} | {r['tool']} | {r.get('phase', 'quiet')} "
            f"| {r.get('repeat', 0)} | {r['status']} | {_fmt(r.get('mean_error_mm'))} "
            f"| {_fmt(r.get('dice'))} | {_fmt(r.get('distance_mm'), '{:.2f}')} "
            f"| {_fmt(r.get('determinant'))} | {_fmt(r.get('seconds'), '{:.1f}')} "
            f"| {_fmt(r.get('peak_rss_mb'), '{:.0f}')} |")
    return "\n".join(lines)


def plot_error_vs_time(rows: list[dict], path: Path) -> Path | None:
    """Log-log scatter of error against time per tool and case set; one panel per phase."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a niaffine dependency
        LOGGER.warning("matplotlib missing: no plot")
        return None
    ok = [r for r in collapse_repeats(rows) if r["status"] == "ok" and r["set"] in SAME_ANATOMY
          and r.get("mean_error_mm") is not None]
    if not ok:
        return None
    phases = [p for p in ("quiet", "loaded") if any(r["phase"] == p for r in ok)]
    fig, axes = plt.subplots(1, len(phases), figsize=(6.4 * len(phases), 4.8), sharex=True,
                             sharey=True, squeeze=False)
    markers_ = {"synthetic": "o", "heads": "s", "large": "^"}
    tools = tool_order(r["tool"] for r in ok)
    colours = dict(zip(tools, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for ax, phase in zip(axes[0], phases):
        for tool in tools:
            for set_name, marker in markers_.items():
                pts = [(r["seconds"], max(r["mean_error_mm"], 1e-3)) for r in ok
                       if r["tool"] == tool and r["set"] == set_name and r["phase"] == phase]
                if pts:
                    x, y = zip(*pts)
                    ax.scatter(x, y, marker=marker, color=colours[tool], alpha=0.75)
        ax.axhline(FAIL_MM, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(phase)
        ax.set_xlabel("wall time per registration (s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean displacement error in the brain (mm)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colours[t], label=t) for t in tools]
    handles += [Line2D([], [], marker=m, linestyle="", color="grey", label=name)
                for name, m in markers_.items() if any(r["set"] == name for r in ok)]
    axes[0][-1].legend(handles=handles, fontsize=7, ncol=2,
                       title=f"failure: above {FAIL_MM:g} mm", title_fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sections(rows: list[dict], meta: dict, results_link: str, plot_link: str | None,
             load_processes: int | None = None) -> dict[str, str]:
    """The generated docs sections that this run has data for: name -> markdown body."""
    summary = summarise(rows)
    run = (f"Run of {meta.get('date', '?')} on {meta.get('machine', '?')}, "
           f"{meta.get('threads', '?')} threads per tool; every run and the setup: "
           f"[{results_link}]({results_link}).")
    out = {}
    same = [same_anatomy_table(summary, phase) for phase in ("quiet", "loaded")]
    if same[0]:
        body = [run, "", same[0]]
        if same[1]:
            body += ["", same[1]]
        if plot_link:
            body += ["", f"![error versus time]({plot_link})"]
        out["same-anatomy"] = "\n".join(body)
    inter = [intersubject_table(summary, phase) for phase in ("quiet", "loaded")]
    if inter[0]:
        out["intersubject"] = "\n\n".join([run, *filter(None, inter)])
    loads = load_table(slowdowns(rows), load_processes)
    if loads:
        out["load"] = "\n\n".join([run, loads])
    return out


def results_markdown(rows: list[dict], meta: dict, plot_name: str | None,
                     batch: dict | None = None, load_processes: int | None = None) -> str:
    """The full results page (``results.md``)."""
    summary = summarise(rows)
    parts = ["# niaffine benchmark results", "",
             "Generated by `benchmarks/run_benchmarks.py`; method: `docs/benchmarks.md`.",
             "", "## Setup", ""]
    parts += [f"- {key}: {value}" for key, value in meta.items()]
    for title, table in (("Same anatomy (quiet)", same_anatomy_table(summary, "quiet")),
                         ("Same anatomy (loaded)", same_anatomy_table(summary, "loaded")),
                         ("Inter-subject (quiet)", intersubject_table(summary, "quiet")),
                         ("Inter-subject (loaded)", intersubject_table(summary, "loaded")),
                         ("Slowdown under load", load_table(slowdowns(rows), load_processes))):
        if table:
            parts += [f"## {title}", "", table, ""]
    if plot_name:
        parts += [f"![error versus time]({plot_name})", ""]
    parts += ["## Summary", "", summary_table(summary), ""]
    if batch:
        parts += ["## Batched throughput", "", batch_table(batch), ""]
    parts += ["## Every run", "", cases_table(rows), ""]
    return "\n".join(parts)


def batch_table(batch: dict) -> str:
    """Markdown table of the batched-throughput result, with its device and agreement."""
    where = batch.get("gpu") or f"{batch.get('device', '?')}, {batch.get('threads', '?')} threads"
    lines = [
        f"{batch['pairs']} pairs of {batch.get('contrast', '?')} on {where}; batched / "
        f"sequential speed-up {batch.get('speedup', float('nan')):.2f}x; largest difference "
        f"between batched and one-by-one transforms "
        f"{batch.get('max_batch_difference_mm', float('nan')):.4f} mm.",
        "",
        "| pairs | mode | seconds | pairs per second | median error (mm) | max error (mm) |",
        "|---|---|---|---|---|---|",
        *(f"| {batch['pairs']} | {mode} | {batch[mode]['seconds']:.2f} "
          f"| {batch[mode]['pairs_per_second']:.2f} | {batch[mode]['median_error_mm']:.3f} "
          f"| {batch[mode]['max_error_mm']:.3f} |" for mode in ("sequential", "batched")
          if mode in batch),
    ]
    if "peak_gpu_memory_mb" in batch:
        lines += ["", f"Peak GPU memory: {batch.get('peak_gpu_memory_mb_one', float('nan')):.0f} MB "
                  f"one by one, {batch['peak_gpu_memory_mb']:.0f} MB batched."]
    return "\n".join(lines)


def update_docs_sections(doc_path: Path, bodies: dict[str, str]) -> list[str]:
    """Replace the marked sections of ``docs/benchmarks.md`` named in ``bodies``.

    Sections this run has no data for are left as they are. Returns the names replaced.

    Raises
    ------
    ValueError
        When the document lacks the markers of a section in ``bodies``.
    """
    text = doc_path.read_text()
    for name, body in bodies.items():
        begin, end = markers(name)
        if begin not in text or end not in text:
            raise ValueError(f"{doc_path} has no markers for the generated section {name!r}")
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
        text = pattern.sub(lambda _, b=begin, e=end, x=body: f"{b}\n\n{x}\n\n{e}", text, count=1)
    doc_path.write_text(text)
    return list(bodies)

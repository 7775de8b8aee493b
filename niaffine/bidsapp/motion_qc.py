# SPDX-License-Identifier: Apache-2.0
"""Head-motion QC of realigned series, read from their confounds files on disk.

One row per BOLD/DWI run: its mean and largest framewise displacement (FD, Power 2012) and
flags. A run is flagged ``high_mean_fd`` when its mean FD exceeds
:data:`MEAN_FD_LIMIT_MM` (0.5 mm, a common exclusion threshold for resting-state runs:
Power et al. 2012, Parkes et al. 2018) and ``high_max_fd`` when one volume moves more than
:data:`MAX_FD_LIMIT_MM` (3 mm, about one BOLD voxel: a gross movement).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from niaffine.bidsapp import derivatives as drv

LOGGER = logging.getLogger("niaffine.bidsapp")
MEAN_FD_LIMIT_MM = 0.5
MAX_FD_LIMIT_MM = 3.0
#: Framewise displacement above which a volume counts as high-motion (fMRIPrep's default).
FD_VOLUME_MM = 0.5
MOTION_COLUMNS = ("subject", "session", "run", "suffix", "volumes", "mean_fd", "max_fd",
                  "volumes_fd_over_0.5mm", "flags", "confounds")


def _row(path: Path, output_dir: Path) -> dict | None:
    from niaffine.interfaces.series_reports import read_confounds

    try:
        columns = read_confounds(path)
    except (OSError, ValueError, IndexError) as exc:
        LOGGER.warning("unreadable confounds file %s: %s", path, exc)
        return None
    entities, _, _ = drv.parse_name(path)
    ents = dict(entities)
    fd = [v for v in columns.get("framewise_displacement", []) if math.isfinite(v)]
    mean_fd = sum(fd) / len(fd) if fd else None
    max_fd = max(fd) if fd else None
    flags = []
    if mean_fd is not None and mean_fd > MEAN_FD_LIMIT_MM:
        flags.append("high_mean_fd")
    if max_fd is not None and max_fd > MAX_FD_LIMIT_MM:
        flags.append("high_max_fd")
    n_volumes = len(next(iter(columns.values()), []))
    return {
        "subject": ents.get("sub"), "session": ents.get("ses", "n/a"),
        "run": "_".join(f"{k}-{v}" for k, v in entities if k not in ("sub", "ses", "desc"))
        or "n/a",
        "suffix": "dwi" if path.parent.name == "dwi" else "bold", "volumes": n_volumes,
        "mean_fd": mean_fd, "max_fd": max_fd,
        "volumes_fd_over_0.5mm": sum(v > FD_VOLUME_MM for v in fd),
        "flags": ",".join(flags) or "n/a",
        "confounds": path.relative_to(output_dir).as_posix(),
    }


def collect_motion(output_dir) -> list[dict]:
    """One row per ``*_desc-confounds_timeseries.tsv`` under ``output_dir`` (see the module)."""
    output_dir = Path(output_dir)
    rows = [_row(path, output_dir) for path in
            sorted(output_dir.glob("sub-*/**/*_desc-confounds_timeseries.tsv"))]
    return [row for row in rows if row]


def motion_table(rows: list[dict], link_subject: str = "") -> str:
    """The HTML table of :func:`collect_motion` rows (flags in red)."""
    from niaffine.bidsapp.reports import _table

    columns = [c for c in MOTION_COLUMNS if c != "confounds" and (link_subject or c != "subject")]
    return _table(rows, columns, link_subject=link_subject)


def _plot(rows: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from niaffine.bidsapp.reports import _svg

    fig = Figure(figsize=(max(4.0, min(12.0, 0.35 * len(rows) + 2)), 3.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, limit in ((axes[0], "mean_fd", MEAN_FD_LIMIT_MM),
                           (axes[1], "max_fd", MAX_FD_LIMIT_MM)):
        values = [row[key] if row[key] is not None else float("nan") for row in rows]
        colours = ["#c00" if v > limit else "#369" for v in values]
        ax.bar(range(len(rows)), values, color=colours)
        ax.axhline(limit, color="#999", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r['subject']} {r['run']}" for r in rows], rotation=90,
                           fontsize=6)
        ax.set_ylabel(f"{key.replace('_', ' ')} (mm)")
        ax.set_title(f"{key.replace('_', ' ')} per run (limit {limit:g} mm)", fontsize=9)
    return _svg(fig)


def write_motion_outputs(tree: drv.OutputTree) -> list[str]:
    """Write ``group/motion_qc.tsv`` (+ JSON) and return the group page's motion section."""
    from niaffine.bidsapp.reports import tsv_text

    output_dir = Path(tree.root)
    rows = collect_motion(output_dir)
    if not rows:
        return []
    group = output_dir / "group"
    tree.write_text(group / "motion_qc.tsv", tsv_text(rows, MOTION_COLUMNS))
    tree.write_json(group / "motion_qc.json", {
        "mean_fd": {"Description": "mean framewise displacement of the run", "Units": "mm"},
        "max_fd": {"Description": "largest framewise displacement of the run", "Units": "mm"},
        "volumes_fd_over_0.5mm": {"Description": "volumes whose framewise displacement "
                                  "exceeds 0.5 mm"},
        "flags": {"Description": f"high_mean_fd (mean FD > {MEAN_FD_LIMIT_MM:g} mm), "
                  f"high_max_fd (largest FD > {MAX_FD_LIMIT_MM:g} mm)"},
    })
    flagged = [row for row in rows if row["flags"] != "n/a"]
    return ["<h2>Head motion</h2>",
            f"<p>{len(rows)} realigned runs, <span class=\"{'flag' if flagged else 'ok'}\">"
            f"{len(flagged)} flagged</span> (mean FD &gt; {MEAN_FD_LIMIT_MM:g} mm or largest "
            f"FD &gt; {MAX_FD_LIMIT_MM:g} mm). Table: <a href=\"motion_qc.tsv\">motion_qc.tsv"
            "</a>.</p>", _plot(rows), motion_table(rows, link_subject="../")]


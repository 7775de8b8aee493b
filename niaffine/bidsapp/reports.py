# SPDX-License-Identifier: Apache-2.0
"""HTML reports and group-level QC, built from the derivatives on disk.

Reports read only what the sink wrote (transform sidecars and ``figures/``), so
they can be rebuilt at any time (``--reports-only``) and never depend on a work
directory. Every page is a single self-contained HTML file with relative links:
it opens offline, from a copy of the output folder, in any browser.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import io
import json
import logging
import math
import re
from pathlib import Path

from niaffine import __version__
from niaffine.bidsapp import derivatives as drv

LOGGER = logging.getLogger("niaffine.bidsapp")
QC_COLUMNS = ("subject", "session", "source", "target", "metric", "final_metric", "dof",
              "iterations", "elapsed_s", "mask_volume_ml", "zoom_min", "zoom_max", "flags",
              "transform")
#: Plausible adult brain-mask volumes (ml); outside is flagged.
MASK_VOLUME_RANGE = (800.0, 2200.0)
#: Plausible scale factors (singular values of the linear part) of a brain registration.
ZOOM_RANGE = (0.67, 1.5)
ROBUST_Z = 3.5
#: ``from-`` labels of the references realigned series are coregistered through.
SERIES_REFERENCES = ("boldref", "dwiref")
#: Column order of the HTML tables: what to look at first on the left.
HTML_COLUMNS = ("subject", "session", "source", "target", "flags", "final_metric", "zoom_min",
                "zoom_max", "mask_volume_ml", "dof", "iterations", "elapsed_s", "metric")
_CSS = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.4}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}
.wrap{overflow-x:auto}table{border-collapse:collapse;font-size:.82em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f3f3f3}
.flag{color:#b00;font-weight:bold}.ok{color:#070}
figure{margin:1em 0}figure object,figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.meta{color:#666;font-size:.85em}
"""


def _page(title: str, body: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p class=\"meta\">niaffine {__version__}, "
            f"{stamp}</p>\n{body}\n</body></html>\n")


def _entity(name: str, key: str) -> str | None:
    match = re.search(rf"(?:^|_){key}-([A-Za-z0-9]+)", name)
    return match.group(1) if match else None


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def collect_registrations(output_dir) -> list[dict]:
    """One row per registration, read from the forward transforms' JSON sidecars.

    A forward transform is ``from-<image>_to-T1w`` (coregistration) or
    ``from-T1w_to-<template>`` (spatial normalisation).
    """
    output_dir = Path(output_dir)
    rows = []
    for sidecar in sorted(output_dir.glob("sub-*/**/*_xfm.json")):
        name = sidecar.name
        source, target = _entity(name, "from"), _entity(name, "to")
        if source in SERIES_REFERENCES:  # a realigned series' reference: its kind
            source = source[:-len("ref")]
        coreg = target == "T1w" and source in drv.DATATYPE and source != "T1w"
        normalisation = source == "T1w" and target is not None and target not in drv.DATATYPE
        if not (coreg or normalisation):
            continue  # an inverse transform
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        entities, _, _ = drv.parse_name(sidecar.with_suffix(".txt"))
        label = "_".join(f"{k}-{v}" for k, v in entities
                         if k not in ("sub", "ses", "from", "to", "mode", "desc"))
        rows.append({
            "subject": _entity(name, "sub"), "session": _entity(name, "ses") or "n/a",
            "source": f"{label}:{source}" if label else source, "target": target,
            "metric": meta.get("Metric", "n/a"),
            "final_metric": _number(meta.get("FinalMetric")), "dof": meta.get("DOF", "n/a"),
            "iterations": meta.get("Iterations", "n/a"),
            "elapsed_s": _number(meta.get("ElapsedSeconds")),
            "mask_volume_ml": _mask_volume(sidecar.parent, name)
            or _number(meta.get("MaskVolumeML")),
            "transform": sidecar.with_suffix(".txt").relative_to(output_dir).as_posix(),
            **_zooms(sidecar.with_suffix(".txt")),
        })
    return rows


def _zooms(path: Path) -> dict:
    """Smallest/largest scale factor of a transform file and whether it flips space."""
    import numpy as np

    try:
        from niaffine.io import load_transform

        matrix = np.asarray(load_transform(path), dtype=float)
    except Exception as exc:  # an unreadable transform is itself a QC finding
        LOGGER.warning("cannot read transform %s: %s", path, exc)
        return {"zoom_min": None, "zoom_max": None, "reflection": False, "unreadable": True}
    linear = matrix[:3, :3]
    values = np.linalg.svd(linear, compute_uv=False)
    return {"zoom_min": float(values.min()), "zoom_max": float(values.max()),
            "reflection": bool(np.linalg.det(linear) < 0), "unreadable": False}


_VOLUMES: dict = {}


def _mask_volume(folder: Path, name: str) -> float | None:
    """Volume (ml) of the subject/session's T1w brain mask derivative, if there is one."""
    prefix = "_".join(p for p in name.split("_") if p.startswith(("sub-", "ses-")))
    anat = folder.parent / "anat" if folder.name != "anat" else folder
    path = anat / f"{prefix}_desc-brain_mask.nii.gz"
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _VOLUMES:
        import nibabel as nb
        import numpy as np

        img = nb.load(str(path))
        voxel_ml = float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
        _VOLUMES[key] = float(np.count_nonzero(np.asanyarray(img.dataobj) > 0)) * voxel_ml
    return _VOLUMES[key]


def _median(values):
    values = sorted(values)
    n = len(values)
    return (values[n // 2] + values[(n - 1) // 2]) / 2.0 if n else float("nan")


def robust_z(values: list[float]) -> list[float]:
    """Robust z-scores ``0.6745 (x - median) / MAD`` (0 where MAD is 0).

    >>> [round(z, 1) for z in robust_z([1.0, 1.1, 0.9, 1.0, 5.0])]
    [0.0, 0.7, -0.7, 0.0, 27.0]
    """
    med = _median(values)
    mad = _median([abs(v - med) for v in values])
    if not mad:
        return [0.0 for _ in values]
    return [0.6745 * (v - med) / mad for v in values]


def flag_rows(rows: list[dict]) -> list[dict]:
    """Add a ``flags`` column: ``no_metric``, ``metric_outlier``, ``mask_volume``,
    ``implausible_scale`` (a scale factor outside :data:`ZOOM_RANGE`: a degenerate
    solution, whatever the metric says), ``reflection``, ``unreadable_transform``.

    Outliers are robust z-scores beyond :data:`ROBUST_Z` within each
    (source type, target) group of at least 4 registrations.
    """
    for row in rows:
        row["flags"] = []
        if row["final_metric"] is None:
            row["flags"].append("no_metric")
        volume = row["mask_volume_ml"]
        if volume is not None and not MASK_VOLUME_RANGE[0] <= volume <= MASK_VOLUME_RANGE[1]:
            row["flags"].append("mask_volume")
        low, high = row.get("zoom_min"), row.get("zoom_max")
        if low is not None and (low < ZOOM_RANGE[0] or high > ZOOM_RANGE[1]):
            row["flags"].append("implausible_scale")
        if row.get("reflection"):
            row["flags"].append("reflection")
        if row.get("unreadable"):
            row["flags"].append("unreadable_transform")
    groups: dict = {}
    for row in rows:
        if row["final_metric"] is not None:
            groups.setdefault((row["source"].split(":")[-1], row["target"]), []).append(row)
    for members in groups.values():
        if len(members) < 4:
            continue
        for row, z in zip(members, robust_z([r["final_metric"] for r in members])):
            if abs(z) > ROBUST_Z:
                row["flags"].append("metric_outlier")
    for row in rows:
        row["flags"] = ",".join(row["flags"]) or "n/a"
    return rows


def cell(value) -> str:
    """A TSV cell: ``n/a`` for None, floats to 6 significant digits.

    >>> cell(None), cell(0.123456789012), cell(1400.0), cell("a")
    ('n/a', '0.123457', '1400', 'a')
    """
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else "n/a"
    return str(value)


def tsv_text(rows: list[dict], columns) -> str:
    """Tab-separated ``columns`` of ``rows`` (see :func:`cell`), with a header line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _svg(fig) -> str:
    from niaffine.interfaces.reports import figure_svg

    text = figure_svg(fig)
    return text[text.index("<svg"):]


def _plots(rows: list[dict]) -> str:
    """Inline SVG: final metric per registration type, and mask volumes; flagged in red."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    kinds = sorted({(r["source"].split(":")[-1], r["target"]) for r in rows})
    if not kinds:
        return "<p>No registrations found.</p>"
    fig = Figure(figsize=(max(4.0, 2.6 * len(kinds)), 3.6), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, (source, target) in zip(axes, kinds):
        members = [r for r in rows if (r["source"].split(":")[-1], r["target"]) == (source, target)
                   and r["final_metric"] is not None]
        for i, row in enumerate(members):
            bad = row["flags"] != "n/a"
            jitter = ((i * 0.618) % 1.0 - 0.5) * 0.4
            ax.plot(jitter, row["final_metric"], "o", color="#c00" if bad else "#369",
                    markersize=7 if bad else 5, alpha=0.9)
            if bad:
                ax.annotate(f"sub-{row['subject']}", (jitter, row["final_metric"]),
                            fontsize=7, color="#c00", xytext=(4, 2), textcoords="offset points")
        ax.set_xlim(-0.6, 0.6)
        ax.set_xticks([])
        ax.set_title(f"{source} →\n{target} (n={len(members)})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("final metric")
    out = ("<p>Final similarity metric of each registration, one panel per registration "
           "type; red points are flagged (see the table).</p>" + _svg(fig))
    volumes = {}
    for row in rows:
        if row["mask_volume_ml"] is not None:
            volumes.setdefault((row["subject"], row["session"]), row["mask_volume_ml"])
    if volumes:
        keys = sorted(volumes)
        fig = Figure(figsize=(min(12.0, max(4.0, 0.35 * len(keys) + 2)), 3.0),
                     layout="constrained")
        ax = fig.subplots()
        colors = ["#c00" if not MASK_VOLUME_RANGE[0] <= volumes[k] <= MASK_VOLUME_RANGE[1]
                  else "#369" for k in keys]
        ax.bar(range(len(keys)), [volumes[k] for k in keys], color=colors)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{s}" + ("" if ses == "n/a" else f"/{ses}") for s, ses in keys],
                           rotation=90, fontsize=7)
        for bound in MASK_VOLUME_RANGE:
            ax.axhline(bound, color="#999", linestyle="--", linewidth=0.8)
        ax.set_ylabel("brain mask (ml)")
        ax.set_title("Brain-mask volume per subject/session", fontsize=10)
        out += _svg(fig)
    return out


def _table(rows: list[dict], columns, link_subject: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            text = "n/a" if value is None else (f"{value:.4g}" if isinstance(value, float)
                                                 else str(value))
            if column == "subject" and link_subject:
                text = f'<a href="{link_subject}sub-{value}.html">sub-{html.escape(text)}</a>'
            elif column == "flags" and text != "n/a":
                text = f'<span class="flag">{html.escape(text)}</span>'
            else:
                text = html.escape(text)
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class=\"wrap\"><table><tr>{head}</tr>\n" + "\n".join(body)
            + "</table></div>")


#: Order of the reportlets of one image: its coregistration, then its motion.
_FIGURE_DESC_ORDER = {"coreg": 0, "motion": 1, "realignment": 2}


def _figure_key(path: Path):
    name = path.name
    order = 0 if "desc-brain_mask" in name else 1 if "_space-" in name else 2
    stem = re.sub(r"_desc-[A-Za-z0-9]+", "", name)
    return (_entity(name, "ses") or "", order, stem,
            _FIGURE_DESC_ORDER.get(_entity(name, "desc") or "", 3), name)


def _caption(name: str) -> str:
    """A short description of a reportlet from its file name.

    >>> _caption("sub-01_task-rest_desc-coreg_bold.svg")
    'task-rest bold registered to the T1w'
    >>> _caption("sub-01_space-MNI152NLin2009aSym_T1w.svg")
    'T1w registered to MNI152NLin2009aSym'
    """
    if "desc-brain_mask" in name:
        return "Brain mask on the T1w"
    space = _entity(name, "space")
    if space:
        return f"T1w registered to {space}"
    parts = name.rsplit(".", 1)[0].split("_")
    ents = [p for p in parts[:-1] if not p.startswith(("sub-", "ses-", "desc-"))]
    what = {"coreg": "registered to the T1w",
            "motion": "head motion: translations, rotations and framewise displacement over "
                      "time (volumes above 0.5 mm marked)",
            "realignment": "temporal standard deviation before / after realignment (hover "
                           "to flicker)"}.get(_entity(name, "desc") or "")
    if what:
        return " ".join(ents + [parts[-1], what])
    return name


#: What the colours of the registration figures mean (``niaffine.interfaces.reports``).
FIGURE_LEGEND = (
    '<p class="meta"><b>Reading the figures.</b> Registration figures show the fixed image '
    '(the T1w, or the template) in grey with the <span style="color:#0aa;font-weight:bold">'
    'cyan</span> edges of the moved image drawn over it and the brain mask as a '
    '<span style="color:#d00;font-weight:bold">red</span> contour; hovering flickers to '
    "the moved image, whose edges stay put: a misalignment shows as edges moving against "
    "the anatomy. Motion plots: translations (mm), rotations (degrees) and framewise "
    'displacement (black; the dashed <span style="color:#d62728">red</span> line is 0.5 mm, '
    "volumes above it marked in red). Realignment figures: temporal standard deviation of "
    "the series before and after head-motion correction (sharper, darker after).</p>")


def write_subject_report(tree: drv.OutputTree, subject: str,
                         problems: list[str] | None = None) -> Path:
    """Write ``output_dir/sub-<subject>.html`` from the derivatives on disk.

    Parameters
    ----------
    tree : OutputTree
        Derivatives root (and the raw dataset it must not write into).
    subject : str
        Subject label.
    problems : list of str, optional
        Messages to show in an *Errors* section (failed or skipped sessions).
    """
    output_dir = Path(tree.root)
    rows = flag_rows([r for r in collect_registrations(output_dir) if r["subject"] == subject])
    parts = []
    if problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        parts.append(f"<h2>Errors</h2><ul class=\"flag\">{items}</ul>")
    parts.append("<h2>Summary</h2>")
    if rows:
        parts.append(_table(rows, HTML_COLUMNS[1:]))
    else:
        parts.append("<p>No registrations were written for this subject.</p>")
    from niaffine.bidsapp.motion_qc import collect_motion, motion_table

    motion = [r for r in collect_motion(output_dir) if r["subject"] == subject]
    if motion:
        parts.append("<h2>Head motion</h2>" + motion_table(motion))
    figures = sorted((output_dir / f"sub-{subject}" / "figures").glob("*.svg"), key=_figure_key)
    if figures:
        parts.append(FIGURE_LEGEND)
    sessions = sorted({_entity(f.name, "ses") or "" for f in figures})
    for session in sessions:
        parts.append(f"<h2>{'Session ' + html.escape(session) if session else 'Figures'}</h2>")
        for figure in figures:
            if (_entity(figure.name, "ses") or "") != session:
                continue
            rel = html.escape(figure.relative_to(output_dir).as_posix())
            # <object> keeps the SVG interactive (hover to see the moving image's edges)
            parts.append(f'<figure><object type="image/svg+xml" data="{rel}">'
                         f'<img src="{rel}" alt="{html.escape(figure.name)}"></object>'
                         f"<figcaption><b>{html.escape(_caption(figure.name))}</b> "
                         f"({html.escape(figure.name)})</figcaption></figure>")
    parts.append('<h2>About</h2><p>Transforms map reference (fixed) points to moving points '
                 '(ITK convention, as fMRIPrep). See <code>docs/outputs.md</code>.</p>')
    path = output_dir / f"sub-{subject}.html"
    tree.write_text(path, _page(f"niaffine report: sub-{subject}", "\n".join(parts)))
    LOGGER.info("report written: %s", path)
    return path


def write_group_outputs(tree: drv.OutputTree,
                        expected_subjects=()) -> tuple[Path, Path, list[dict]]:
    """Write ``group/registration_qc.tsv`` (+ JSON) and ``group/index.html``.

    Parameters
    ----------
    tree : OutputTree
        Derivatives root (and the raw dataset it must not write into).
    expected_subjects : sequence of str
        Subjects of the input dataset: those without any registration get a row
        flagged ``missing`` (failed, skipped or never run) and stand out in the report.

    Returns
    -------
    tsv, index : Path
        The QC table and the dataset-wide report.
    rows : list of dict
        The flagged rows.
    """
    output_dir = Path(tree.root)
    rows = flag_rows(collect_registrations(output_dir))
    present = {r["subject"] for r in rows}
    for subject in sorted(set(expected_subjects) - present):
        rows.append({"subject": subject, "session": "n/a", "source": "n/a", "target": "n/a",
                     "metric": "n/a", "final_metric": None, "dof": "n/a", "iterations": "n/a",
                     "elapsed_s": None, "mask_volume_ml": None, "zoom_min": None,
                     "zoom_max": None, "flags": "missing",
                     "transform": "n/a"})
    group = output_dir / "group"
    tsv = tree.write_text(group / "registration_qc.tsv", tsv_text(rows, QC_COLUMNS))
    tree.write_json(group / "registration_qc.json", {
        "final_metric": {"Description": "similarity at convergence (as reported by the engine)"},
        "mask_volume_ml": {"Description": "volume of the subject's T1w brain mask "
                           "(desc-brain_mask derivative)", "Units": "ml"},
        "elapsed_s": {"Description": "registration time", "Units": "s"},
        "zoom_min": {"Description": "smallest scale factor (singular value) of the "
                     "transform's linear part"},
        "zoom_max": {"Description": "largest scale factor of the transform's linear part"},
        "flags": {"Description": "no_metric, metric_outlier (robust z > 3.5 within its "
                  "registration type), mask_volume (outside 800-2200 ml), implausible_scale "
                  "(a scale factor outside 0.67-1.5), reflection (negative determinant), "
                  "unreadable_transform, missing (a subject of the dataset without any "
                  "output: failed, skipped or not run)"},
    })
    from niaffine.bidsapp.motion_qc import write_motion_outputs

    motion_html = write_motion_outputs(tree)
    flagged = [r for r in rows if r["flags"] != "n/a"]
    missing = [r for r in rows if r["flags"] == "missing"]
    registrations = [r for r in rows if r["flags"] != "missing"]
    n_flagged = len(flagged) - len(missing)
    body = [f"<p>{len(present)} subjects with outputs, {len(registrations)} registrations, "
            f"<span class=\"{'flag' if n_flagged else 'ok'}\">{n_flagged} flagged</span>"
            + (f", <span class=\"flag\">{len(missing)} subject{'s' if len(missing) > 1 else ''}"
               " without outputs</span>" if missing else "")
            + ". QC table: <a href=\"registration_qc.tsv\">registration_qc.tsv</a>.</p>",
            "<h2>Across the dataset</h2>", _plots(registrations)]
    if flagged:
        body += ["<h2>Flagged</h2>", _table(flagged, HTML_COLUMNS, link_subject="../")]
    body += ["<h2>All registrations</h2>",
             _table(registrations, HTML_COLUMNS, link_subject="../")]
    body += motion_html
    index = tree.write_text(group / "index.html",
                           _page("niaffine group report", "\n".join(body)))
    LOGGER.info("group outputs written: %s, %s", tsv, index)
    return tsv, index, rows

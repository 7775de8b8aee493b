# SPDX-License-Identifier: Apache-2.0
"""The benchmark command line: lists, niaffine options and variants, and one real run."""

import json

import pytest

from benchmarks import report, run_benchmarks, tools
from niaffine.data import real


def test_lists_take_commas_and_spaces():
    args = run_benchmarks.build_parser().parse_args(
        ["--cases", "heads,large", "intersubject", "--tools", "niaffine,ants"])
    assert run_benchmarks._names(args.cases) == ["heads", "large", "intersubject"]
    assert run_benchmarks._names(args.tools) == ["niaffine", "ants"]


def test_worker_environment():
    args = run_benchmarks.build_parser().parse_args(["--env", "OMP_WAIT_POLICY=PASSIVE",
                                                     "--env", "A=b=c"])
    assert run_benchmarks.worker_env(args) == {"OMP_WAIT_POLICY": "PASSIVE", "A": "b=c"}
    with pytest.raises(SystemExit):
        run_benchmarks.worker_env(run_benchmarks.build_parser().parse_args(["--env", "X"]))


def test_niaffine_options_and_variants(tmp_path):
    path = tmp_path / "opts.json"
    path.write_text(json.dumps({"max_samples": 5000}))
    args = run_benchmarks.build_parser().parse_args(
        ["--niaffine-opts", "search", "--variant", f"file={path}",
         "--variant", 'coarse={"levels_mm": [8, 4]}'])
    options = run_benchmarks.tool_options(args)
    assert options == {"niaffine": {"rotation_search": True},
                       "niaffine:file": {"max_samples": 5000},
                       "niaffine:coarse": {"levels_mm": [8, 4]}}
    assert tools.runner("niaffine:coarse") is tools.RUNNERS["niaffine"]
    with pytest.raises(SystemExit):
        run_benchmarks.tool_options(run_benchmarks.build_parser().parse_args(
            ["--variant", "nameless"]))
    with pytest.raises(ValueError, match="preset"):
        tools.niaffine_options("no-such-preset-or-file.json")
    with pytest.raises(ValueError, match="unknown tool"):
        tools.runner("flirt")


@pytest.mark.slow
def test_one_intersubject_run_end_to_end(tmp_path):
    """niaffine on the KmeansTest head, quiet and loaded, with a variant; docs sections made."""
    if "kmeans" not in real.available_subjects():
        pytest.skip("insighttoolkit5-examples is not installed")
    out = tmp_path / "out"
    assert run_benchmarks.main(
        ["--cases", "intersubject", "--groups", "kmeans", "--tools", "niaffine", "--load",
         "--load-processes", "1", "--variant", 'coarse={"levels_mm": [8, 4]}',
         "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert {(r["tool"], r["phase"]) for r in rows} == {
        (t, p) for t in ("niaffine", "niaffine:coarse") for p in ("quiet", "loaded")}
    assert all(r["status"] == "ok" and r["dice"] > 0.85 for r in rows)
    bodies = report.sections(rows, {}, "results.md", None, 1)
    assert set(bodies) == {"intersubject", "load"}
    assert "niaffine `coarse`" in bodies["intersubject"]
    assert (out / "results.md").is_file() and (out / "meta.json").is_file()

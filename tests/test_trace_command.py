"""`python -m evaluator trace` and `python -m evaluator bench trace-load`, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

TIMEOUT_S = 300
SMALL_PROBLEM = ["--layers", "2", "--experts", "4", "--replicas", "4", "--groups", "2", "--nodes", "1", "--gpus", "2"]


def evaluator(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evaluator", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=TIMEOUT_S,
    )


def write_history(path: Path, steps: int) -> np.ndarray:
    loads = np.random.default_rng(1).integers(0, 50, size=(steps, 2, 4))
    path.write_text(json.dumps({"load_history": [{"logical_expert_load": s} for s in loads.tolist()]}))
    return loads


def test_default_trace_summary_as_text(tmp_path: Path) -> None:
    done = evaluator("trace", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "trace: default" in done.stdout
    assert "shape: 12 windows x 58 layers x 256 experts (8 groups), 100 steps per window, integer loads" in done.stdout
    assert "hot-set persistence" in done.stdout


def test_default_trace_summary_as_json(tmp_path: Path) -> None:
    done = evaluator("trace", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["source"], summary["num_windows"], len(summary["layers"])) == ("default", 12, 58)
    assert len(summary["hot_set_persistence"]) == 11


def test_holdout_summaries_differ_from_run_to_run(tmp_path: Path) -> None:
    runs = [json.loads(evaluator("trace", "--holdout", "--json", cwd=tmp_path).stdout) for _ in range(2)]
    assert [run["source"] for run in runs] == ["holdout", "holdout"]
    assert runs[0]["layers"] != runs[1]["layers"]


def test_workload_file_with_window_and_problem_shape(tmp_path: Path) -> None:
    write_history(tmp_path / "history.json", 11)
    done = evaluator("trace", "--workload", "history.json", "--window", "5", "--json", *SMALL_PROBLEM, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["source"], summary["num_windows"], summary["dropped_steps"]) == ("./history.json", 2, 1)
    text = evaluator("trace", "--workload", "history.json", "--window", "5", *SMALL_PROBLEM, cwd=tmp_path).stdout
    assert "dropped: the last 1 steps, which do not fill a window" in text


def test_bad_workload_exits_2_naming_the_step(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(
        '{"load_history": [{"logical_expert_load": [[1, 2, 3, 4], [1, 2, 3, 4]]},'
        ' {"logical_expert_load": [[1, 2, 3, 4], [1, 2, NaN, 4]]}]}'
    )
    done = evaluator("trace", "--workload", "bad.json", "--window", "1", *SMALL_PROBLEM, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "error: bad.json: load_history[1].logical_expert_load[1][2] is nan: loads must be numbers, not NaN\n"
    )


def test_workload_for_another_shape_exits_2(tmp_path: Path) -> None:
    write_history(tmp_path / "history.json", 4)
    done = evaluator("trace", "--workload", "history.json", "--window", "2", cwd=tmp_path)
    assert done.returncode == 2
    assert "load_history[0].logical_expert_load has 2 layers, but the problem has 58" in done.stderr


def test_another_shape_gets_the_default_generator_trace_of_that_shape(tmp_path: Path) -> None:
    done = evaluator("trace", "--layers", "4", "--experts", "128", "--replicas", "128", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["source"] == "synthetic(seed=0)"
    assert (summary["num_layers"], summary["num_experts"]) == (4, 128)


def test_bad_options_exit_2(tmp_path: Path) -> None:
    window_alone = evaluator("trace", "--window", "10", cwd=tmp_path)
    assert window_alone.returncode == 2 and "--window applies to --workload only" in window_alone.stderr
    bad_problem = evaluator("trace", "--replicas", "100", cwd=tmp_path)
    assert bad_problem.returncode == 2 and "num_replicas (100) must be at least num_experts (256)" in bad_problem.stderr
    both = evaluator("trace", "--holdout", "--workload", "x.json", cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_bench_trace_load_reports_and_leaves_nothing_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    done = evaluator("bench", "trace-load", "--size-mb", "0.3", "--window", "3", "--json", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["file_bytes"] >= 300_000
    assert result["steps"] >= 6 and result["windows"] == result["steps"] // 3
    assert result["seconds"] > 0
    assert result["peak_rss_bytes"] >= result["imports_rss_bytes"] > 0
    assert list(scratch.iterdir()) == []


def test_bench_rejects_a_bad_size(tmp_path: Path) -> None:
    done = evaluator("bench", "trace-load", "--size-mb", "0", cwd=tmp_path)
    assert done.returncode == 2 and "argument --size-mb: expected a number above 0" in done.stderr

"""`python -m evaluator bench` through a real subprocess: the pace figures agree with their own rounds, and wrong
arguments are refused before anything is measured."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from evaluator.exitcodes import ExitCode


def bench(*args: str, benchmark: str = "pace") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evaluator", "bench", benchmark, *args], capture_output=True,
                          text=True, timeout=300)


def test_the_pace_figures_are_read_off_the_rounds_they_report():
    run = bench("--seconds", "3", "--device", "cpu", "--json")
    assert run.returncode == ExitCode.OK, run.stderr
    result = json.loads(run.stdout)
    rounds = result["rounds_ms"]
    assert result["rounds"] == len(rounds) >= 2 and result["device"] == "cpu"
    firsts = [first for first, _, _ in rounds]
    assert abs(result["program_ms"] - statistics.median(firsts)) < 1e-2
    assert abs(result["drift_cv"] - statistics.pstdev(firsts) / statistics.fmean(firsts)) < 1e-3
    assert result["first_call_cold_ms"] > 0 and result["first_call_warm_ms"] > 0
    assert result["round_trip_overhead_ms"] > 0 and result["python_loop_ms"] > 0


def test_a_run_too_short_to_compare_rounds_is_refused():
    run = bench("--seconds", "1", "--device", "cpu")
    assert run.returncode == ExitCode.BAD_INPUT and "at least 2" in run.stderr


@pytest.mark.parametrize("option", ["--warmup-s", "--clocks-hold-s", "--rechecks"])
def test_the_evaluator_bench_refuses_a_negative_setting(option):
    run = bench(option, "-1", "--device", "cpu", benchmark="evaluator")
    assert run.returncode == ExitCode.BAD_INPUT and option in run.stderr and "at least 0" in run.stderr
    assert not run.stdout

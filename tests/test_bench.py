"""`python -m evaluator bench` through a real subprocess: the pace and A/A figures agree with the samples they report,
and wrong arguments are refused before anything is measured; the lanes' use is read off real evaluations."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from small_problem import SMALL_SETTINGS, SMALL_TRACE

from evaluator.bench import timed_evaluations
from evaluator.bench.aa import ClassFigures
from evaluator.bench.evaluation import lane_use, run_shape
from evaluator.bench.in_process import Forker, in_fresh_process
from evaluator.bench.speed_classes import SPEED_CLASSES
from evaluator.bench.tracking import EVALUATORS, ON_THE_DEVICE, follow
from evaluator.evaluation import Evaluator
from evaluator.evaluation.lanes import lane_cores
from evaluator.exitcodes import ExitCode
from evaluator.paths import SEED_PROGRAM


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
    assert result["quiet_ms"] > 0 and result["teardown_ms"] > 0
    assert result["beside_teardown_ms"] is None or result["beside_teardown_ms"] > 0
    assert result["teardown_on_a_lane"] == (lane_cores(1)[1] is not None)  # as an evaluator here would pin a lane


def test_a_run_too_short_to_compare_rounds_is_refused():
    run = bench("--seconds", "1", "--device", "cpu")
    assert run.returncode == ExitCode.BAD_INPUT and "argument --seconds: expected a number from 2" in run.stderr


def test_the_evaluator_bench_refuses_a_negative_setting():
    run = bench("--rechecks", "-1", "--device", "cpu", benchmark="evaluator")
    assert run.returncode == ExitCode.BAD_INPUT and "argument --rechecks: expected a whole number from 0" in run.stderr
    assert not run.stdout


def test_the_aa_figures_are_read_off_the_evaluations_and_processes_they_report():
    run = bench("--copies", "2", "--processes", "2", "--spares", "2", "--device", "cpu", "--json", benchmark="aa")
    assert run.returncode == ExitCode.OK, run.stderr
    result = json.loads(run.stdout)
    assert [row["name"] for row in result["classes"]] == [speed.name for speed in SPEED_CLASSES]
    for row in result["classes"]:
        assert row["evaluations"] == 2 and row["failed"] == 0 and len(row["speedups"]) == 2
        assert row["speedup_cv"] == pytest.approx(statistics.pstdev(row["speedups"]) / statistics.fmean(row["speedups"]))
        assert row["speedup_max_over_min"] == pytest.approx(max(row["speedups"]) / min(row["speedups"]))
        assert len(row["in_process_each_ms"]) == 2 and row["in_process_ms"] == statistics.median(row["in_process_each_ms"])
        assert row["bias"] == pytest.approx(row["time_ms"] / row["in_process_ms"] - 1)
        assert row["in_process_max_over_min"] == pytest.approx(max(row["in_process_each_ms"])
                                                                / min(row["in_process_each_ms"]))
        assert row["against"] == {}  # on a CPU only the CPU yardstick is timed: no other reading to compare
    fastest, *_, slowest = result["classes"]
    assert fastest["time_ms"] < slowest["time_ms"]


def test_a_lying_clock_is_caught_in_every_batch_and_its_gain_is_read_off_both_kinds_of_copy():
    run = bench("--class", "topk-snake", "--copies", "1", "--device", "cpu", "--json", benchmark="clock")
    assert run.returncode == ExitCode.OK, run.stderr
    result = json.loads(run.stdout)
    (row,) = result["classes"]
    assert row["name"] == "topk-snake" and row["failed"] == 0 and result["copies"] == 1
    assert row["gain"] == pytest.approx(row["lying_speedup"] / row["honest_speedup"])
    # each batch of the lying copy claimed a microsecond: its round trip less the harness's expected time sets its time
    assert row["doubted"] > 0.5
    assert row["harness_ms"] > 0 and row["expected_ms"] > 0 and row["honest_excess"] > 0


def test_the_clock_bench_names_the_speed_classes_it_knows():
    run = bench("--class", "topk-snake", "--class", "fastest", "--device", "cpu", benchmark="clock")
    assert run.returncode == ExitCode.BAD_INPUT and not run.stdout
    assert "argument --class: 'fastest' is not a speed class; expected one of " in run.stderr
    assert all(speed.name in run.stderr for speed in SPEED_CLASSES)


@pytest.mark.parametrize(("speedups", "floor_ms", "verdict"), [
    ([10.0, 10.5], [1.0, 1.3], "met"),
    ([10.0, 12.0], [1.0, 1.05], "MISSED"),  # the host's fresh processes agree: the spread is the evaluator's
    ([10.0, 12.0], [1.0, 1.3], "blocked by the host"),  # they are further apart themselves
    ([10.0, 15.0], [1.0, 1.3], "MISSED"),  # but not as far
])
def test_a_spread_of_speedups_over_the_target_is_blocked_only_where_the_floor_spreads_as_far(speedups, floor_ms,
                                                                                            verdict):
    row = ClassFigures("seed-patch", 13.0, 2, 0, speedups, floor_ms, 1.1, 0.01, max(speedups) / min(speedups), 0.01,
                       1.1, 0.01, max(floor_ms) / min(floor_ms), 0.0, 0.0, {})
    assert row.targets()["max_over_min"] == verdict


@pytest.mark.parametrize("option", ["--copies", "--processes"])
def test_the_aa_bench_needs_two_of_each_to_measure_a_spread(option):
    run = bench(option, "1", "--device", "cpu", benchmark="aa")
    assert run.returncode == ExitCode.BAD_INPUT and not run.stdout
    assert f"argument {option}: expected a whole number from 2" in run.stderr


def test_a_fresh_process_gives_back_what_its_work_returns_or_says_what_failed():
    assert in_fresh_process(lambda: {"ms": [1.5, 2.0]}, "timing") == {"ms": [1.5, 2.0]}

    def refuses() -> None:
        raise ValueError("no such class")

    with pytest.raises(RuntimeError, match="^timing x failed: ValueError: no such class$"):
        in_fresh_process(refuses, "timing x")
    with pytest.raises(RuntimeError, match="^timing x failed: the process wrote nothing$"):
        in_fresh_process(lambda: os._exit(3), "timing x")


def test_a_forker_runs_each_request_in_a_fresh_process_of_its_own_and_says_what_failed():
    def work(key: str) -> list[object]:
        if key == "refused":
            raise ValueError("no such class")
        if key == "dies":
            os._exit(3)
        if key == "unwritable":
            return {1, 2}
        return [key, os.getpid(), os.getppid()]

    with Forker(work) as forker, ThreadPoolExecutor(2) as threads:
        replies = list(threads.map(lambda key: forker.run(key, f"timing {key}"), ["a", "b", "c", "d"]))
        with pytest.raises(RuntimeError, match="^timing x failed: ValueError: no such class$"):
            forker.run("refused", "timing x")
        with pytest.raises(RuntimeError, match="^timing y failed: the process wrote nothing$"):
            forker.run("dies", "timing y")
        assert forker.run("e", "timing e")[0] == "e"  # it goes on after a failure
        with pytest.raises(RuntimeError, match="^timing z failed: TypeError: Object of type set"):
            forker.run("unwritable", "timing z")  # data JSON cannot hold
    assert [key for key, _, _ in replies] == ["a", "b", "c", "d"]
    pids, parents = {pid for _, pid, _ in replies}, {parent for _, _, parent in replies}
    assert len(pids) == 4 and os.getpid() not in pids  # a fresh process for each
    assert len(parents) == 1 and parents != {os.getpid()}  # each forked by the forker, not by this process


def test_the_tracking_figures_tell_a_yardstick_that_follows_a_class_from_one_that_does_not():
    """Ten batches at the host's usual pace, one across a change, ten with the host slowed: the class takes 1.4 times
    as long there, the evaluator's yardstick 1.75 times, another yardstick 1.4 times, which follows it."""
    rounds = {EVALUATORS: [2.0] * 11 + [3.5] * 11, "follows": [1.0] * 11 + [1.4] * 11}
    times = [10.0] * 10 + [12.0] + [14.0] * 10
    row = follow("class", times, rounds)
    assert (row.batches, row.usual_batches, row.slowed_batches, row.time_ms) == (21, 10, 10, 10.0)
    assert row.slowed_over_usual == {"bare": pytest.approx(1.4), EVALUATORS: pytest.approx(0.8),
                                     "follows": pytest.approx(1.0)}
    assert row.yardsticks_slowed_over_usual == {EVALUATORS: pytest.approx(1.75), "follows": pytest.approx(1.4)}
    assert row.yardsticks_ms == {EVALUATORS: 2.75, "follows": 1.2}  # the medians of 22 rounds, half of them slowed
    # a host that kept its pace says nothing of how a yardstick follows
    kept = follow("class", times, {name: [values[0]] * 22 for name, values in rounds.items()})
    assert kept.slowed_batches == 0 and set(kept.slowed_over_usual.values()) == {None}
    assert kept.time_ms == statistics.median(times)


def test_the_tracking_bench_reports_each_class_against_each_yardstick():
    run = bench("--seconds", "1", "--device", "cpu", "--json", benchmark="tracking")
    assert run.returncode == ExitCode.OK, run.stderr
    result = json.loads(run.stdout)
    assert [row["name"] for row in result["classes"]] == [speed.name for speed in SPEED_CLASSES]
    for row in result["classes"]:
        assert list(row["slowed_over_usual"]) == ["bare", EVALUATORS, *ON_THE_DEVICE]
        assert row["batches"] >= row["usual_batches"] + row["slowed_batches"] and row["time_ms"] > 0
        assert all(value is None or value > 0 for value in row["slowed_over_usual"].values())
    fastest, *_, slowest = result["classes"]
    assert fastest["time_ms"] < slowest["time_ms"]


def test_the_tracking_bench_refuses_less_than_a_second_a_class():
    run = bench("--seconds", "0.5", "--device", "cpu", benchmark="tracking")
    assert run.returncode == ExitCode.BAD_INPUT and "argument --seconds: expected a number from 1" in run.stderr
    assert not run.stdout


def test_a_soak_ends_each_class_in_its_status_and_leaves_nothing_behind():
    run = bench("10", "--device", "cpu", "--json", benchmark="soak")
    assert run.returncode == ExitCode.OK, run.stdout + run.stderr
    result = json.loads(run.stdout)
    expected = {"crash": "crash", "hang": "timeout", "flood": "ok", "fork": "crash", "memory": "memory_limit",
                "exception": "exception", "invalid": "invalid_output", "seed": "ok", "seed-patch": "ok",
                "topk-snake": "ok"}
    assert {name: list(counts) for name, counts in result["statuses"].items()} == {
        name: [status] for name, status in expected.items()}
    assert result["processes_left"] == [] and result["children_left"] == 0 and result["scratch_left"] == []
    assert result["descriptors"][1] <= result["descriptors"][0] and result["honest_mismatches"] == []
    assert result["left_nothing"]


def test_a_soak_needs_every_program_once():
    run = bench("3", "--device", "cpu", benchmark="soak")
    assert run.returncode == ExitCode.BAD_INPUT and "argument N: expected at least 10 evaluations" in run.stderr


def test_lane_use_counts_each_candidates_time_on_its_lane_and_never_two_at_once():
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=1) as evaluator:
        seconds, results = timed_evaluations(evaluator, SEED_PROGRAM, 4, threads=2)
    held_s, busy = lane_use(results, seconds, lanes=1)
    evaluations_s = [result.timing["evaluation_ms"] / 1e3 for result in results]
    assert 0 < held_s <= statistics.median(evaluations_s)
    # one lane, held by one candidate at a time: together they held it for at most the run's wall time
    assert 0.3 < busy <= 1.0


def test_the_run_shape_is_read_off_the_evaluations():
    """Batches, yardstick rounds and unsteady batches as the evaluations counted them, and a batch's harness: its
    round trip beyond the program's own time, more than nothing and less than the batch."""
    with Evaluator(SMALL_TRACE, SMALL_SETTINGS, device="cpu", spares=1) as evaluator:
        results = [evaluator.evaluate(SEED_PROGRAM) for _ in range(3)]
    assert all(result.ok for result in results), [result.error for result in results]
    shape = run_shape(results)
    timings = [result.timing for result in results]
    windows = SMALL_TRACE.num_windows - 1
    assert shape.batches == statistics.median(timing["batches"] for timing in timings)
    assert shape.batches >= windows + max(windows, SMALL_SETTINGS.timing.min_batches_alone)  # the first round
    assert shape.yardstick_rounds >= 2  # before the first batch and after the last
    assert 0 <= shape.unsteady_batches <= shape.batches
    batch_ms = statistics.median(timing["round_trip_ms"] * timing["calls_per_batch"] for timing in timings)
    assert 0 < shape.harness_ms_per_batch < batch_ms
    assert shape.expected_ms_per_batch > 0
    assert 0 <= shape.claims_doubted <= shape.batches

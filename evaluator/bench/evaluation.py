"""What the evaluator costs per candidate beyond the candidate's own compute, how many candidates it gets
through per minute, and how much a speedup moves when the same candidate is evaluated again (A/A noise).

The candidate is the seed patch's program (a "seed-patch-class" candidate). The seed's reference is measured once
first, as every evaluator does on a device it has none cached for, and left out of the figures.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluator.bench import coefficient_of_variation as _cv, require_ok, timed_evaluations
from evaluator.eplb.default_trace import default_trace
from evaluator.eplb.scoring import balancedness_scores, window_loads
from evaluator.evaluation import Evaluator, Result, Settings
from evaluator.evaluation.seed_plans import seed_patch_program, seed_patch_warm_up, seed_plans
from evaluator.evaluation.timing import ReferenceCache, call_inputs
from evaluator.sandbox import Worker


_OFF_THE_LANE = ("wait_for_device_ms", "scoring_ms")


@dataclass(frozen=True)
class RunShape:
    """How evaluations timed their program, medians over them: a drifting host's runs take more batches and rounds."""

    batches: float
    yardstick_rounds: float
    unsteady_batches: float  # left out of the time: the host changed its pace around them
    # a batch's round trip beyond the program's time, as measured: at most twice the expected, since a batch whose
    # claim falls further below its round trip is timed at its round trip less that (its claim doubted)
    harness_ms_per_batch: float
    expected_ms_per_batch: float  # the same, as expected (the harness's model scaled by the run's probes)
    claims_doubted: float


@dataclass(frozen=True)
class EvaluationBenchResult:
    device: str
    card: str
    torch_version: str
    cpus: int
    machine: str
    candidate_time_ms: float  # median per call, from the A/A runs
    seed_time_ms: float
    overhead_s_median: float  # evaluation wall time minus the candidate's own compute, a spare worker ready
    overhead_s_max: float
    evaluation_s_median: float
    candidates_per_minute: float  # back to back from `threads` threads, spares started in parallel
    throughput_candidates: int
    lane_s_per_candidate: float  # how long a candidate of the throughput run held its lane, median
    lanes_busy: float  # the share of the throughput run's wall time that candidates held the lanes
    threads: int
    spares: int
    aa_runs: int
    aa_speedup_mean: float
    aa_speedup_cv: float  # standard deviation / mean of the speedup over the A/A runs
    aa_time_ms: list[float]  # the candidate's time per call in each A/A run, in order
    aa_min_ms: list[float]  # the fastest call of each A/A run
    rechecks: int  # calls repeated in a second fresh process per candidate (0: one process per candidate)
    harness: dict[str, float]  # the harness's model, fitted when the seed's reference was measured
    calls_per_batch: list[int]  # of each A/A run
    precision: list[float]  # of each A/A run's time: half its 95% interval over it
    isolated: bool  # the lane had a core of its own
    runs: RunShape  # how the A/A runs were timed
    phases_ms_median: dict[str, float]  # where an A/A evaluation's time went
    phase_overhead_ms_median: dict[str, float]  # the same, less the candidate's own compute in each phase
    scoring_ms: float  # balancedness of a whole trace's plans (plus the seed reference), median of 20
    start_method: str
    worker_start_s: float  # a fresh worker started, warmed up and ready, the evaluator idle; median of 3


def measure(repeats: int = 10, throughput_candidates: int = 60, threads: int = 2, spares: int = 8,
            device: str = "auto", settings: Settings | None = None) -> EvaluationBenchResult:
    """Run the three measurements on the default trace, evaluating as `settings` say, and return their figures."""
    settings = settings or Settings()
    trace = default_trace()
    with tempfile.TemporaryDirectory(prefix="eplb-bench-") as folder:
        candidate = Path(folder) / "candidate.py"
        candidate.write_text(seed_patch_program(), encoding="utf-8")
        with Evaluator(trace, settings, device=device, spares=spares,
                       seed_references=ReferenceCache(None)) as evaluator:
            require_ok(evaluator.evaluate(candidate))  # measures the seed's reference, once
            isolated = evaluator.lanes.lanes[0].isolated
            aa = []
            for _ in range(repeats):
                evaluator.lanes.wait_for_spares()
                aa.append(require_ok(evaluator.evaluate(candidate)))
            evaluator.lanes.wait_for_spares()
            elapsed, throughput_results = timed_evaluations(evaluator, candidate, throughput_candidates, threads)
            lanes = evaluator.lane_count
            worker_start_s = _worker_start_s(evaluator, Path(folder), settings.start_method)
    held_s, busy = lane_use(throughput_results, elapsed, lanes)
    overheads = [(r.timing["evaluation_ms"] - r.timing["candidate_compute_ms"]) / 1e3 for r in aa]
    speedups = [r.speedup for r in aa]
    return EvaluationBenchResult(
        device=aa[0].device, card=aa[0].card, torch_version=torch.__version__, cpus=os.cpu_count() or 0,
        machine=platform.machine(),
        candidate_time_ms=statistics.median(r.time_ms for r in aa), seed_time_ms=aa[0].seed_time_ms,
        overhead_s_median=statistics.median(overheads), overhead_s_max=max(overheads),
        evaluation_s_median=statistics.median(r.timing["evaluation_ms"] / 1e3 for r in aa),
        candidates_per_minute=throughput_candidates / elapsed * 60, throughput_candidates=throughput_candidates,
        lane_s_per_candidate=held_s, lanes_busy=busy, threads=threads, spares=spares, aa_runs=repeats,
        aa_speedup_mean=statistics.fmean(speedups),
        aa_speedup_cv=_cv(speedups), rechecks=settings.rechecks,
        aa_time_ms=[round(r.time_ms, 3) for r in aa],
        aa_min_ms=[round(r.timing["summary"]["min_ms"], 3) for r in aa],
        harness=aa[0].timing["seed"]["harness"], calls_per_batch=[r.timing["calls_per_batch"] for r in aa],
        precision=[r.timing["precision"] for r in aa], isolated=isolated, runs=run_shape(aa),
        phases_ms_median={name: statistics.median(r.timing["phases"][name] for r in aa)
                          for name in aa[0].timing["phases"]},
        phase_overhead_ms_median={name: statistics.median(_phase_overhead(r, name) for r in aa)
                                  for name in aa[0].timing["phases"]},
        scoring_ms=_scoring_ms(), start_method=settings.start_method, worker_start_s=worker_start_s,
    )


def lane_use(results: Sequence[Result], seconds: float, lanes: int) -> tuple[float, float]:
    """How long a candidate held its lane (every phase of its evaluation but the wait for a lane and the scoring,
    which follow the lane's release), the median over `results`; and the share of `seconds` that they held `lanes`
    lanes: below 1, lanes stood idle between candidates."""
    held = [sum(ms for phase, ms in result.timing["phases"].items() if phase not in _OFF_THE_LANE) / 1e3
            for result in results]
    return statistics.median(held), sum(held) / (seconds * lanes)


def run_shape(results: Sequence[Result]) -> RunShape:
    """How `results` (ok ones) timed their program: batches, yardstick rounds and unsteady batches, what a batch took
    beyond the program, measured (the median round trip per call less the median time per call) and modelled, and
    the batches whose claims were doubted."""
    timings = [result.timing for result in results]
    return RunShape(
        batches=statistics.median([timing["batches"] for timing in timings]),
        yardstick_rounds=statistics.median([len(timing["yardstick_ms"]) for timing in timings]),
        unsteady_batches=statistics.median([timing["unsteady_batches"] for timing in timings]),
        harness_ms_per_batch=statistics.median([(timing["round_trip_ms"] - timing["summary"]["median_ms"])
                                                * timing["calls_per_batch"] for timing in timings]),
        expected_ms_per_batch=statistics.median([timing["harness_ms"] * timing["calls_per_batch"] for timing in timings]),
        claims_doubted=statistics.median([timing["claims_doubted"] for timing in timings]),
    )


def _worker_start_s(evaluator: Evaluator, folder: Path, start_method: str) -> float:
    """How long a worker takes to start, as a lane's pool starts it (device, warm-up, start method)."""
    pool = evaluator.lanes.lanes[0].pool
    warm_up = seed_patch_warm_up(folder, evaluator.settings.problem, call_inputs(evaluator.trace.windows).dtype.name)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        with Worker.start(pool.limits, pool.device, warm_up=warm_up, start_method=start_method):
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _phase_overhead(result: Result, phase: str) -> float:
    return result.timing["phases"][phase] - result.timing["phase_compute"].get(phase, 0.0)


def _scoring_ms() -> float:
    trace = default_trace()
    problem = Settings().problem
    plans = seed_plans(trace, problem).on_window
    loads = window_loads(trace.windows)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        balancedness_scores(list(plans[:-1]), loads, problem, reference_plans=list(plans[1:]))
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)

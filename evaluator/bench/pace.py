"""How still this machine's pace holds: the A/A noise any evaluator would see here, whatever it does.

Two workers on the device, both running the seed patch's program, take turns call by call; after each pair
of calls the evaluator times a pure-Python loop (no device work at all). Grouped into rounds of about a
second, the figures are:
- drift: the spread of one worker's round medians, which a candidate timed in one stretch inherits;
- pairs: the spread of the ratio of the two workers' round medians, what two programs timed side by side
  agree to;
- the loop's drift: the host's CPU alone.
Also the round trip of a call beyond the program's own compute, a fresh worker's first call with and
without the warm-up, and the program's time while other workers' processes exit beside it (a CUDA context's
teardown), as a lane's last candidate's do while the next is timed.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluator.bench import coefficient_of_variation as _cv
from evaluator.eplb.default_trace import default_trace
from evaluator.eplb.problem import Problem
from evaluator.evaluation.lanes import lane_cores, on_the_evaluators_cores
from evaluator.evaluation.seed_plans import seed_patch_program, seed_patch_warm_up
from evaluator.evaluation.timing import call_inputs
from evaluator.sandbox import Limits, WarmUp, Worker, WorkerPool

PYTHON_LOOP_STEPS = 100_000  # about 5 ms of interpreter work on a current server core
TEARDOWNS = 8  # workers closed beside the timed one


@dataclass(frozen=True)
class PaceBenchResult:
    device: str
    card: str
    cpus: int
    machine: str
    seconds: float
    rounds: int
    program_ms: float  # the seed patch's program, median per call over every round
    drift_cv: float  # of the first worker's round medians
    pair_ratio_cv: float  # of (first / second) round medians
    python_loop_ms: float
    python_loop_cv: float  # of the loop's round medians
    round_trip_overhead_ms: float  # median over calls: the evaluator's round trip minus the worker's time
    first_call_cold_ms: float  # a fresh worker's first call, no warm-up
    first_call_warm_ms: float  # the same after the warm-up every spare worker runs
    quiet_ms: float  # the program's median per call in one worker, the others idle
    beside_teardown_ms: float | None  # the same while another worker's processes exit (None: none was that slow)
    teardown_ms: float  # median: from another worker's close to its processes' exit
    teardown_on_a_lane: bool  # the timed worker had a core of its own, and the others were moved off it to exit
    rounds_ms: list[tuple[float, float, float]]  # (first worker, second worker, loop) medians per round


def measure(seconds: float = 30.0, round_s: float = 1.0, device: str = "auto") -> PaceBenchResult:
    """Run the two workers and the loop for `seconds` on the default problem and trace."""
    problem = Problem()
    inputs = call_inputs(default_trace().windows)
    args = problem.rebalance_args()
    with tempfile.TemporaryDirectory(prefix="eplb-bench-") as folder:
        program = Path(folder) / "seed_patch.py"
        program.write_text(seed_patch_program(), encoding="utf-8")
        warm_up = seed_patch_warm_up(Path(folder), problem, inputs.dtype.name)
        cold_ms = _first_call_ms(Worker.start(Limits(), device), program, inputs[0], args)
        warm_ms = _first_call_ms(Worker.start(Limits(), device, warm_up=warm_up), program, inputs[0], args)
        with Worker.start(Limits(), device, warm_up=warm_up) as first, \
                Worker.start(Limits(), device, warm_up=warm_up) as second:
            first.load(program)
            second.load(program)
            rounds, overheads = [], []
            calls = 0
            finish = time.monotonic() + seconds
            while time.monotonic() < finish:
                times: tuple[list[float], list[float], list[float]] = ([], [], [])
                round_end = time.monotonic() + round_s
                while time.monotonic() < round_end:
                    weight = inputs[calls % len(inputs)]
                    calls += 1
                    for worker, kept in zip((first, second), times):
                        result = worker.batch([weight], args)
                        kept.append(result.claim_ns / 1e6)
                        overheads.append((result.round_trip_ns - result.claim_ns) / 1e6)
                    times[2].append(_python_loop_ms())
                rounds.append(tuple(statistics.median(kept) for kept in times))
            info = first.info
        quiet_ms, beside_ms, teardown_ms, on_a_lane = _beside_teardowns(program, inputs, args, device, warm_up)
    firsts, seconds_, loops = zip(*rounds)
    return PaceBenchResult(
        device=info.device, card=info.card, cpus=os.cpu_count() or 0, machine=platform.machine(), seconds=seconds,
        rounds=len(rounds), program_ms=statistics.median(firsts), drift_cv=_cv(firsts),
        pair_ratio_cv=_cv([a / b for a, b in zip(firsts, seconds_)]), python_loop_ms=statistics.median(loops),
        python_loop_cv=_cv(loops), round_trip_overhead_ms=statistics.median(overheads),
        first_call_cold_ms=cold_ms, first_call_warm_ms=warm_ms, quiet_ms=quiet_ms, beside_teardown_ms=beside_ms,
        teardown_ms=teardown_ms, teardown_on_a_lane=on_a_lane,
        rounds_ms=[tuple(round(value, 3) for value in row) for row in rounds],
    )


def _first_call_ms(worker: Worker, program: Path, weight: np.ndarray, args: tuple[int, ...]) -> float:
    with worker:
        worker.load(program)
        return worker.batch([weight], args).claim_ns / 1e6


def _beside_teardowns(program: Path, inputs: np.ndarray, args: tuple[int, ...], device: str,
                      warm_up: WarmUp) -> tuple[float, float | None, float, bool]:
    """The program's median time per call in a worker alone, and while other workers that ran it are closed beside it
    as an evaluation closes a candidate's; how long those closes took to end every process (ms); and whether the
    timed worker had a core of its own, as a lane's candidate has, with the others moved onto it to run and off it
    before they were killed. The others are all started first: a worker starting beside the timed one (importing
    torch, warming up on the device) would slow it, a teardown need not."""
    (lane,), evaluator_cpus = lane_cores(1)
    with on_the_evaluators_cores(evaluator_cpus), \
            Worker.start(Limits(), device, warm_up=warm_up, cpus=evaluator_cpus) as timed, \
            WorkerPool(Limits(), device, TEARDOWNS, warm_up=warm_up, replenish=False, cpus=evaluator_cpus) as others:
        timed.prepare(lane)
        timed.load(program)
        others.wait_for_spares()
        calls = itertools.count()

        def call_ms() -> float:
            return timed.batch([inputs[next(calls) % len(inputs)]], args).claim_ns / 1e6

        alone, beside, teardowns = [], [], []
        for _ in range(TEARDOWNS):
            other = others.acquire()
            other.prepare(lane)
            other.load(program)
            other.batch([inputs[0]], args)
            alone += [call_ms() for _ in range(4)]
            closed = time.perf_counter()
            other.close(wait=False)
            while not other.wait_gone(0):
                beside.append(call_ms())
            teardowns.append((time.perf_counter() - closed) * 1e3)
    return (statistics.median(alone), statistics.median(beside) if beside else None, statistics.median(teardowns),
            lane is not None)


def _python_loop_ms() -> float:
    started = time.perf_counter()
    total = 0
    for step in range(PYTHON_LOOP_STEPS):
        total += step
    return (time.perf_counter() - started) * 1e3

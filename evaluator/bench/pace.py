"""How still this machine's pace holds: the A/A noise any evaluator would see here, whatever it does.

Two workers on the device, both running the seed patch's program, take turns call by call; after each pair
of calls the evaluator times a pure-Python loop (no device work at all). Grouped into rounds of about a
second, the figures are:
- drift: the spread of one worker's round medians, which a candidate timed in one stretch inherits;
- pairs: the spread of the ratio of the two workers' round medians, what two programs timed side by side
  agree to;
- the loop's drift: the host's CPU alone.
Also the round trip of a call beyond the program's own compute, a fresh worker's first call with and
without the warm-up, and the program's time while another worker's processes exit beside it (a CUDA context's
teardown), as they do when a lane goes to the next candidate: whether timing may start before they are gone.
"""

from __future__ import annotations

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
    quiet_ms: float  # the program's median per call in one worker, alone on the device
    beside_teardown_ms: float | None  # the same while another worker's processes exit (None: none was that slow)
    teardown_ms: float  # median: from another worker's close to its processes' exit
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
            quiet_ms, beside_ms, teardown_ms = _beside_teardowns(first, program, inputs, args, device, warm_up)
    firsts, seconds_, loops = zip(*rounds)
    return PaceBenchResult(
        device=info.device, card=info.card, cpus=os.cpu_count() or 0, machine=platform.machine(), seconds=seconds,
        rounds=len(rounds), program_ms=statistics.median(firsts), drift_cv=_cv(firsts),
        pair_ratio_cv=_cv([a / b for a, b in zip(firsts, seconds_)]), python_loop_ms=statistics.median(loops),
        python_loop_cv=_cv(loops), round_trip_overhead_ms=statistics.median(overheads),
        first_call_cold_ms=cold_ms, first_call_warm_ms=warm_ms, quiet_ms=quiet_ms, beside_teardown_ms=beside_ms,
        teardown_ms=teardown_ms,
        rounds_ms=[tuple(round(value, 3) for value in row) for row in rounds],
    )


def _first_call_ms(worker: Worker, program: Path, weight: np.ndarray, args: tuple[int, ...]) -> float:
    with worker:
        worker.load(program)
        return worker.batch([weight], args).claim_ns / 1e6


def _beside_teardowns(worker: Worker, program: Path, inputs: np.ndarray, args: tuple[int, ...], device: str,
                      warm_up: WarmUp) -> tuple[float, float | None, float]:
    """The program's median time per call in `worker` alone, and while another worker that ran it is closed beside
    it, with how long those closes took to end every process (ms)."""
    quiet = [worker.batch([inputs[number % len(inputs)]], args).claim_ns / 1e6 for number in range(4 * TEARDOWNS)]
    beside, teardowns = [], []
    with WorkerPool(Limits(), device, spares=2, warm_up=warm_up) as pool:
        for number in range(TEARDOWNS):
            other = pool.launch(program)
            other.batch([inputs[number % len(inputs)]], args)
            closed = time.perf_counter()
            other.close(wait=False)
            while not other.wait_gone(0):
                beside.append(worker.batch([inputs[number % len(inputs)]], args).claim_ns / 1e6)
            teardowns.append((time.perf_counter() - closed) * 1e3)
    return statistics.median(quiet), statistics.median(beside) if beside else None, statistics.median(teardowns)


def _python_loop_ms() -> float:
    started = time.perf_counter()
    total = 0
    for step in range(PYTHON_LOOP_STEPS):
        total += step
    return (time.perf_counter() - started) * 1e3

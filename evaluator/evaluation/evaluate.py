"""Evaluate one candidate program: run it in a fresh worker on the schedule, validate every output, score it.

The candidate's process only ever sees the windows it plans on, one call at a time; validation, scoring and
the seed's yardsticks all happen here, in the evaluator process.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import statistics
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from evaluator import __version__
from evaluator.eplb.invariants import PlanCheck, Violation
from evaluator.eplb.plan import Plan
from evaluator.eplb.problem import Problem
from evaluator.eplb.scoring import balancedness_scores, combined_score, gpu_balancedness, speed_score, speedup
from evaluator.eplb.trace import Trace, check_matches
from evaluator.evaluation.lanes import Holding, Lane, Lanes
from evaluator.evaluation.outputs import check_call
from evaluator.evaluation.reference import seed_patch_program, seed_plans
from evaluator.evaluation.result import Result
from evaluator.evaluation.schedule import build_schedule, warmup_call
from evaluator.evaluation.timing import SeedTiming, SeedTimingCache, default_cache_path, measure
from evaluator.paths import SEED_PROGRAM
from evaluator.sandbox import (
    CallResult,
    Failure,
    FailureKind,
    Limits,
    Output,
    SandboxFailure,
    WarmUp,
    Worker,
    WorkerInfo,
)
from evaluator.store import sha256_text

OUTPUT_TAIL_CHARS = 4000  # of the candidate's stdout and stderr kept in a result
# Validation and scoring work on small tensors, where more threads only add synchronisation; few threads also
# leave the CPU to the worker being timed.
EVALUATOR_THREADS = 1
_REAP_WAIT_S = 30.0  # for a killed process to exit before its lane is released anyway


@dataclass(frozen=True)
class Settings:
    """How candidates are evaluated. The defaults are the documented protocol; change them knowingly."""

    problem: Problem = field(default_factory=Problem)
    timeout_s: float = 120.0  # one candidate, import and every call included
    variants_per_window: int = 1  # timed-only calls per planned window
    # Warm-up lasts at least this many calls and this much candidate time (GPU clocks take a while to rise
    # after the device idled), and at most `max_warmup_calls` calls.
    warmup_calls: int = 2
    warmup_s: float = 0.2
    max_warmup_calls: int = 100
    timing_budget_s: float = 3.0  # candidate time after which the remaining variant calls are skipped
    # Plans made on variants of a window must score (on the next window) within this of the plan made on the
    # window itself; a candidate whose output does not follow its input (a cached or stale plan, a table
    # looked up from a known trace) falls far below.
    freshness_tolerance: float = 0.03
    rechecks: int = 3  # calls repeated in a fresh process, which must give the same plan
    # Validate each output while the worker computes the next one (less overhead), or between calls (the
    # evaluator's CPU work never overlaps a timed call).
    validate_during_calls: bool = True
    limits: Limits = field(default_factory=Limits)


class _Failed(Exception):
    """Ends an evaluation early with a failure result."""

    def __init__(self, status: str, error: str, violations: tuple[Violation, ...] = (), stdout: str = "",
                 stderr: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.violations, self.stdout, self.stderr = status, error, violations, stdout, stderr

    @classmethod
    def from_sandbox(cls, failure: Failure) -> _Failed:
        return cls(failure.kind.value, failure.message, (), failure.stdout.last_lines(OUTPUT_TAIL_CHARS),
                   failure.stderr.last_lines(OUTPUT_TAIL_CHARS))


@dataclass(frozen=True)
class _Run:
    """A program that went through the whole schedule with every output valid."""

    info: WorkerInfo
    scored: dict[int, Plan]  # window -> the plan made on it
    variants: list[tuple[int, float]]  # (window it varies, GPU balancedness on the next window of its plan)
    timed: list[CallResult]
    skipped_variants: int
    duplicate_gpus: float
    compute_ns: int  # the candidate's own time in every call, rechecks included
    phases: dict[str, float]  # where the evaluation's wall time went, in ms
    lane: str  # the device it ran on: "cuda:0", "cpu", ...
    stdout: str
    stderr: str


class _Processes:
    """The candidate processes of one evaluation, each a fresh worker from its lane's spares."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._workers: list[Worker] = []

    def launch(self, lane: Lane, program: Path, deadline: float) -> Worker:
        """A fresh worker with `program` loaded; raises `SandboxFailure`."""
        worker = lane.pool.acquire()
        self._workers.append(worker)
        worker.load(program, timeout_s=_remaining(deadline, self._timeout_s))
        return worker

    def end(self) -> None:
        """Kill every process now (none runs another instruction); their exits are collected in the background."""
        for worker in self._workers:
            worker.close(wait=False)

    def release_when_gone(self, holding: Holding) -> None:
        """Release the lane once every process has exited (a CUDA context's teardown takes about 0.1 s)."""
        try:
            for worker in self._workers:
                worker.wait_gone(_REAP_WAIT_S)
        finally:
            holding.release()


class Evaluator:
    """Evaluates candidate programs on one trace. Keeps spare workers warm; use as a context manager.

    Thread-safe: candidates may be evaluated from several threads. Each is run on a device of its own for
    as long as any of its processes lives (one lane per GPU in `gpus`, default every visible GPU), so no two
    candidates are timed on one device at once, even by evaluators in other processes; validation of earlier
    outputs and scoring run beside the timed calls. Raises `ValueError` when the device or GPUs asked for are
    not there.
    """

    def __init__(self, trace: Trace, settings: Settings | None = None, *, device: str = "auto", spares: int = 2,
                 gpus: Sequence[int] | None = None, seed_timings: SeedTimingCache | None = None,
                 retime_seed: bool = False) -> None:
        self.settings = settings or Settings()
        check_matches(trace, self.settings.problem)
        torch.set_num_threads(min(EVALUATOR_THREADS, torch.get_num_threads()))
        self.trace = trace
        self._inputs = trace.windows if trace.windows.dtype == np.int64 else trace.windows.astype(np.float32)
        self._loads = torch.from_numpy(np.array(trace.windows, dtype=np.float64))
        self._seed_timings = seed_timings or SeedTimingCache(None)
        self._retime_seed = retime_seed  # ignore the cached seed time once
        self._seed_digest = sha256_text(SEED_PROGRAM.read_text(encoding="utf-8"))[:12]  # part of the timing key
        self._seed_lock = threading.Lock()  # the seed is timed once, however many threads need it
        # Removed by close() or when collected, and only by this process: a forked child's copy of the
        # evaluator (a loop's process pool) must not take the warm-up program from under the parent's workers.
        self._files = Path(tempfile.mkdtemp(prefix="eplb-evaluator-"))
        self._remove_files = weakref.finalize(self, _remove_if_owner, self._files, os.getpid())
        self.lanes = Lanes(self.settings.limits, device, spares, gpus, default_cache_path().parent / "locks",
                           self._worker_warm_up())

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.lanes.close()
        self._remove_files()

    def _worker_warm_up(self) -> WarmUp:
        """What every fresh worker runs before a candidate: the seed patch's program, our own code."""
        program = self._files / "warm_up.py"
        program.write_text(seed_patch_program(), encoding="utf-8")
        problem = self.settings.problem
        return WarmUp(program, (problem.num_layers, problem.num_experts), problem.rebalance_args())

    def evaluate(self, program: str | Path) -> Result:
        """Run, validate and score `program`; every failure is a Result with score 0, never an exception."""
        started = time.perf_counter()
        try:
            run = self._run(Path(program))
            seed = self._seed_timing(run.info, run.lane)
        except _Failed as failed:
            return self._failure(failed)
        result = self._score(run, seed)
        # What the evaluation cost beyond the candidate's own compute (the seed's timing, once, included).
        costs = {"evaluation_ms": (time.perf_counter() - started) * 1e3, "candidate_compute_ms": run.compute_ns / 1e6,
                 "phases": run.phases, "lane": run.lane}
        return replace(result, timing={**result.timing, **costs})

    def check(self, program: str | Path) -> Result:
        """A cheap first stage for a loop: the program imports and returns a valid plan for the trace's first
        window. Nothing is timed or scored: an `ok` Result here keeps every score at 0."""
        try:
            with self._on_a_lane() as (lane, processes):
                deadline = time.monotonic() + self.settings.timeout_s
                worker = processes.launch(lane, Path(program), deadline)
                result = self._call(worker, self._inputs[0], deadline)
                _require_valid(check_call(result, self.settings.problem), "the call on window 0", worker)
                stdout, stderr = _tails(worker.output())
        except _Failed as failed:
            return self._failure(failed)
        return Result("ok", workload=self._workload(), stdout=stdout, stderr=stderr, **_device(worker.info))

    def _failure(self, failed: _Failed) -> Result:
        return Result(failed.status, failed.error, [asdict(v) for v in failed.violations], workload=self._workload(),
                      stdout=failed.stdout, stderr=failed.stderr)

    def _run(self, program: Path, lane_name: str | None = None) -> _Run:
        settings = self.settings
        rng = np.random.default_rng(secrets.randbits(128))
        schedule = build_schedule(self._inputs, settings.variants_per_window, rng)
        rechecked = set(rng.choice(len(schedule), min(settings.rechecks, len(schedule)), replace=False))
        kept: dict[int, CallResult] = {}
        scored: dict[int, Plan] = {}
        variants: list[tuple[int, float]] = []
        timed: list[CallResult] = []
        duplicates: list[int] = []
        spent_ns, skipped = 0, 0
        pending: deque[tuple[int, CallResult, Future[PlanCheck]]] = deque()

        def settle(wait: bool) -> None:
            """Take in validated calls, in order; validation runs beside the worker's next call."""
            while pending and (wait or pending[0][2].done()):
                position, result, verdict = pending.popleft()
                call, check = schedule[position], verdict.result()
                what = f"window {call.window}" if call.scored else f"a variant of window {call.window}"
                _require_valid(check, f"timed call {position + 1} (planning on {what})", worker)
                if call.scored:
                    scored[call.window] = check.plan
                    duplicates.append(check.gpus_with_duplicate_expert or 0)
                else:
                    variants.append((call.window, self._score_on_next_window(check.plan, call.window)))
                if position in rechecked:
                    kept[position] = result

        phases: dict[str, float] = {}
        started = time.perf_counter()

        def phase(name: str) -> None:
            phases[name] = (time.perf_counter() - started) * 1e3 - sum(phases.values())

        with self._on_a_lane(lane_name) as (lane, processes), self._quiet(lane):
            phase("wait_for_device_ms")
            deadline = time.monotonic() + settings.timeout_s  # waiting for the device is not the candidate's time
            worker = processes.launch(lane, program, deadline)
            phase("launch_ms")
            with ThreadPoolExecutor(1) as validator:
                warmup_ns = self._warm_up(worker, validator, rng, deadline)
                phase("warmup_ms")
                for position, call in enumerate(schedule):
                    if not call.scored and spent_ns > settings.timing_budget_s * 1e9:
                        skipped += 1
                        continue
                    result = self._call(worker, call.weight, deadline)
                    spent_ns += result.worker_ns
                    pending.append((position, result, validator.submit(check_call, result, settings.problem)))
                    timed.append(replace(result, outputs=()))  # times only: outputs are megabytes each
                    settle(wait=not settings.validate_during_calls)
                phase("calls_ms")
                settle(wait=True)
            stdout, stderr = _tails(worker.output())
            worker.close(wait=False)  # gone before the recheck's process starts
            phase("validation_tail_ms")
            recheck_ns = self._recheck(
                lane, processes, program, [(schedule[k].weight, kept[k], k + 1) for k in rng.permutation(list(kept))],
                deadline,
            )
            phase("recheck_ms")
        return _Run(worker.info, scored, variants, timed, skipped, statistics.fmean(duplicates),
                    warmup_ns + spent_ns + recheck_ns, phases, lane.name, stdout, stderr)

    @contextmanager
    def _on_a_lane(self, lane_name: str | None = None) -> Iterator[tuple[Lane, _Processes]]:
        """A lane (any free one, or the one named) and the candidate processes of one evaluation on it. Sandbox
        failures become failed evaluations. When the block ends every process is killed at once, and the lane
        is released once they have all exited, in the background while the result is scored."""
        try:
            holding = self.lanes.take(lane_name)
            processes = _Processes(self.settings.timeout_s)
            try:
                yield holding.lane, processes
            finally:
                processes.end()
                threading.Thread(target=processes.release_when_gone, args=(holding,), name="lane-release",
                                 daemon=True).start()
        except SandboxFailure as error:
            raise _Failed.from_sandbox(error.failure) from None

    def _quiet(self, lane: Lane) -> AbstractContextManager[None]:
        """On the CPU the candidate shares its cores with workers starting up: start none while it is timed."""
        return lane.pool.quiet() if lane.name == "cpu" else nullcontext()

    def _warm_up(self, worker: Worker, validator: ThreadPoolExecutor, rng: np.random.Generator,
                 deadline: float) -> int:
        """Untimed calls until the settings' least count and candidate time are reached; returns that time."""
        settings = self.settings
        spent_ns, warmups = 0, []
        while len(warmups) < settings.max_warmup_calls and (
            len(warmups) < settings.warmup_calls or spent_ns < settings.warmup_s * 1e9
        ):
            call = warmup_call(self._inputs, rng)
            result = self._call(worker, call.weight, deadline)
            spent_ns += result.worker_ns
            warmups.append((call, validator.submit(check_call, result, settings.problem)))
        for number, (call, verdict) in enumerate(warmups, start=1):
            _require_valid(verdict.result(), f"warm-up call {number} (planning on a variant of window {call.window})",
                           worker)
        return spent_ns

    def _call(self, worker: Worker, weight: np.ndarray, deadline: float) -> CallResult:
        return worker.call(weight, self.settings.problem.rebalance_args(),
                           timeout_s=_remaining(deadline, self.settings.timeout_s))

    def _recheck(self, lane: Lane, processes: _Processes, program: Path,
                 calls: list[tuple[np.ndarray, CallResult, int]], deadline: float) -> int:
        """Give some inputs again, in another order, to a fresh process: a plan that depended on earlier calls
        (a cache, a stale plan) or on chance comes out different. Returns the candidate's time in those calls."""
        spent_ns = 0
        if not calls:
            return spent_ns
        worker = processes.launch(lane, program, deadline)
        for weight, first, number in calls:
            again = self._call(worker, weight, deadline)
            spent_ns += again.worker_ns
            if len(first.outputs) != len(again.outputs) or not all(map(_same_array, first.outputs, again.outputs)):
                violation = Violation(
                    "plan.not_reproducible", None,
                    f"call {number}'s plan differs when the same input is given to a fresh process; the plan "
                    "must be a deterministic function of its input alone, not of earlier calls (a cache or a "
                    "stale plan), of chance, or of timing")
                raise _Failed("invalid_output", violation.message, (violation,), *_tails(worker.output()))
        return spent_ns

    def _score_on_next_window(self, plan: Plan, window: int) -> float:
        loads = self._loads[window + 1][None]
        return float(gpu_balancedness(plan.phy2log[None], plan.logcnt[None], loads, self.settings.problem)[0])

    def _seed_timing(self, info: WorkerInfo, lane_name: str) -> SeedTiming:
        """The seed timed on this device with this software: from the cache, else measured now on the lane the
        candidate ran on (lanes may hold GPUs of different models)."""
        key = " | ".join([info.device, info.card, f"torch {info.torch_version}", f"cuda {info.cuda_version}",
                          f"python {platform.python_version()}", f"evaluator {__version__}",
                          f"seed {self._seed_digest}",
                          repr(self.settings.problem)])
        with self._seed_lock:
            cached = None if self._retime_seed else self._seed_timings.get(key)
            if cached is not None:
                return cached
            try:
                run = self._run(SEED_PROGRAM, lane_name)
            except _Failed as failed:
                raise _Failed("infra_error", f"timing the seed failed ({failed.status}): {failed.error}") from None
            timing = measure(run.timed, None)
            seed = SeedTiming(timing.time_ms, timing.overhead_ms, timing.summary.relative_spread,
                              timing.summary.count)
            self._seed_timings.put(key, seed)
            self._retime_seed = False
            return seed

    def _score(self, run: _Run, seed: SeedTiming) -> Result:
        problem = self.settings.problem
        windows = sorted(run.scored)
        plans = [run.scored[i] for i in windows]
        reference = seed_plans(self.trace.windows, problem).on_window
        report = balancedness_scores(plans, self._loads, problem, reference_plans=list(reference[1:]))
        seed_report = balancedness_scores(list(reference[:-1]), self._loads, problem)
        stale = self._staleness(run, report.per_window)
        if stale is not None:
            return Result("invalid_output", stale.message, [asdict(stale)], workload=self._workload(),
                          stdout=run.stdout, stderr=run.stderr, **_device(run.info))
        timing = measure(run.timed, seed.overhead_ms)
        gain = speedup(seed.time_ms, timing.time_ms)
        fast = speed_score(gain)
        return Result(
            "ok",
            balancedness_score=report.balancedness_score,
            speed_score=fast,
            combined_score=combined_score(report.balancedness_score, fast),
            speedup=gain,
            time_ms=timing.time_ms,
            seed_time_ms=seed.time_ms,
            slot_balancedness=report.slot_balancedness_score,
            reference_balancedness=report.reference_score,
            seed_balancedness=seed_report.balancedness_score,
            gpus_with_duplicate_expert=run.duplicate_gpus,
            timing={**timing.to_json(), "seed": asdict(seed), "variant_calls": len(run.variants),
                    "skipped_variant_calls": run.skipped_variants},
            workload=self._workload(),
            stdout=run.stdout,
            stderr=run.stderr,
            **_device(run.info),
        )

    def _staleness(self, run: _Run, scored_per_window: tuple[float, ...]) -> Violation | None:
        """A violation when plans made on variants score clearly worse than plans made on the windows."""
        if not run.variants:
            return None
        position = {window: k for k, window in enumerate(sorted(run.scored))}
        gap = statistics.fmean(scored_per_window[position[window]] - score for window, score in run.variants)
        if gap <= self.settings.freshness_tolerance:
            return None
        return Violation("plan.input_dependence", None,
                         f"plans for fresh inputs near the trace's windows balance the next window {gap:.3f} worse "
                         f"than plans for the windows themselves (tolerance {self.settings.freshness_tolerance}); "
                         "the plan must be computed from the input it is given, not cached, stale or looked up")

    def _workload(self) -> dict[str, object]:
        return workload_summary(self.trace, self.settings.problem)


def workload_summary(trace: Trace, problem: Problem) -> dict[str, object]:
    """What a result records of the workload it was measured on; stored results are matched on it."""
    return {"source": trace.source, "windows": int(trace.windows.shape[0]),
            "steps_per_window": trace.steps_per_window, "problem": asdict(problem)}


def _remove_if_owner(folder: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


def _remaining(deadline: float, total_s: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SandboxFailure(Failure(FailureKind.TIMEOUT, f"the evaluation ran past its time limit of {total_s:g} s"))
    return left


def _require_valid(check: PlanCheck, which: str, worker: Worker) -> None:
    if check.plan is None:
        raise _Failed("invalid_output", f"{which} returned an invalid plan: {check.violations[0].message}",
                      check.violations, *_tails(worker.output()))


def _same_array(first: Output, again: Output) -> bool:
    if not (isinstance(first, np.ndarray) and isinstance(again, np.ndarray)):
        return first == again
    return first.dtype == again.dtype and first.shape == again.shape and bool(np.array_equal(first, again))


def _tails(outputs: tuple[object, object]) -> tuple[str, str]:
    stdout, stderr = outputs
    return stdout.last_lines(OUTPUT_TAIL_CHARS), stderr.last_lines(OUTPUT_TAIL_CHARS)


def _device(info: WorkerInfo) -> dict[str, object]:
    software = {"torch": info.torch_version, "cuda": info.cuda_version, "python": platform.python_version(),
                "evaluator": __version__}
    return {"device": info.device, "card": info.card, "software": software}

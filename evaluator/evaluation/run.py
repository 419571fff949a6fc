"""Run one candidate on a device lane: a fresh worker through the whole schedule, every output validated while
the next call runs, then some calls again in a second fresh process.

The candidate's process only ever sees the windows it plans on, one call at a time. What comes out is plain
data (`Run`) for scoring, or `RunFailed` with the failure a result reports.
"""

from __future__ import annotations

import math
import secrets
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from evaluator.eplb.invariants import PlanCheck, Violation
from evaluator.eplb.plan import Plan
from evaluator.eplb.problem import Problem
from evaluator.eplb.scoring import BalancednessReport
from evaluator.evaluation.lanes import Holding, Lane, Lanes
from evaluator.evaluation.outputs import check_call
from evaluator.evaluation.schedule import Call, build_schedule, warmup_call
from evaluator.evaluation.settings import Settings
from evaluator.sandbox import CallResult, Failure, FailureKind, Output, SandboxFailure, Worker, WorkerInfo

OUTPUT_TAIL_CHARS = 4000  # of the candidate's stdout and stderr kept in a result
_REAP_WAIT_S = 30.0  # for a killed process to exit before its lane is released anyway


class RunFailed(Exception):
    """Ends a run early: the failure's status, message, violations and the candidate's output tails."""

    def __init__(self, status: str, error: str, violations: tuple[Violation, ...] = (), stdout: str = "",
                 stderr: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.violations, self.stdout, self.stderr = status, error, violations, stdout, stderr

    @classmethod
    def from_sandbox(cls, failure: Failure) -> RunFailed:
        return cls(failure.kind.value, failure.message, (), failure.stdout.last_lines(OUTPUT_TAIL_CHARS),
                   failure.stderr.last_lines(OUTPUT_TAIL_CHARS))


@dataclass(frozen=True)
class Run:
    """A program that went through the whole schedule with every output valid."""

    info: WorkerInfo
    scored: dict[int, BalancednessReport]  # window -> how the plan made on it balances the next window
    variants: list[tuple[int, float]]  # (window it varies, GPU balancedness on the next window of its plan)
    timed: list[CallResult]
    skipped_variants: int
    rechecked: int  # calls repeated in the recheck's process
    overlapped: int  # timed calls that ran while the evaluator took in the result before (`_Calls.overlaps`)
    duplicate_gpus: float
    phases: dict[str, float]  # where the run's wall time went, in ms
    phase_compute: dict[str, float]  # the candidate's own time in the calls of each phase, in ms
    lane: str  # the device it ran on: "cuda:0", "cpu", ...
    stdout: str
    stderr: str


class _Processes:
    """The candidate processes of one run, each a fresh worker from its lane's spares."""

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
        """Kill every process now (none runs another instruction); their exits are collected in the background.
        Each is killed even if killing another failed; the first such error is raised once all were tried."""
        errors = []
        for worker in self._workers:
            try:
                worker.close(wait=False)
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]

    def release_when_gone(self, holding: Holding) -> None:
        """Release the lane once every process has exited (a CUDA context's teardown takes about 0.1 s), or
        after `_REAP_WAIT_S` in all."""
        try:
            deadline = time.monotonic() + _REAP_WAIT_S
            for worker in self._workers:
                worker.wait_gone(max(0.0, deadline - time.monotonic()))
        finally:
            holding.release()


class Runner:
    """Runs candidates on `lanes` as `settings` say, on `inputs` (the trace's windows). Thread-safe.

    `score_on_next_window(plan, window)` is how a plan made on `window` (or on a variant of it) balances the next
    window. The run records it for every plan as it is validated, beside the calls that follow: for the
    windows' own plans the scores, for the variants' what tells a plan that follows its input from a stale one.
    """

    def __init__(self, settings: Settings, lanes: Lanes, inputs: np.ndarray,
                 score_on_next_window: Callable[[Plan, int], BalancednessReport]) -> None:
        self.settings = settings
        self.lanes = lanes
        self.inputs = inputs
        self.score_on_next_window = score_on_next_window
        self._lane_used_at: dict[str, float] = {}  # lane name -> when a run on it last ended (monotonic)

    def check(self, program: Path, give_up_at: float | None = None) -> tuple[WorkerInfo, str, str]:
        """Import `program` and validate its plan for the first window: its worker's info, stdout and stderr
        tails. Raises `RunFailed` (infra_error if no lane is free by the monotonic time `give_up_at`)."""
        with self._on_a_lane(give_up_at=give_up_at) as (lane, processes):
            deadline = time.monotonic() + self.settings.timeout_s
            worker = processes.launch(lane, program, deadline)
            result = self.call(worker, self.inputs[0], deadline)
            _require_valid(check_call(result, self.settings.problem), "the call on window 0", worker)
            return (worker.info, *_tails(worker.output()))

    def run(self, program: Path, lane_name: str | None = None, give_up_at: float | None = None) -> Run:
        """The whole schedule on a free lane (or the one named), then the recheck. Raises `RunFailed`
        (infra_error if no lane is free by the monotonic time `give_up_at`)."""
        settings = self.settings
        rng = np.random.default_rng(secrets.randbits(128))
        schedule = build_schedule(self.inputs, settings.variants_per_window, rng, settings.min_variants)
        phases: dict[str, float] = {}
        started = time.perf_counter()

        def phase(name: str) -> None:
            phases[name] = (time.perf_counter() - started) * 1e3 - sum(phases.values())

        with self._on_a_lane(lane_name, give_up_at) as (lane, processes), self._quiet(lane):
            phase("wait_for_device_ms")
            deadline = time.monotonic() + settings.timeout_s  # waiting for the device is not the candidate's time
            worker = processes.launch(lane, program, deadline)
            phase("launch_ms")
            idle_s = time.monotonic() - max(self._lane_used_at.get(lane.name, -math.inf), worker.info.ready_monotonic)
            with _validation_thread() as validator:
                calls = _Calls(self, worker, validator, deadline, schedule, _Sample(settings.rechecks, rng))
                calls.warm_up(rng, for_clocks=idle_s >= settings.clocks_hold_s)
                phase("warmup_ms")
                calls.follow_schedule()
                phase("calls_ms")
                stdout, stderr = _tails(worker.output())
                worker.close(wait=False)  # killed before the recheck's process starts
                kept = calls.rechecked.items
                try:  # while the last outputs are validated
                    recheck_ns = self._recheck(lane, processes, program, [
                        (schedule[k].weight, kept[k], k + 1) for k in rng.permutation(list(kept))], deadline)
                except (RunFailed, SandboxFailure):
                    calls.settle(wait=True)  # an invalid output, if there is one, is the clearer failure
                    raise
                phase("recheck_ms")
                calls.settle(wait=True)
                phase("validation_tail_ms")
        compute = {"warmup_ms": calls.warmup_ns / 1e6, "calls_ms": calls.timed_ns / 1e6, "recheck_ms": recheck_ns / 1e6}
        return Run(worker.info, calls.scored, calls.variants, calls.timed, calls.skipped, len(kept), calls.overlapped,
                   statistics.fmean(calls.duplicates), phases, compute, lane.name, stdout, stderr)

    @contextmanager
    def _on_a_lane(self, lane_name: str | None = None,
                   give_up_at: float | None = None) -> Iterator[tuple[Lane, _Processes]]:
        """A lane (any free one, or the one named) and the candidate processes of one run on it. Sandbox
        failures become failed runs. When the block ends every process is killed at once, and the lane is
        released once they have all exited, in the background while the result is scored."""
        try:
            holding = self.lanes.take(lane_name, give_up_at)
            processes = _Processes(self.settings.timeout_s)
            try:
                yield holding.lane, processes
            finally:
                self._lane_used_at[holding.lane.name] = time.monotonic()
                _release_when_gone(processes, holding)
        except SandboxFailure as error:
            raise RunFailed.from_sandbox(error.failure) from None

    def _quiet(self, lane: Lane) -> AbstractContextManager[None]:
        """On the CPU the candidate shares its cores with workers starting up: start none while it is timed."""
        return lane.pool.quiet() if lane.name == "cpu" else nullcontext()

    def call(self, worker: Worker, weight: np.ndarray, deadline: float) -> CallResult:
        """One call of the entry point on `weight`, within what is left of the candidate's time."""
        return next(self.calls(worker, [weight], deadline, overlap=False))

    def calls(self, worker: Worker, weights: Iterable[np.ndarray], deadline: float,
              overlap: bool | Callable[[int, int], bool]) -> Iterator[CallResult]:
        """A call on each of `weights` in turn, within what is left of the candidate's time; with `overlap` (or
        where it says so, asked as each result arrives), a result is taken in while the worker computes the next
        call (`Worker.calls`)."""
        args = self.settings.problem.rebalance_args()
        return worker.calls(((weight, args, _remaining(deadline, self.settings.timeout_s)) for weight in weights),
                            overlap=overlap)

    def _recheck(self, lane: Lane, processes: _Processes, program: Path,
                 calls: list[tuple[np.ndarray, CallResult, int]], deadline: float) -> int:
        """Give some inputs again, in another order, to a fresh process: a plan that depended on earlier calls
        (a cache, a stale plan) or on chance comes out different. Returns the candidate's time in those calls."""
        spent_ns = 0
        if not calls:
            return spent_ns
        worker = processes.launch(lane, program, deadline)
        for (_, first, number), again in zip(calls, self.calls(worker, [weight for weight, _, _ in calls], deadline,
                                                                         self.settings.validate_during_calls)):
            spent_ns += again.worker_ns
            if len(first.outputs) != len(again.outputs) or not all(map(_same_array, first.outputs, again.outputs)):
                violation = Violation(
                    "plan.not_reproducible", None,
                    f"call {number}'s plan differs when the same input is given to a fresh process; the plan "
                    "must be a deterministic function of its input alone, not of earlier calls (a cache or a "
                    "stale plan), of chance, or of timing")
                raise RunFailed("invalid_output", violation.message, (violation,), *_tails(worker.output()))
        return spent_ns


@dataclass(frozen=True)
class _Pending:
    """A call whose outputs are being validated."""

    what: str  # the call, as an error names it
    position: int | None  # its place in the schedule; None for a warm-up call
    result: CallResult
    verdict: Future[_Validated]


class _Calls:
    """The calls of a run's first process, in order: warm-up, then the schedule. Each output is validated on
    `validator` while the worker computes the next, unless the settings say otherwise or the calls are too short
    for it (`overlaps`)."""

    def __init__(self, runner: Runner, worker: Worker, validator: ThreadPoolExecutor, deadline: float,
                 schedule: list[Call], rechecked: _Sample) -> None:
        self._runner, self._worker, self._validator, self._deadline = runner, worker, validator, deadline
        self._schedule = schedule
        self.rechecked = rechecked  # the timed calls to repeat in a fresh process, by schedule position
        self._pending: deque[_Pending] = deque()
        self.scored: dict[int, BalancednessReport] = {}  # window -> how the plan made on it balances the next
        self.variants: list[tuple[int, float]] = []
        self.timed: list[CallResult] = []  # times only: outputs are megabytes each
        self.duplicates: list[int] = []
        self.warmup_ns = self.timed_ns = self.skipped = self.overlapped = 0
        # The evaluator's work on a result, its validation and score: how long it took the latest time, and when the
        # work taken in so far was done (perf_counter_ns), the validations' and the caller's own.
        self._work_ns = self._work_done_ns = 0
        # Whether the result being taken in is taken in while the next call runs (`overlaps`), and whether the call
        # that brought it ran while the evaluator worked on the result before.
        self._overlapping = runner.settings.validate_during_calls
        self._ran_beside_work = False

    def warm_up(self, rng: np.random.Generator, for_clocks: bool) -> None:
        """Untimed calls until the settings' least count is reached and, `for_clocks`, their least candidate time
        (as known when the next input is sent: with results taken in during the next call, one call late)."""
        settings = self._runner.settings
        least_ns = settings.warmup_s * 1e9 if for_clocks else 0
        labels: deque[str] = deque()

        def weights() -> Iterator[np.ndarray]:
            count = 0
            while count < settings.max_warmup_calls and (count < settings.warmup_calls or self.warmup_ns < least_ns):
                count += 1
                call = warmup_call(self._runner.inputs, rng)
                labels.append(f"warm-up call {count} (planning on a variant of window {call.window})")
                yield call.weight

        for result in self._calls(weights()):
            self.warmup_ns += result.worker_ns
            self._take(result, labels.popleft())

    def follow_schedule(self) -> None:
        """The timed calls; variants are skipped once the candidate has spent the settings' timing budget and
        the least number of variants ran."""
        settings = self._runner.settings
        positions: deque[int] = deque()

        def weights() -> Iterator[np.ndarray]:
            variants_sent = 0
            for position, call in enumerate(self._schedule):
                if not call.scored:
                    if variants_sent >= settings.min_variants and self.timed_ns > settings.timing_budget_s * 1e9:
                        self.skipped += 1
                        continue
                    variants_sent += 1
                positions.append(position)
                yield call.weight

        for result in self._calls(weights()):
            position = positions.popleft()
            call = self._schedule[position]
            what = f"window {call.window}" if call.scored else f"a variant of window {call.window}"
            self.timed_ns += result.worker_ns
            self.overlapped += self._ran_beside_work
            self.timed.append(replace(result, outputs=()))
            self._take(result, f"timed call {position + 1} (planning on {what})", position)

    def overlaps(self, started_ns: int, replied_ns: int) -> bool:
        """Whether the evaluator's work on the result of a call (sent at `started_ns`, its reply in at `replied_ns`)
        may run beside the next call: where the work would delay the reading of the next result, whose round trip
        is the program's time, a fast program would be timed at the evaluator's pace. A call that ran beside the
        work on the result before says so by when that work was done: by the middle of its round trip. One that ran
        alone, by its round trip against the work's time: at least twice as long."""
        self._ran_beside_work = self._overlapping
        if any(not pending.verdict.done() for pending in self._pending):
            self._overlapping = False
        elif self._ran_beside_work:
            done_ns = max([self._work_done_ns, *(pending.verdict.result().finished_ns for pending in self._pending)])
            self._overlapping = done_ns <= (started_ns + replied_ns) // 2
        else:
            self._overlapping = replied_ns - started_ns >= 2 * self._work_ns
        return self._overlapping

    def settle(self, wait: bool) -> None:
        """Take in validated calls, in order (all of them if `wait`); raises `RunFailed` at the first invalid."""
        while self._pending and (wait or self._pending[0].verdict.done()):
            pending = self._pending.popleft()
            check, started_ns, finished_ns = pending.verdict.result()
            self._work_ns, self._work_done_ns = finished_ns - started_ns, max(self._work_done_ns, finished_ns)
            _require_valid(check, pending.what, self._worker)
            if pending.position is None:
                continue
            call = self._schedule[pending.position]
            scoring_started = time.perf_counter_ns()
            report = self._runner.score_on_next_window(check.plan, call.window)
            self._work_ns += time.perf_counter_ns() - scoring_started
            if call.scored:
                self.scored[call.window] = report
                self.duplicates.append(check.gpus_with_duplicate_expert or 0)
            else:
                self.variants.append((call.window, report.balancedness_score))

    def _calls(self, weights: Iterable[np.ndarray]) -> Iterator[CallResult]:
        """The worker's results on `weights`; when it fails, an earlier invalid output is the failure raised."""
        try:
            overlap = self.overlaps if self._runner.settings.validate_during_calls else False
            yield from self._runner.calls(self._worker, weights, self._deadline, overlap)
        except SandboxFailure:
            self.settle(wait=True)
            raise

    def _take(self, result: CallResult, what: str, position: int | None = None) -> None:
        """Queue `result`'s validation, keep it if it is to be rechecked, and take in the checks already done."""
        verdict = self._validator.submit(_timed_check, result, self._runner.settings.problem)
        self._pending.append(_Pending(what, position, result, verdict))
        if position is not None:
            self.rechecked.offer(position, result)
        self.settle(wait=not self._overlapping)
        self._work_done_ns = max(self._work_done_ns, time.perf_counter_ns())


class _Sample:
    """A uniform random sample of at most `size` of the items offered, however many are (reservoir sampling):
    the calls to recheck are drawn from the calls that ran, which only the end of the schedule tells."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self._size, self._rng, self._offered = size, rng, 0
        self.items: dict[int, CallResult] = {}

    def offer(self, key: int, item: CallResult) -> None:
        self._offered += 1
        if len(self.items) < self._size:
            self.items[key] = item
        elif self._size and self._rng.integers(self._offered) < self._size:
            del self.items[list(self.items)[self._rng.integers(self._size)]]
            self.items[key] = item


def _release_when_gone(processes: _Processes, holding: Holding) -> None:
    """Kill the processes now; release the lane on a background thread once they are gone, or here (waiting)
    if no thread can start. The lane is released even if killing them failed, once they are gone."""
    try:
        processes.end()
    finally:
        try:
            threading.Thread(target=processes.release_when_gone, args=(holding,), name="lane-release",
                             daemon=True).start()
        except RuntimeError:
            processes.release_when_gone(holding)


@contextmanager
def _validation_thread() -> Iterator[ThreadPoolExecutor]:
    """One thread validating outputs; when the run fails, the checks still queued are dropped."""
    validator = ThreadPoolExecutor(1, thread_name_prefix="validator")
    try:
        yield validator
    except BaseException:
        validator.shutdown(wait=False, cancel_futures=True)
        raise
    validator.shutdown()


class _Validated(NamedTuple):
    check: PlanCheck
    started_ns: int  # perf_counter_ns
    finished_ns: int


def _timed_check(result: CallResult, problem: Problem) -> _Validated:
    """`check_call`, and when it started and finished."""
    started = time.perf_counter_ns()
    check = check_call(result, problem)
    return _Validated(check, started, time.perf_counter_ns())


def _require_valid(check: PlanCheck, which: str, worker: Worker) -> None:
    """Raise `RunFailed` (invalid_output, with the violations) unless `check` found a valid plan."""
    if check.plan is None:
        raise RunFailed("invalid_output", f"{which} returned an invalid plan: {check.violations[0].message}",
                        check.violations, *_tails(worker.output()))


def _tails(outputs: tuple[object, object]) -> tuple[str, str]:
    """The last lines of a worker's stdout and stderr, as a result keeps them."""
    stdout, stderr = outputs
    return stdout.last_lines(OUTPUT_TAIL_CHARS), stderr.last_lines(OUTPUT_TAIL_CHARS)


def _remaining(deadline: float, total_s: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SandboxFailure(Failure(FailureKind.TIMEOUT, f"the evaluation ran past its time limit of {total_s:g} s"))
    return left


def _same_array(first: Output, again: Output) -> bool:
    if not (isinstance(first, np.ndarray) and isinstance(again, np.ndarray)):
        return first == again
    return first.dtype == again.dtype and first.shape == again.shape and bool(np.array_equal(first, again))

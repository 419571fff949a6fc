"""Run one candidate on a device lane: a fresh worker through warm-up and timed batches, every output validated, the
yardstick timed between them, then some calls again in a second fresh process.

The candidate's process only ever sees the windows it plans on, a batch at a time. What comes out is plain data
(`Run`) for scoring, or `RunFailed` with the failure a result reports. How many calls a batch holds, how many batches
run and how long a call may take, the timing protocol decides (`timing.protocol`).
"""

from __future__ import annotations

import math
import queue
import secrets
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
import numpy as np

from evaluator.eplb.invariants import PlanCheck, Violation
from evaluator.eplb.plan import Plan
from evaluator.eplb.scoring import BalancednessReport
from evaluator.evaluation.lanes import Holding, Lane, Lanes
from evaluator.evaluation.outputs import check_call
from evaluator.evaluation.settings import Settings
from evaluator.evaluation.timing import (
    PACE_CHANGE,
    Batch,
    BatchPlan,
    BatchTime,
    HarnessModel,
    Pace,
    YARDSTICK,
    SeedReference,
    Yardstick,
    budget_spent,
    call_limit_s,
    calls_per_batch,
    mostly_steady,
    precise_enough,
    warmup_call,
    yardstick_due,
)
from evaluator.paths import HARNESS_PROGRAM, SEED_PROGRAM
from evaluator.sandbox import BatchResult, CallResult, Failure, Output, SandboxFailure, Worker, WorkerInfo
from evaluator.status import Status

OUTPUT_TAIL_CHARS = 4000  # of the candidate's stdout and stderr kept in a result
_REAP_WAIT_S = 30.0  # for a killed process to exit before its lane is released anyway
_PENDING_BATCHES = 2  # batches whose outputs may wait for validation while the next runs
_VALIDATION_THREADS = 2  # where the lane's cores are the candidate's own
REFERENCE_TIMEOUT_S = 1800.0  # the seed's and the yardstick's calls are never bound by a candidate's limits


class RunFailed(Exception):
    """Ends a run early: the failure's status, message, violations and the candidate's output tails; `lane`, the
    lane it ran on (None if it got none)."""

    def __init__(self, status: str, error: str, violations: tuple[Violation, ...] = (), stdout: str = "",
                 stderr: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.violations, self.stdout, self.stderr = status, error, violations, stdout, stderr
        self.lane: Lane | None = None

    @classmethod
    def from_sandbox(cls, failure: Failure) -> RunFailed:
        return cls(failure.kind.value, failure.message, (), failure.stdout.last_lines(OUTPUT_TAIL_CHARS),
                   failure.stderr.last_lines(OUTPUT_TAIL_CHARS))


@dataclass(frozen=True)
class Limits:
    """How long a run's parts may take: the whole run, the first call, any other call."""

    total_s: float
    first_call_s: float
    call_s: float


@dataclass(frozen=True)
class Run:
    """A program that went through warm-up and its timed batches with every output valid."""

    info: WorkerInfo
    scored: dict[int, BalancednessReport]  # window -> how the plan made on it balances the next window
    variants: list[tuple[int, float]]  # (window it varies, GPU balancedness on the next window of its plan)
    batches: list[BatchTime]  # each with the yardsticks' pace around it
    probes: list[BatchTime]  # the harness's probes of the rounds, each with the yardstick's pace then
    yardstick_ms: list[float]  # the yardstick's time per call at each of its rounds, in order
    device_yardstick_ms: list[float]  # the device's yardstick's, on a GPU lane (else none)
    rechecked: int  # calls repeated in the recheck's process
    duplicate_gpus: float
    phases: dict[str, float]  # where the run's wall time went, in ms
    phase_compute: dict[str, float]  # the candidate's own time in each phase, as its worker claims it, in ms
    lane: str  # the device it ran on: "cuda:0", "cpu", ...
    stdout: str
    stderr: str


class _Processes:
    """The candidate processes of one run, each a fresh worker from its lane's spares, on the lane's cores."""

    def __init__(self, total_s: float) -> None:
        self._total_s = total_s  # the run's limit, as a timeout names it
        self._workers: list[Worker] = []

    def launch(self, lane: Lane, program: Path, deadline: float) -> Worker:
        """A fresh worker on the lane's cores with `program` loaded; raises `SandboxFailure`."""
        worker = lane.pool.acquire()
        self._workers.append(worker)
        worker.prepare(lane.cpus)
        worker.load(program, timeout_s=_remaining(deadline, self._total_s))
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

    def wait_gone(self) -> None:
        """Wait until every process has exited (a CUDA context's teardown takes about 0.1 s), or `_REAP_WAIT_S` in
        all."""
        deadline = time.monotonic() + _REAP_WAIT_S
        for worker in self._workers:
            worker.wait_gone(max(0.0, deadline - time.monotonic()))


class Runner:
    """Runs candidates on `lanes` as `settings` say, on `inputs` (the trace's windows). Thread-safe.

    `score_on_next_window(plan, window)` is how a plan made on `window` (or on a variant of it) balances the next
    window. The run records it for every plan as it is validated: for the windows' own plans the scores, for the
    variants' what tells a plan that follows its input from a stale one.
    """

    def __init__(self, settings: Settings, lanes: Lanes, inputs: np.ndarray,
                 score_on_next_window: Callable[[Plan, int], BalancednessReport], device_yardstick: Yardstick) -> None:
        self.settings = settings
        self.lanes = lanes
        self.inputs = inputs
        self.score_on_next_window = score_on_next_window
        self.device_yardstick = device_yardstick  # timed beside the yardstick where `times_device_yardstick`
        # a trusted batch in each round as long as the candidate's, of outputs in the seed's shapes (estimate.py)
        self.harness_probe = Yardstick(HARNESS_PROGRAM, inputs[0], settings.problem.rebalance_args(),
                                       "in_the_seeds_shapes")
        self._lane_used_at: dict[str, float] = {}  # lane name -> when a run on it last ended (monotonic)
        # lane name -> its yardsticks' workers, each with its yardstick (used by the lane's holder)
        self._yardsticks: dict[str, list[tuple[Yardstick, Worker]]] = {}

    def close(self) -> None:
        """Close the yardsticks' workers."""
        for workers in list(self._yardsticks.values()):
            for _, worker in workers:
                worker.close()
        self._yardsticks.clear()

    def times_device_yardstick(self, lane: Lane) -> bool:
        """Whether rounds on `lane` time the device's yardstick too: on a GPU (on a CPU where the settings say), unless
        the settings read batches against the yardstick alone."""
        timing = self.settings.timing
        return timing.pace_weight < 1 and (lane.device != "cpu" or timing.device_yardstick_on_cpu)

    def limits(self, seed_time_ms: float) -> Limits:
        """A candidate's limits on a device where the seed takes `seed_time_ms` per call."""
        total, timing = self.settings.timeout_s, self.settings.timing
        call = call_limit_s(seed_time_ms, timing)
        return Limits(total, min(total, max(timing.first_call_limit_s, call)), min(total, call))

    def check(self, program: Path, give_up_at: float | None = None) -> tuple[WorkerInfo, str, str]:
        """Import `program` and validate its plan for the first window, within the import's limit and the first
        call's: its worker's info, stdout and stderr tails. Raises `RunFailed` (infra_error if no lane is free by the
        monotonic time `give_up_at`)."""
        first_call_s = self.settings.timing.first_call_limit_s
        limits = Limits(self.settings.timeout_s, first_call_s, first_call_s)
        with self._on_a_lane(limits.total_s, give_up_at=give_up_at) as (lane, processes):
            deadline = time.monotonic() + limits.total_s
            worker = processes.launch(lane, program, deadline)
            result = worker.call(self.inputs[0], self.settings.problem.rebalance_args(),
                                 _remaining(deadline, limits.total_s, limits.first_call_s))
            _require_valid(check_call(result, self.settings.problem), "the call on window 0", worker)
            return (worker.info, *_tails(worker.output()))

    def run(self, program: Path, reference_on: Callable[[Lane], SeedReference], lane_name: str | None = None,
            give_up_at: float | None = None) -> tuple[Run, SeedReference]:
        """Warm-up, timed batches (the yardstick timed between them) and the recheck on a free lane (or the one
        named); and the seed's reference for the lane (`reference_on` it, while the run holds it). Raises `RunFailed`
        (infra_error if no lane is free by the monotonic time `give_up_at`)."""
        settings = self.settings
        rng = np.random.default_rng(secrets.randbits(128))
        phases: dict[str, float] = {}
        started = time.perf_counter()

        def phase(name: str) -> None:
            phases[name] = (time.perf_counter() - started) * 1e3 - sum(phases.values())

        with _timeouts_say_the_seeds_time() as seen, \
                self._on_a_lane(settings.timeout_s, lane_name, give_up_at) as (lane, processes), self._quiet(lane):
            phase("wait_for_device_ms")
            reference = reference_on(lane)
            phase("reference_ms")
            limits = seen.limits = self.limits(reference.seed_time_ms)
            seen.seed_time_ms = reference.seed_time_ms
            deadline = time.monotonic() + limits.total_s  # waiting for the device is not the candidate's time
            worker = processes.launch(lane, program, deadline)
            phase("launch_ms")
            idle_s = time.monotonic() - max(self._lane_used_at.get(lane.name, -math.inf), worker.info.ready_monotonic)
            with self._calls(lane, worker, deadline, limits, _Sample(settings.rechecks, rng)) as calls:
                call_ms = calls.warm_up(rng, reference.harness, for_clocks=idle_s >= settings.timing.clocks_hold_s)
                phase("warmup_ms")
                plan = BatchPlan(self.inputs, calls_per_batch(call_ms, reference.harness, settings.timing),
                                 np.random.default_rng(secrets.randbits(128)), settings.timing.min_variants,
                                 settings.timing.min_batches_alone)
                with _made_ahead(plan.batches()) as batches:  # each made while the batch before runs
                    calls.time(batches, plan.first_round_batches, reference.seed_time_ms, plan.calls_per_batch)
                phase("batches_ms")
                stdout, stderr = _tails(worker.output())
                worker.close(wait=False)  # killed before the recheck's process starts
                kept = calls.rechecked.items
                try:  # while the last outputs are validated
                    recheck_ns = self._recheck(lane, processes, program,
                                               [(*kept[k], k) for k in rng.permutation(list(kept))], deadline, limits)
                except (RunFailed, SandboxFailure):
                    calls.settle(wait=True)  # an invalid output, if there is one, is the clearer failure
                    raise
                phase("recheck_ms")
                calls.settle(wait=True)
                phase("validation_tail_ms")
        compute = {"warmup_ms": calls.warmup_claimed_ns / 1e6, "batches_ms": calls.timed_claimed_ns / 1e6,
                   "recheck_ms": recheck_ns / 1e6}
        run = Run(worker.info, calls.scored, calls.variants, calls.batches, calls.probes, calls.yardstick_ms,
                  calls.device_yardstick_ms, len(kept), statistics.fmean(calls.duplicates), phases, compute, lane.name,
                  stdout, stderr)
        return run, reference

    def reference_calls(self, lane: Lane, seed_calls: int,
                        timeout_s: float) -> tuple[list[BatchTime], list[float], list[float]]:
        """The seed timed as a candidate is, in a fresh worker on `lane`, which the caller holds: the same warm-up, then
        `seed_calls` batches of one call on variants of the windows, every output validated where a candidate's is, and
        the yardstick timed before, between and after them in the lane's yardstick worker, the seed stopped meanwhile.
        The seed's batches, each with the pace around it, and the yardsticks' times in ms (the device's, on a GPU
        lane)."""
        rng = np.random.default_rng(secrets.randbits(128))
        deadline = time.monotonic() + timeout_s
        plan = BatchPlan(self.inputs, 1, rng, min_variants=0, min_batches_alone=1)
        with self._trusted_process(lane, SEED_PROGRAM, deadline, timeout_s) as worker, \
                self._calls(lane, worker, deadline, Limits(timeout_s, timeout_s, timeout_s), _Sample(0, rng)) as calls:
            calls.warm_up(rng, HarnessModel(0.0, 0.0, 0.0), for_clocks=True)
            calls.time((plan.another() for _ in range(seed_calls)), seed_calls, math.inf, probe_calls=0)
            calls.settle(wait=True)
        return calls.batches, calls.yardstick_ms, calls.device_yardstick_ms

    def trusted_batches(self, lane: Lane, program: Path, batches: Sequence[list[np.ndarray]],
                        timeout_s: float) -> list[BatchTime]:
        """A trusted program of our own in a fresh worker on `lane`, which the caller holds: one batch of each list of
        weights, after an untimed call; each output validated, so that a broken program of ours shows."""
        args = self.settings.problem.rebalance_args()
        deadline = time.monotonic() + timeout_s
        timed = []
        with self._trusted_process(lane, program, deadline, timeout_s) as worker:
            worker.batch([batches[0][0]], args, _remaining(deadline, timeout_s))
            self.lanes.settle(lane)
            for weights in batches:
                result = worker.batch(weights, args, _remaining(deadline, timeout_s))
                for call in result.calls:
                    _require_valid(check_call(call, self.settings.problem), f"our own program {program.name}", worker)
                timed.append(_batch_time(result))
        return timed

    @contextmanager
    def _calls(self, lane: Lane, worker: Worker, deadline: float, limits: Limits,
               rechecked: _Sample) -> Iterator[_Calls]:
        """The calls of `worker`, a run's first process on `lane`: outputs validated on two threads beside the next
        batch where the lane's core is its own, else on one between batches; the yardstick's pace taken with the
        worker stopped."""
        with _validation_threads(_VALIDATION_THREADS if lane.isolated else 1) as validator:
            yield _Calls(self, worker, validator, deadline, limits, rechecked, overlap=lane.isolated,
                         pace=lambda probe_calls: self._pace(lane, worker, probe_calls))

    def _pace(self, lane: Lane, candidate: Worker, probe_calls: int) -> Pace:
        """The yardsticks' times per call on `lane` now (the device's None but on a GPU lane), and the harness's probe
        (a batch of `probe_calls` calls; none if 0), with the candidate's processes stopped while they run: a round of
        each yardstick (`_yardstick_ms`) in the lane's trusted workers (started, from the lane's spares, the first
        time), the probe first, after the candidate's batch as a candidate's batch follows another. The first round
        comes before any timed batch: it waits for the exits of the lane's last processes where they run on the lane's
        cores (`Lanes.settle`)."""
        self.lanes.settle(lane)
        candidate.pause()
        try:
            (probe, probe_worker), *yardsticks = self._trusted_workers_on(lane)
            weights = [self.inputs[index % len(self.inputs)] for index in range(probe_calls)]  # each written afresh
            probed = _batch_time(probe_worker.batch(weights, probe.args, REFERENCE_TIMEOUT_S)) if probe_calls else None
            times = [self._yardstick_ms(worker, yardstick, REFERENCE_TIMEOUT_S) for yardstick, worker in yardsticks]
        except (SandboxFailure, RunFailed) as error:
            for _, worker in self._yardsticks.pop(lane.name, []):
                worker.close(wait=False)
            message = error.failure.message if isinstance(error, SandboxFailure) else error.error
            raise RunFailed(Status.INFRA_ERROR, f"the yardstick or the harness's probe failed: {message}") from None
        finally:
            candidate.resume()
        return Pace(*times, probe=None if probed is None else replace(probed, pace_ms=times[0]))

    def _yardstick_ms(self, worker: Worker, yardstick: Yardstick, timeout_s: float) -> float:
        """One round of `yardstick` in `worker`, which has its program loaded: the least of the settings' yardstick
        calls, each a batch of its own, in ms. The least, because a call the host stole the core from for a moment (a
        virtual machine's vCPU is) would read the pace of every batch around it as slower."""
        return min(worker.batch([yardstick.weight], yardstick.args, timeout_s).claim_ns / 1e6
                   for _ in range(self.settings.timing.yardstick_calls))

    def _trusted_workers_on(self, lane: Lane) -> list[tuple[Yardstick, Worker]]:
        """The harness's probe, then the lane's yardsticks (the device's too on a GPU lane), each in a worker of its
        own on the lane's cores with its program loaded and called once (the probe's plan validated)."""
        workers = self._yardsticks.get(lane.name)
        if workers is None or not all(worker.is_loaded() for _, worker in workers):
            for _, worker in workers or []:
                worker.close(wait=False)
            workers = self._yardsticks[lane.name] = []
            yardsticks = [self.harness_probe, YARDSTICK]
            if self.times_device_yardstick(lane):
                yardsticks.append(self.device_yardstick)
            for yardstick in yardsticks:
                worker = lane.pool.acquire()
                workers.append((yardstick, worker))
                worker.prepare(lane.cpus)
                worker.load(yardstick.program, yardstick.entry_point, timeout_s=REFERENCE_TIMEOUT_S)
                first = worker.call(yardstick.weight, yardstick.args, REFERENCE_TIMEOUT_S)
                if yardstick is self.harness_probe:
                    _require_valid(check_call(first, self.settings.problem), "the harness's probe", worker)
        return workers

    @contextmanager
    def _trusted_process(self, lane: Lane, program: Path, deadline: float, timeout_s: float) -> Iterator[Worker]:
        """A fresh worker on `lane` with `program` loaded; gone (every process collected) when the block ends."""
        processes = _Processes(timeout_s)
        try:
            worker = processes.launch(lane, program, deadline)
            yield worker
        except SandboxFailure as error:
            raise RunFailed.from_sandbox(error.failure) from None
        finally:
            processes.end()
            processes.wait_gone()

    @contextmanager
    def _on_a_lane(self, total_s: float, lane_name: str | None = None,
                   give_up_at: float | None = None) -> Iterator[tuple[Lane, _Processes]]:
        """A lane (any free one, or the one named) and the candidate processes of one run on it, whose limit is
        `total_s`. Sandbox failures become failed runs. When the block ends every process is killed at once, and the
        lane is released once they have all exited, in the background while the result is scored."""
        try:
            holding = self.lanes.take(lane_name, give_up_at)
        except SandboxFailure as error:
            raise RunFailed.from_sandbox(error.failure) from None
        processes = _Processes(total_s)
        try:
            try:
                yield holding.lane, processes
            except SandboxFailure as error:
                raise RunFailed.from_sandbox(error.failure) from None
        except RunFailed as failed:
            failed.lane = holding.lane
            raise
        finally:
            self._lane_used_at[holding.lane.name] = time.monotonic()
            _release_when_gone(processes, holding)

    def _quiet(self, lane: Lane) -> AbstractContextManager[None]:
        """Where the candidate shares its cores with the evaluator's (a machine with too few), start no spare worker
        while it is timed."""
        return nullcontext() if lane.isolated else lane.pool.quiet()

    def _recheck(self, lane: Lane, processes: _Processes, program: Path, calls: list[tuple[np.ndarray, CallResult,
                 int]], deadline: float, limits: Limits) -> int:
        """Give some inputs again, one call at a time and in another order, to a fresh process: a plan that depended
        on earlier calls (a cache, a stale plan) or on chance comes out different. Returns the candidate's time in
        those calls (its claim)."""
        spent_ns = 0
        if not calls:
            return spent_ns
        worker = processes.launch(lane, program, deadline)
        args = self.settings.problem.rebalance_args()
        for number, (weight, first, position) in enumerate(calls):
            limit = limits.first_call_s if number == 0 else limits.call_s
            result = worker.batch([weight], args, _remaining(deadline, limits.total_s, limit))
            spent_ns += result.claim_ns
            again = result.calls[0]
            if len(first.outputs) != len(again.outputs) or not all(map(_same_array, first.outputs, again.outputs)):
                violation = Violation(
                    "plan.not_reproducible", None,
                    f"timed call {position + 1}'s plan differs when the same input is given to a fresh process. "
                    "Every process that plans from the same load must get the same plan (in an engine each rank "
                    "computes it): the plan may depend on its input alone, not on chance, earlier calls (a cache, "
                    "a stale plan) or timing. If the program draws random numbers, one line fixes it: a generator "
                    "of its own, seeded from a constant, `generator = torch.Generator(device=weight.device)"
                    ".manual_seed(0)`, passed as `generator=generator` to torch.rand, randn, randint and randperm "
                    "(or random.Random(0), numpy.random.default_rng(0)) instead of the global random state")
                raise RunFailed(Status.INVALID_OUTPUT, violation.message, (violation,), *_tails(worker.output()))
        return spent_ns


@dataclass(frozen=True)
class _Pending:
    """A call whose outputs are being validated."""

    what: str  # the call, as an error names it
    window: int | None  # the window it planned on (or on a variant of); None for a warm-up call
    scored: bool
    result: CallResult
    verdict: Future[tuple[PlanCheck, BalancednessReport | None]]


@dataclass
class _Calls:
    """The calls of a run's first process, in order: warm-up, then the timed batches. Every output is validated on
    `validator`, beside the next batch where the lane's cores are the candidate's own (`overlap`), else before it."""

    runner: Runner
    worker: Worker
    validator: ThreadPoolExecutor
    deadline: float
    limits: Limits
    rechecked: _Sample  # the timed calls to repeat in a fresh process, by their number among the timed calls
    overlap: bool
    pace: Callable[[int], Pace]  # the yardsticks' times now and a probe of so many calls, the candidate stopped
    # the yardsticks' rounds: (batches done, the yardsticks' times, the candidate's time in batches then in ns)
    rounds: list[tuple[int, Pace, int]] = field(default_factory=list)
    scored: dict[int, BalancednessReport] = field(default_factory=dict)
    variants: list[tuple[int, float]] = field(default_factory=list)
    batches: list[BatchTime] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    timed_calls: int = 0
    # the candidate's time: on the evaluator's clock (round trips), which budgets go by, and as it claims it
    warmup_ns: int = 0
    timed_ns: int = 0
    warmup_claimed_ns: int = 0
    timed_claimed_ns: int = 0
    pending: deque[_Pending] = field(default_factory=deque)
    probe_calls: int = 0  # in each round's probe of the harness: as many as the candidate's batches hold

    @property
    def probes(self) -> list[BatchTime]:
        """The harness's probes of the rounds so far."""
        return [pace.probe for _, pace, _ in self.rounds if pace.probe is not None]

    @property
    def paces(self) -> list[Pace]:
        """The yardsticks' times at each round so far."""
        return [pace for _, pace, _ in self.rounds]

    @property
    def yardstick_ms(self) -> list[float]:
        """The yardstick's time at each of its rounds so far, in ms."""
        return [pace.ms for _, pace, _ in self.rounds]

    @property
    def device_yardstick_ms(self) -> list[float]:
        """The device's yardstick's time at each round so far, in ms: none but on a GPU lane."""
        return [pace.device_ms for _, pace, _ in self.rounds if pace.device_ms is not None]

    def warm_up(self, rng: np.random.Generator, harness: HarnessModel, for_clocks: bool) -> float:
        """Untimed calls, one at a time, until the settings' least count is reached and, `for_clocks`, their least
        time. Returns the program's time per call as the warm-up saw it after its first call: the least round trip
        less the harness's model (the evaluator's clock)."""
        settings = self.runner.settings.timing
        least_ns = settings.warmup_s * 1e9 if for_clocks else 0
        paces = []
        count = 0
        while count < settings.max_warmup_calls and (count < settings.warmup_calls or self.warmup_ns < least_ns):
            count += 1
            call = warmup_call(self.runner.inputs, rng)
            limit = self.limits.first_call_s if count == 1 else self.limits.call_s
            result = self._batch([call.weight], limit)
            self.warmup_ns += result.round_trip_ns
            self.warmup_claimed_ns += result.claim_ns
            outputs = result.calls[0]
            if count > 1:
                paces.append(result.round_trip_ns / 1e6 - harness.ms(1, _output_bytes(outputs)))
            self._take(outputs, f"warm-up call {count} (planning on a variant of window {call.window})", None, False)
        return min(paces) if paces else 0.0

    def time(self, batches: Iterator[Batch], first_round: int, seed_time_ms: float, probe_calls: int) -> None:
        """`batches` in turn, at least `first_round` of them, until they time the program precisely enough with most
        of them steady, or they have spent its budget (the evaluator's clock), on a device where the seed takes
        `seed_time_ms` a call; the yardstick before them, after them, and between them where `yardstick_due` says,
        each round with a probe of the harness of `probe_calls` calls (none if 0). A batch is given the mean of the
        yardstick's times before and after it, and how far they differ."""
        settings = self.runner.settings.timing
        self.probe_calls = probe_calls
        self._round()
        closed_once_precise = False
        for batch in batches:
            self._timed_batch(batch)
            if len(self.batches) < first_round:
                continue
            if budget_spent(len(self.batches), self.timed_ns / 1e9, seed_time_ms, settings):
                break
            if not self._precise():
                continue
            if self.rounds[-1][0] < len(self.batches):  # the last batches were read at the last round's pace
                if closed_once_precise:  # later, only where a round is due anyway: rounds cost time
                    continue
                self._round()
                closed_once_precise = True
                if not self._precise():
                    continue
            if mostly_steady(self.batches):  # else the host changed its pace around most of them: more batches
                break
        self._close_stretch()

    def _precise(self) -> bool:
        return precise_enough(self.batches, self.rounds[-1][0], self.paces, self.runner.settings.timing)

    def _round(self) -> None:
        """A round of the yardsticks now; the batches since the last round get the pace around them. A round in which
        either yardstick differs from its last by more than `PACE_CHANGE` is taken again at once, and the second
        stands: a change seen once may be the yardstick's alone (a moment the host took the core), and would leave
        every batch around it out of the time."""
        now = self.pace(self.probe_calls)
        if self.rounds:
            start, before, _ = self.rounds[-1]
            if before.change(now) > PACE_CHANGE:
                now = self.pace(self.probe_calls)
            around, change = before.midway(now), before.change(now)
            for index in range(start, len(self.batches)):
                self.batches[index] = replace(self.batches[index], pace_ms=around.ms, device_pace_ms=around.device_ms,
                                              pace_change=change)
        self.rounds.append((len(self.batches), now, self.timed_ns))

    def _close_stretch(self) -> None:
        """A round of the yardstick, unless one followed the last batch."""
        if self.rounds[-1][0] < len(self.batches):
            self._round()

    def settle(self, wait: bool) -> None:
        """Take in validated calls, in order (all of them if `wait`); raises `RunFailed` at the first invalid."""
        while self.pending and (wait or self.pending[0].verdict.done()):
            pending = self.pending.popleft()
            check, report = pending.verdict.result()
            _require_valid(check, pending.what, self.worker)
            if pending.result.shares_memory_with is not None:
                _reused(pending, self.worker)
            if report is None:
                continue
            if pending.scored:
                self.scored[pending.window] = report
                self.duplicates.append(check.gpus_with_duplicate_expert or 0)
            else:
                self.variants.append((pending.window, report.balancedness_score))

    def _timed_batch(self, batch: Batch) -> None:
        """Run `batch`, and a round of the yardstick after it when the protocol says one is due."""
        self._settle_to(_PENDING_BATCHES * len(batch.calls) if self.overlap else 0)
        result = self._batch([call.weight for call in batch.calls], self.limits.call_s * len(batch.calls))
        self.timed_ns += result.round_trip_ns
        self.timed_claimed_ns += result.claim_ns
        self.batches.append(_batch_time(result, batch.scored, batch.first_round))
        for call, outputs in zip(batch.calls, result.calls):
            number = self.timed_calls
            self.timed_calls += 1
            self.rechecked.offer(number, (call.weight, outputs))
            what = f"window {call.window}" if call.scored else f"a variant of window {call.window}"
            self._take(outputs, f"timed call {number + 1} (planning on {what})", call.window, call.scored)
        if not self.overlap:
            self.settle(wait=True)
        if yardstick_due(self.timed_ns - self.rounds[-1][2] + result.round_trip_ns, self.paces,
                         self.runner.settings.timing):
            self._round()

    def _batch(self, weights: list[np.ndarray], limit_s: float) -> BatchResult:
        """One batch in the worker; when it fails, an earlier invalid output is the failure raised."""
        try:
            return self.worker.batch(weights, self.runner.settings.problem.rebalance_args(),
                                     _remaining(self.deadline, self.limits.total_s, limit_s))
        except SandboxFailure:
            self.settle(wait=True)
            raise

    def _take(self, result: CallResult, what: str, window: int | None, scored: bool) -> None:
        """Queue `result`'s validation, and take in the checks already done."""
        verdict = self.validator.submit(self._check_and_score, result, window)
        self.pending.append(_Pending(what, window, scored, result, verdict))
        self.settle(wait=False)

    def _check_and_score(self, result: CallResult, window: int | None) -> tuple[PlanCheck, BalancednessReport | None]:
        """A call's check and, for a valid plan made on a window or a variant of it, how it balances the next."""
        check = check_call(result, self.runner.settings.problem)
        valid = check.plan is not None and window is not None
        return check, self.runner.score_on_next_window(check.plan, window) if valid else None

    def _settle_to(self, pending: int) -> None:
        """Wait for validations until at most `pending` calls are left waiting."""
        while len(self.pending) > pending:
            self.pending[0].verdict.result()
            self.settle(wait=False)


class _Sample:
    """A uniform random sample of at most `size` of the items offered, however many are (reservoir sampling):
    the calls to recheck are drawn from the calls that ran, which only the end of the run tells."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self._size, self._rng, self._offered = size, rng, 0
        self.items: dict[int, tuple[np.ndarray, CallResult]] = {}  # a call's number -> its input and result

    def offer(self, key: int, item: tuple[np.ndarray, CallResult]) -> None:
        self._offered += 1
        if len(self.items) < self._size:
            self.items[key] = item
        elif self._size and self._rng.integers(self._offered) < self._size:
            del self.items[list(self.items)[self._rng.integers(self._size)]]
            self.items[key] = item


def _batch_time(result: BatchResult, scored: bool = False, first_round: bool = False) -> BatchTime:
    return BatchTime(len(result.calls), result.claim_ns, result.round_trip_ns,
                     sum(_output_bytes(call) for call in result.calls), scored, first_round)


def _output_bytes(result: CallResult) -> int:
    return sum(output.nbytes for output in result.outputs if isinstance(output, np.ndarray))


def _release_when_gone(processes: _Processes, holding: Holding) -> None:
    """Kill the processes now and give the lane back: the next candidate may launch on it while they exit, and waits
    for their exits before it is timed. The lane is released even if killing them failed."""
    try:
        processes.end()
    finally:
        holding.release(processes.wait_gone)


@dataclass
class _Seen:
    """What a run knew when it failed: its limits and the seed's time per call, once the reference was had."""

    limits: Limits | None = None
    seed_time_ms: float | None = None


@contextmanager
def _timeouts_say_the_seeds_time() -> Iterator[_Seen]:
    """A run that timed out after its limits were known says them and the seed's time per call on the device: how
    far over the program is, and what a call may take."""
    seen = _Seen()
    try:
        yield seen
    except RunFailed as failed:
        if failed.status == Status.TIMEOUT and seen.limits is not None and seen.seed_time_ms is not None:
            failed.error += (f" (on this device the seed takes {seen.seed_time_ms:.0f} ms a call; a call may take "
                             f"{seen.limits.call_s:g} s, the first {seen.limits.first_call_s:g} s, the whole "
                             f"evaluation {seen.limits.total_s:g} s)")
        raise


@contextmanager
def _made_ahead(batches: Iterator[Batch], depth: int = 2) -> Iterator[Iterator[Batch]]:
    """`batches`, made on a thread of their own up to `depth` ahead of their turn; the thread stops with the block."""
    ready: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Batch | BaseException) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for batch in batches:
                if stop.is_set() or not offer(batch):
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            offer(error)

    def taken() -> Iterator[Batch]:
        while True:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    maker = threading.Thread(target=make, name="batch-maker", daemon=True)
    maker.start()
    try:
        yield taken()
    finally:
        stop.set()
        while maker.is_alive():  # room in the queue: a maker waiting to put a batch sees the stop at once
            try:
                ready.get_nowait()
            except queue.Empty:
                pass
            maker.join(0.001)


@contextmanager
def _validation_threads(count: int) -> Iterator[ThreadPoolExecutor]:
    """Threads validating outputs; when the run fails, the checks still queued are dropped."""
    validator = ThreadPoolExecutor(count, thread_name_prefix="validator")
    try:
        yield validator
    except BaseException:
        validator.shutdown(wait=False, cancel_futures=True)
        raise
    validator.shutdown()


def _require_valid(check: PlanCheck, which: str, worker: Worker) -> None:
    """Raise `RunFailed` (invalid_output, with the violations) unless `check` found a valid plan."""
    if check.plan is None:
        raise RunFailed(Status.INVALID_OUTPUT, f"{which} returned an invalid plan: {check.violations[0].message}",
                        check.violations, *_tails(worker.output()))


def _reused(pending: _Pending, worker: Worker) -> None:
    violation = Violation(
        "output.reused", None,
        f"{pending.what} returned tensors that share memory with those call {pending.result.shares_memory_with} of "
        "the worker returned, so one call changed a plan another had returned; return new tensors from every call")
    raise RunFailed(Status.INVALID_OUTPUT, violation.message, (violation,), *_tails(worker.output()))


def _tails(outputs: tuple[object, object]) -> tuple[str, str]:
    """The last lines of a worker's stdout and stderr, as a result keeps them."""
    stdout, stderr = outputs
    return stdout.last_lines(OUTPUT_TAIL_CHARS), stderr.last_lines(OUTPUT_TAIL_CHARS)


def _remaining(deadline: float, total_s: float, limit_s: float | None = None) -> float:
    """What is left of the run's time, at most `limit_s`; raises a timeout when nothing is left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise SandboxFailure(Failure(Status.TIMEOUT, f"the evaluation ran past its time limit of {total_s:g} s"))
    return left if limit_s is None else min(left, limit_s)


def _same_array(first: Output, again: Output) -> bool:
    if not (isinstance(first, np.ndarray) and isinstance(again, np.ndarray)):
        return first == again
    return first.dtype == again.dtype and first.shape == again.shape and bool(np.array_equal(first, again))

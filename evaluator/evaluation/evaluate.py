"""Evaluate one candidate program: run it (`run.Runner`), then score its plans, and its time against the seed's on the
same cores at the same time (`timing.reference`).

Validation, scoring and the seed's yardsticks all happen here, in the evaluator process; the candidate's process
only ever sees the windows it plans on.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from evaluator.eplb.invariants import Violation
from evaluator.eplb.plan import Plan
from evaluator.eplb.scoring import (
    BalancednessReport,
    GpuLoads,
    balancedness_scores,
    combined_reports,
    combined_score,
    next_window_report,
    speed_score,
    speedup,
    window_loads,
)
from evaluator.eplb.trace import Trace, check_matches
from evaluator.evaluation.freshness import input_dependence
from evaluator.evaluation.lanes import Lane, Lanes
from evaluator.evaluation.seed_plans import seed_patch_warm_up, seed_plans
from evaluator.evaluation.result import Result, workload_summary
from evaluator.evaluation.run import REFERENCE_TIMEOUT_S, Run, Runner, RunFailed
from evaluator.evaluation.settings import Settings
from evaluator.evaluation.timing import (
    BatchTime,
    ReferenceCache,
    SeedReference,
    call_inputs,
    default_cache_path,
    device_yardstick,
    estimate,
    reference_timed_enough,
    warmup_call,
)
from evaluator.files import remove_tree
from evaluator.paths import HARNESS_PROGRAM, SEED_PROGRAM
from evaluator.sandbox import WorkerInfo
from evaluator.scratch import scratch_folder
from evaluator.software import software
from evaluator.store import HOLDOUT_SOURCE, sha256_text
from evaluator.status import Status
from evaluator.untrusted import tail

__all__ = ["Evaluator", "Settings", "workload_summary"]

# Validation and scoring work on small tensors, where more threads only add synchronisation; few threads also
# leave the CPU to the worker being timed.
EVALUATOR_THREADS = 1
# How long the evaluator's threads hold the interpreter before another may take it: short, so that the thread
# reading a batch's reply is not kept waiting by a validation.
SWITCH_INTERVAL_S = 0.0005
# The trusted programs' batches the harness's model is fitted to, run back to back: sizes.
_HARNESS_BATCHES = (1, 1, 1, 1, 8, 8, 8, 8)

# A held-out trace stays secret only while its windows stay in the evaluator: a program sees those it plans on and
# could write them into its error or output, which a loop reads and may feed to the next program. On a held-out trace
# a result keeps at most this many characters of each (their ends, where a traceback's message is): what one
# evaluation can carry out is bounded (docs/traces.md says how far that goes).
HOLDOUT_TEXT_CHARS = {"error": 1000, "stdout": 250, "stderr": 250}
# A result keeps how the plan made on this window loads each GPU on the next (`Result.gpu_load`): what a report draws.
GPU_LOAD_WINDOW = 0
GPU_LOAD_DIGITS = 6  # significant digits kept of each load, so that a result file stays small


class Evaluator:
    """Evaluates candidate programs on one trace. Keeps spare workers warm; use as a context manager.

    Thread-safe: candidates may be evaluated from several threads. Each is run on a device of its own for
    as long as any of its processes lives (one lane per GPU in `gpus`, default every visible GPU), so no two
    candidates are timed on one device at once, even by evaluators in other processes; validation of earlier
    outputs and scoring run beside the timed calls, on other cores. Raises `ValueError` when the device or GPUs
    asked for are not there.

    `spares` workers per device are started ahead (a candidate takes two: its run and its recheck). With
    `replenish` False, as for a single evaluation, those are all that start ahead of need, so that no spare
    starts beside the candidate being timed. Where the machine has a core for each device and three more, this
    process's threads move off the devices' cores for as long as the evaluator is open.

    The seed's reference is kept in `seed_references`, by default the cache folder's file (`default_cache_path`),
    which other evaluators on the machine share; `ReferenceCache(None)` keeps it in memory, for this evaluator alone.
    `announce(what)` is entered around the one step that takes long once, the seed's timing on a device, so that a
    command can show it as progress.
    """

    def __init__(self, trace: Trace, settings: Settings | None = None, *, device: str = "auto", spares: int = 2,
                 gpus: Sequence[int] | None = None, seed_references: ReferenceCache | None = None,
                 retime_seed: bool = False, replenish: bool = True,
                 announce: Callable[[str], contextlib.AbstractContextManager[object]] | None = None) -> None:
        self.settings = settings or Settings()
        self._announce = announce or (lambda _: contextlib.nullcontext())
        check_matches(trace, self.settings.problem)
        torch.set_num_threads(min(EVALUATOR_THREADS, torch.get_num_threads()))
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.trace = trace
        self._inputs = call_inputs(trace.windows)
        self._loads = window_loads(trace.windows)
        self._references = seed_references or ReferenceCache(default_cache_path())
        self._retime_seed = retime_seed  # ignore the cached reference once
        self._seed_digest = sha256_text(SEED_PROGRAM.read_text(encoding="utf-8"))[:12]  # part of the reference's key
        software()  # the package's digest read now, not in the first evaluation's time
        self._reference_lock = threading.Lock()  # the reference is measured once, however many threads need it
        # Removed by close() or when collected, and only by this process: a forked child's copy of the
        # evaluator (a loop's process pool) must not take the warm-up program from under the parent's workers.
        self._files = scratch_folder("evaluator-")
        self._remove_files = weakref.finalize(self, _remove_if_owner, self._files, os.getpid())
        warm_up = seed_patch_warm_up(self._files, self.settings.problem, self._inputs.dtype.name)
        self.lanes = Lanes(self.settings.worker_limits(), device, spares, gpus, warm_up=warm_up, replenish=replenish,
                           start_method=self.settings.start_method)
        self._runner = Runner(self.settings, self.lanes, self._inputs, self._score_on_next_window,
                              device_yardstick(warm_up.program))

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def lane_count(self) -> int:
        """How many candidates it times at once: one per lane."""
        return len(self.lanes.lanes)

    def close(self) -> None:
        self._runner.close()
        self.lanes.close()
        self._remove_files()

    def evaluate(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """Run, validate and score `program` (`_evaluate`); on a held-out trace, with its text bounded."""
        return self._bounded(self._evaluate(program, give_up_at))

    def _evaluate(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """Run, validate and score `program`; every failure is a Result with score 0, never an exception (a path
        that names no file raises FileNotFoundError: the caller's mistake). With `give_up_at` (a `time.monotonic()`
        time), an evaluation that has no device by then ends as an `infra_error`; one that has a device runs to
        its end."""
        _require_file(program)
        started = time.perf_counter()
        try:
            run, reference = self._runner.run(Path(program), self._reference_on, give_up_at=give_up_at)
            scoring_started = time.perf_counter()
            result = self._score(run, reference)
        except RunFailed as failed:
            return self._failure(failed)
        except Exception as error:  # the evaluator's own fault: a result too, never a crash
            return self._failure(_own_fault(error))
        # What the evaluation cost beyond the candidate's own compute (the reference's measurement, once, included).
        phases = {**run.phases, "scoring_ms": (time.perf_counter() - scoring_started) * 1e3}
        costs = {"evaluation_ms": (time.perf_counter() - started) * 1e3,
                 "candidate_compute_ms": sum(run.phase_compute.values()), "phases": phases,
                 "phase_compute": run.phase_compute, "lane": run.lane}
        return replace(result, timing={**result.timing, **costs})

    def check(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """A cheap first stage for a loop (`_check`); on a held-out trace, with its text bounded."""
        return self._bounded(self._check(program, give_up_at))

    def _check(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """A cheap first stage for a loop: the program imports and returns a valid plan for the trace's first
        window, within the import's limit and the first call's. Nothing is timed or scored: an `ok` Result here
        keeps every score at 0. `give_up_at` as for `evaluate`."""
        _require_file(program)
        try:
            info, stdout, stderr = self._runner.check(Path(program), give_up_at)
        except RunFailed as failed:
            return self._failure(failed)
        except Exception as error:  # as in evaluate
            return self._failure(_own_fault(error))
        return Result(Status.OK, workload=self._workload(), stdout=stdout, stderr=stderr, **_device(info))

    def _bounded(self, result: Result) -> Result:
        """On a held-out trace, `result` with at most `HOLDOUT_TEXT_CHARS` of each text a program wrote (its end)."""
        if self.trace.source != HOLDOUT_SOURCE:
            return result
        texts = {name: tail(text, chars) for name, chars in HOLDOUT_TEXT_CHARS.items() if (text := getattr(result, name))}
        return replace(result, **texts)

    def _failure(self, failed: RunFailed) -> Result:
        """A failed run's result; where it ran on a lane, that lane's device, card and the software, as for an `ok`
        result, so that a store can reuse it where the same would be measured."""
        where = {} if failed.lane is None else {"device": failed.lane.device, "card": failed.lane.card,
                                                "software": software()}
        return Result(failed.status, failed.error, [asdict(v) for v in failed.violations], workload=self._workload(),
                      stdout=failed.stdout, stderr=failed.stderr, **where)

    def _score_on_next_window(self, plan: Plan, window: int) -> BalancednessReport:
        with_gpu_loads = window == GPU_LOAD_WINDOW and self.trace.source != HOLDOUT_SOURCE
        return next_window_report(plan, self._loads, window, self.settings.problem, with_gpu_loads)

    def _reference_on(self, lane: Lane) -> SeedReference:
        """The seed's reference for the device and software of `lane` (held by the caller): from the cache, else
        measured now on it (lanes may hold GPUs of different models)."""
        info = lane.pool.worker_info()
        yardsticks = "yardsticks cpu, device" if self._runner.times_device_yardstick(lane) else "yardstick cpu"
        key = " | ".join([info.device, info.card, *(f"{name} {value}" for name, value in software().items()),
                          f"seed {self._seed_digest}", repr(self.settings.problem), yardsticks])
        cached = self._cached_reference(key)
        if cached is not None:  # without the lock: other lanes need not wait for one measuring
            return cached
        with self._reference_lock:
            cached = self._cached_reference(key)  # another thread may have measured it while this one waited
            if cached is not None:
                return cached
            try:
                with self._announce(f"timing the seed on {info.device} ({info.card}), once for this device and "
                                    "software"):
                    reference = self._measure_reference(lane)
            except RunFailed as failed:
                raise RunFailed(Status.INFRA_ERROR, f"measuring the seed's reference failed ({failed.status}): "
                                               f"{failed.error}") from None
            self._references.put(key, reference)
            self._retime_seed = False
            return reference

    def _cached_reference(self, key: str) -> SeedReference | None:
        return None if self._retime_seed else self._references.get(key)

    def _measure_reference(self, lane: Lane) -> SeedReference:
        """The seed's ratio to the yardstick in fresh processes on `lane`, each timing the seed as a candidate is timed
        (the yardstick before, between and after its calls), as many as `reference_timed_enough` asks; and the
        harness's model, from two trusted programs' batches run back to back, with no round of the yardstick between
        them (the narrowest valid plan, the seed patch). Not from the seed's: each of those follows a round of the
        yardstick on the same core, which leaves the harness's next round trip slower, and most of a candidate's
        batches follow another batch."""
        timing = self.settings.timing
        started, processes = time.monotonic(), []
        while not reference_timed_enough(processes, time.monotonic() - started, timing):
            processes.append(self._runner.reference_calls(lane, timing.reference_seed_calls, REFERENCE_TIMEOUT_S))
        rng = np.random.default_rng()
        batches = []
        for program in (HARNESS_PROGRAM, self._files / "warm_up.py"):  # the narrowest valid plan, the seed patch
            weights = [[warmup_call(self._inputs, rng).weight for _ in range(size)] for size in _HARNESS_BATCHES]
            batches += self._runner.trusted_batches(lane, program, weights, REFERENCE_TIMEOUT_S)
        return SeedReference.measured(processes, batches)

    def _score(self, run: Run, reference: SeedReference) -> Result:
        report = combined_reports([run.scored[window] for window in sorted(run.scored)])
        stale = self._staleness(run, report.per_window)
        if stale is not None:
            return Result(Status.INVALID_OUTPUT, stale.message, [asdict(stale)], workload=self._workload(),
                          stdout=run.stdout, stderr=run.stderr, **_device(run.info))
        mixed = _both_yardsticks(run.batches, reference)
        batches = reference.capped(run.batches) if mixed else run.batches
        weight = self.settings.timing.pace_weight if mixed else 1.0
        timing = estimate(batches, reference.harness, weight, run.probes)
        seed_time_ms = reference.ratio_at(weight) * timing.pace_ms  # the seed's time at the pace the candidate ran at
        gain = speedup(seed_time_ms, timing.time_ms)
        # The speedup's interval: the candidate's time against the pace and the seed's ratio to it, each known to
        # within its own relative precision, combined as independent errors.
        relative = math.hypot(timing.precision, reference.ratio_spread)
        fast = speed_score(gain)
        return Result(
            Status.OK,
            balancedness_score=report.balancedness_score,
            speed_score=fast,
            combined_score=combined_score(report.balancedness_score, fast),
            speedup=gain,
            speedup_interval=[gain / (1 + relative), gain * (1 + relative)],
            time_ms=timing.time_ms,
            seed_time_ms=seed_time_ms,
            slot_balancedness=report.slot_balancedness_score,
            reference_balancedness=self._seed_report.reference_score,
            seed_balancedness=self._seed_report.balancedness_score,
            gpus_with_duplicate_expert=run.duplicate_gpus,
            gpu_load=_gpu_load(run.scored[GPU_LOAD_WINDOW].gpu_loads),
            timing={**timing.to_json(), "seed": reference.to_json(), "yardstick_ms": run.yardstick_ms,
                    "device_yardstick_ms": run.device_yardstick_ms,
                    "speedups_against": _speedups_against(batches, run.probes, reference) if mixed else {},
                    "speedup_precision": relative, "variant_calls": len(run.variants),
                    "rechecked_calls": run.rechecked},
            workload=self._workload(),
            stdout=run.stdout,
            stderr=run.stderr,
            **_device(run.info),
        )

    @functools.cached_property
    def _seed_report(self) -> BalancednessReport:
        """The seed planning as a candidate does (on the past window), with the reference: the seed planning on the
        very window its plan is scored on. The same for every candidate, so computed once."""
        plans = seed_plans(self.trace, self.settings.problem).on_window
        return balancedness_scores(list(plans[:-1]), self._loads, self.settings.problem,
                                   reference_plans=list(plans[1:]))

    def _staleness(self, run: Run, scored_per_window: tuple[float, ...]) -> Violation | None:
        """A violation when plans made on variants score clearly worse than plans made on the windows."""
        position = {window: k for k, window in enumerate(sorted(run.scored))}
        gaps = [scored_per_window[position[window]] - score for window, score in run.variants]
        plans = seed_plans(self.trace, self.settings.problem)
        return input_dependence(gaps, self.settings.freshness_tolerance, lambda: plans.gap_spread)

    def _workload(self) -> dict[str, object]:
        return workload_summary(self.trace, self.settings.problem)


def _require_file(program: str | Path) -> None:
    if not Path(program).is_file():
        raise FileNotFoundError(f"no program file at {program}")


def _own_fault(error: Exception) -> RunFailed:
    """An unexpected exception as an `infra_error`, naming it and where it was raised."""
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    place = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return RunFailed(Status.INFRA_ERROR, f"the evaluator failed: {type(error).__name__}: {error}{place}")


def _gpu_load(loads: GpuLoads | None) -> dict[str, object] | None:
    """`Result.gpu_load`: which windows, and the loads rounded to `GPU_LOAD_DIGITS` significant digits."""
    if loads is None:
        return None
    rounded = {name: [float(f"{value:.{GPU_LOAD_DIGITS}g}") for value in values]
               for name, values in asdict(loads).items()}
    return {"planned_on": GPU_LOAD_WINDOW, "window": GPU_LOAD_WINDOW + 1, **rounded}


def _remove_if_owner(folder: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        remove_tree(folder)


def _both_yardsticks(batches: list[BatchTime], reference: SeedReference) -> bool:
    """Whether the device's yardstick was timed around every batch and when the seed's reference was measured."""
    return reference.device_ratio is not None and all(batch.device_pace_ms is not None for batch in batches)


def _speedups_against(batches: list[BatchTime], probes: list[BatchTime],
                      reference: SeedReference) -> dict[str, float]:
    """The speedup read against each yardstick alone."""
    speedups = {}
    for name, weight in (("yardstick", 1.0), ("device", 0.0)):
        timing = estimate(batches, reference.harness, weight, probes)
        speedups[name] = speedup(reference.ratio_at(weight) * timing.pace_ms, timing.time_ms)
    return speedups


def _device(info: WorkerInfo) -> dict[str, object]:
    sandbox: dict[str, object] = asdict(info.confinement)
    if info.device == "cuda":
        sandbox["gpu_memory_counted"] = info.gpu_memory_counted
    return {"device": info.device, "card": info.card, "software": software(), "sandbox": sandbox}

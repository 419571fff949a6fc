"""Evaluate one candidate program: run it (`run.Runner`), then score its plans and time against the seed's.

Validation, scoring and the seed's yardsticks all happen here, in the evaluator process; the candidate's
process only ever sees the windows it plans on.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import traceback
import weakref
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from evaluator.eplb.invariants import Violation
from evaluator.eplb.plan import Plan
from evaluator.eplb.problem import Problem
from evaluator.eplb.scoring import (
    BalancednessReport,
    balancedness_scores,
    combined_reports,
    combined_score,
    next_window_report,
    speed_score,
    speedup,
    timing_summary,
    window_loads,
)
from evaluator.eplb.trace import Trace, check_matches
from evaluator.evaluation.freshness import input_dependence
from evaluator.evaluation.lanes import Lanes
from evaluator.evaluation.reference import seed_patch_warm_up, seed_plans
from evaluator.evaluation.result import Result
from evaluator.evaluation.run import Run, Runner, RunFailed
from evaluator.evaluation.schedule import call_inputs
from evaluator.evaluation.settings import Settings
from evaluator.evaluation.timing import SeedTiming, SeedTimingCache, default_cache_path, harness_overhead_ms, measure
from evaluator.files import remove_tree
from evaluator.paths import HARNESS_PROGRAM, SEED_PROGRAM
from evaluator.sandbox import WorkerInfo
from evaluator.scratch import scratch_folder
from evaluator.software import software
from evaluator.store import sha256_text

__all__ = ["Evaluator", "Settings", "workload_summary"]

# Validation and scoring work on small tensors, where more threads only add synchronisation; few threads also
# leave the CPU to the worker being timed.
EVALUATOR_THREADS = 1


class Evaluator:
    """Evaluates candidate programs on one trace. Keeps spare workers warm; use as a context manager.

    Thread-safe: candidates may be evaluated from several threads. Each is run on a device of its own for
    as long as any of its processes lives (one lane per GPU in `gpus`, default every visible GPU), so no two
    candidates are timed on one device at once, even by evaluators in other processes; validation of earlier
    outputs and scoring run beside the timed calls. Raises `ValueError` when the device or GPUs asked for are
    not there.

    `spares` workers per device are started ahead (a candidate takes two: its run and its recheck). With
    `replenish` False, as for a single evaluation, those are all that start ahead of need, so that no spare
    starts beside the candidate being timed.
    """

    def __init__(self, trace: Trace, settings: Settings | None = None, *, device: str = "auto", spares: int = 2,
                 gpus: Sequence[int] | None = None, seed_timings: SeedTimingCache | None = None,
                 retime_seed: bool = False, replenish: bool = True) -> None:
        self.settings = settings or Settings()
        check_matches(trace, self.settings.problem)
        torch.set_num_threads(min(EVALUATOR_THREADS, torch.get_num_threads()))
        self.trace = trace
        self._inputs = call_inputs(trace.windows)
        self._loads = window_loads(trace.windows)
        self._seed_timings = seed_timings or SeedTimingCache(None)
        self._retime_seed = retime_seed  # ignore the cached seed time once
        self._seed_digest = sha256_text(SEED_PROGRAM.read_text(encoding="utf-8"))[:12]  # part of the timing key
        software()  # the package's digest read now, not in the first evaluation's time
        self._seed_lock = threading.Lock()  # the seed is timed once, however many threads need it
        # Removed by close() or when collected, and only by this process: a forked child's copy of the
        # evaluator (a loop's process pool) must not take the warm-up program from under the parent's workers.
        self._files = scratch_folder("evaluator-")
        self._remove_files = weakref.finalize(self, _remove_if_owner, self._files, os.getpid())
        warm_up = seed_patch_warm_up(self._files, self.settings.problem, self._inputs.dtype.name)
        self.lanes = Lanes(self.settings.worker_limits(), device, spares, gpus,
                           str(default_cache_path().parent.resolve()), warm_up, replenish, self.settings.start_method)
        self._runner = Runner(self.settings, self.lanes, self._inputs, self._score_on_next_window)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.lanes.close()
        self._remove_files()

    def evaluate(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """Run, validate and score `program`; every failure is a Result with score 0, never an exception (a path
        that names no file raises FileNotFoundError: the caller's mistake). With `give_up_at` (a `time.monotonic()`
        time), an evaluation that has no device by then ends as an `infra_error`; one that has a device runs to
        its end."""
        _require_file(program)
        started = time.perf_counter()
        try:
            run = self._runner.run(Path(program), give_up_at=give_up_at)
            seed = self._seed_timing(run.info, run.lane, give_up_at)
            scoring_started = time.perf_counter()
            result = self._score(run, seed)
        except RunFailed as failed:
            return self._failure(failed)
        except Exception as error:  # the evaluator's own fault: a result too, never a crash
            return self._failure(_own_fault(error))
        # What the evaluation cost beyond the candidate's own compute (the seed's timing, once, included).
        phases = {**run.phases, "scoring_ms": (time.perf_counter() - scoring_started) * 1e3}
        costs = {"evaluation_ms": (time.perf_counter() - started) * 1e3,
                 "candidate_compute_ms": sum(run.phase_compute.values()), "phases": phases,
                 "phase_compute": run.phase_compute, "lane": run.lane}
        return replace(result, timing={**result.timing, **costs})

    def check(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """A cheap first stage for a loop: the program imports and returns a valid plan for the trace's first
        window. Nothing is timed or scored: an `ok` Result here keeps every score at 0. `give_up_at` as for
        `evaluate`."""
        _require_file(program)
        try:
            info, stdout, stderr = self._runner.check(Path(program), give_up_at)
        except RunFailed as failed:
            return self._failure(failed)
        except Exception as error:  # as in evaluate
            return self._failure(_own_fault(error))
        return Result("ok", workload=self._workload(), stdout=stdout, stderr=stderr, **_device(info))

    def _failure(self, failed: RunFailed) -> Result:
        return Result(failed.status, failed.error, [asdict(v) for v in failed.violations], workload=self._workload(),
                      stdout=failed.stdout, stderr=failed.stderr)

    def _score_on_next_window(self, plan: Plan, window: int) -> BalancednessReport:
        return next_window_report(plan, self._loads, window, self.settings.problem)

    def _seed_timing(self, info: WorkerInfo, lane_name: str, give_up_at: float | None) -> SeedTiming:
        """The seed timed on this device with this software: from the cache, else measured now on the lane the
        candidate ran on (lanes may hold GPUs of different models), giving up at `give_up_at` as `evaluate`."""
        key = " | ".join([info.device, info.card, *(f"{name} {value}" for name, value in software().items()),
                          f"seed {self._seed_digest}", repr(self.settings.problem)])
        cached = self._cached_seed_timing(key)
        if cached is not None:  # without the lock: other lanes need not wait for one timing the seed
            return cached
        waiting_s = -1 if give_up_at is None else max(0.0, give_up_at - time.monotonic())
        if not self._seed_lock.acquire(timeout=waiting_s):
            raise RunFailed("infra_error", "gave up waiting for the seed's timing, which another evaluation was taking")
        try:
            cached = self._cached_seed_timing(key)  # another thread may have timed it while this one waited
            if cached is not None:
                return cached
            try:
                run = self._runner.run(SEED_PROGRAM, lane_name, give_up_at)
                harness_run = self._runner.run(HARNESS_PROGRAM, lane_name, give_up_at)
            except RunFailed as failed:
                raise RunFailed("infra_error", f"timing the seed failed ({failed.status}): {failed.error}") from None
            # The harness's time per call is the lesser of two trusted programs': the narrowest plan's, whose
            # outputs cost the harness less than any candidate's, and the seed's, since one measurement can come
            # out several times too high (the seed's, 19.5 ms against 2.3 to 2.5 ms otherwise, once on an H100
            # host), and every candidate's round trips are taken less it. The seed's own clock is trusted: its time
            # is its claim, which such an outlier cannot inflate.
            overhead = min(harness_overhead_ms(run.timed), harness_overhead_ms(harness_run.timed))
            claimed = timing_summary([call.worker_ns / 1e6 for call in run.timed])
            seed = SeedTiming(claimed.median_ms, overhead, claimed.relative_spread, claimed.count)
            self._seed_timings.put(key, seed)
            self._retime_seed = False
            return seed
        finally:
            self._seed_lock.release()

    def _cached_seed_timing(self, key: str) -> SeedTiming | None:
        return None if self._retime_seed else self._seed_timings.get(key)

    def _score(self, run: Run, seed: SeedTiming) -> Result:
        report = combined_reports([run.scored[window] for window in sorted(run.scored)])
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
            reference_balancedness=self._seed_report.reference_score,
            seed_balancedness=self._seed_report.balancedness_score,
            gpus_with_duplicate_expert=run.duplicate_gpus,
            timing={**timing.to_json(), "seed": asdict(seed), "variant_calls": len(run.variants),
                    "skipped_variant_calls": run.skipped_variants, "rechecked_calls": run.rechecked,
                    "overlapped_calls": run.overlapped},
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


def workload_summary(trace: Trace, problem: Problem) -> dict[str, object]:
    """What a result records of the workload it was measured on; stored results are matched on it."""
    return {"source": trace.source, "digest": trace.digest, "windows": trace.num_windows,
            "steps_per_window": trace.steps_per_window, "problem": asdict(problem)}


def _require_file(program: str | Path) -> None:
    if not Path(program).is_file():
        raise FileNotFoundError(f"no program file at {program}")


def _own_fault(error: Exception) -> RunFailed:
    """An unexpected exception as an `infra_error`, naming it and where it was raised."""
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    place = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return RunFailed("infra_error", f"the evaluator failed: {type(error).__name__}: {error}{place}")


def _remove_if_owner(folder: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        remove_tree(folder)


def _device(info: WorkerInfo) -> dict[str, object]:
    return {"device": info.device, "card": info.card, "software": software(), "sandbox": asdict(info.confinement)}

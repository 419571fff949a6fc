"""Per-call times of a program, taken by the evaluator's own clock, and the seed's time per device.

The evaluator stamps each call's round trip: from before it writes the input into the exchange (a thread of the
candidate's can watch that memory) to the reply's arrival. Beyond the call itself, a round trip holds the harness's
work (the input to the device and the outputs back into the exchange, the input check, two small frames), which
for the same shapes is about the same for every program but grows with the outputs' size; it is measured on the
seed and on the narrowest valid plan (no candidate's outputs are smaller), which cannot lie, and the lesser of the
two is kept with the seed's timing. A program's time is its median round trip less that harness time: nothing in
the candidate's process moves it, so a patched clock gains nothing, and a program that skips the harness's work in
its process gains at most the worker's part of the harness time.

The worker also times each call itself (perf_counter around the call, the whole device synchronised before the end
stamp). That claim is a cross-check: more than its round trip, or no time at all, is a tampered clock (a crash);
a claim above the round trips' estimate (the harness ran faster than when it was measured) is taken instead, and one
below it by more than twice the harness's time is named in the verdict.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluator.eplb.scoring import TimingSummary, timing_summary
from evaluator.files import write_atomically
from evaluator.sandbox import CallResult


@dataclass(frozen=True)
class Timing:
    """How long one program took per call, with the cross-check's verdict."""

    time_ms: float  # what the scores use: the median round trip less the harness's time, or the claim if higher
    summary: TimingSummary  # of the worker's own per-call times (its claim)
    round_trip_ms: float  # median round trip seen by the evaluator
    overhead_ms: float  # median round trip minus the claim: the harness's time in this run
    harness_ms: float  # the harness's time taken off the round trips, kept with the seed's timing
    clock_check: str  # "agrees", or how far the claim fell below the round trips' estimate

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "summary": asdict(self.summary)}


def harness_overhead_ms(calls: list[CallResult]) -> float:
    """The harness's time per call in these calls of a trusted program: median round trip minus claim."""
    return statistics.median((call.evaluator_wall_ns - call.worker_ns) / 1e6 for call in calls)


def measure(calls: list[CallResult], harness_ms: float) -> Timing:
    """Timing of a program from its timed calls, less `harness_ms` per call (the lesser of the trusted programs')."""
    summary = timing_summary([call.worker_ns / 1e6 for call in calls])
    round_trip = statistics.median(call.evaluator_wall_ns / 1e6 for call in calls)
    estimate = round_trip - harness_ms
    verdict = "agrees"
    # A claim below the estimate by more than twice the harness's time is neither the harness running slower now
    # than when it was measured nor the worker's copies of outputs wider than the narrowest plan's (4.2 MB cost
    # the seed patch's program 0.3 to 0.6 ms on H200 hosts with a harness of 0.5 to 0.9 ms): the worker's clock
    # (or what it times) is not the call's.
    if estimate - summary.median_ms > 2 * harness_ms:
        verdict = (f"the worker claimed {summary.median_ms:.3f} ms per call, but its round trips of {round_trip:.3f} "
                   f"ms, less the harness's {harness_ms:.3f} ms, say {estimate:.3f} ms; the round trips are used")
    return Timing(max(estimate, summary.median_ms), summary, round_trip, harness_overhead_ms(calls), harness_ms,
                  verdict)


@dataclass(frozen=True)
class SeedTiming:
    time_ms: float
    overhead_ms: float  # the harness's per call: the lesser of the seed's and the narrowest plan's
    relative_spread: float
    calls: int


class SeedTimingCache:
    """The seed's time per device and software version, in memory and (if `path` is set) in a JSON file, which
    keeps the newest `MAX_ENTRIES` (each edit of the evaluator is a new software version). Evaluators in other
    processes may share the file: each write merges what they wrote since."""

    MAX_ENTRIES = 64

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, SeedTiming] = _read_timings(path) if path is not None else {}

    def get(self, key: str) -> SeedTiming | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, timing: SeedTiming) -> None:
        with self._lock:
            if self.path is None:
                self._entries = self._newest({**self._entries}, key, timing)
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
                    self._entries = self._newest({**self._entries, **_read_timings(self.path)}, key, timing)
                    write_atomically(self.path, json.dumps({k: asdict(v) for k, v in self._entries.items()},
                                                           indent=1))
            except OSError:  # an unwritable cache only costs a re-timing in the next process
                self._entries = self._newest({**self._entries}, key, timing)

    def _newest(self, entries: dict[str, SeedTiming], key: str, timing: SeedTiming) -> dict[str, SeedTiming]:
        """`entries` with `key` set to `timing` as the newest, less the oldest beyond `MAX_ENTRIES`."""
        entries.pop(key, None)
        entries[key] = timing
        return dict(list(entries.items())[-self.MAX_ENTRIES:])


def _read_timings(path: Path) -> dict[str, SeedTiming]:
    """The timings kept in `path`, oldest first; none if it is missing or damaged, and none of an entry that is not a
    sound timing (each costs one re-timing): a NaN harness time would make every program's time NaN."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = raw.items()
    except (OSError, ValueError, AttributeError):
        return {}
    timings = {}
    for key, value in entries:
        try:
            timing = SeedTiming(**value)
        except TypeError:
            continue
        if _is_sound(timing):
            timings[key] = timing
    return timings


def _is_sound(timing: SeedTiming) -> bool:
    numbers = (timing.time_ms, timing.overhead_ms, timing.relative_spread)
    return (all(type(number) in (int, float) and math.isfinite(number) and number >= 0 for number in numbers)
            and timing.time_ms > 0 and type(timing.calls) is int and timing.calls >= 1)


def default_cache_path() -> Path:
    """Where the seed's timings are kept between runs: $EPLB_EVALUATOR_CACHE, else the user's cache folder."""
    root = os.environ.get("EPLB_EVALUATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "eplb-evaluator"
    )
    return Path(root) / "seed-timing.json"

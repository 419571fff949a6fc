"""Per-call times of a candidate, checked against the evaluator's own clock, and the seed's time per device.

The worker times each call itself (perf_counter around the call, with the whole device synchronised before
the end stamp), but that clock lives in the candidate's process, where it can be patched. The evaluator
also measures every round trip. Round trip minus worker time is the harness's overhead, which for the same
shapes is about the same for every program; it is taken from the seed and the seed patch (the lesser of the
two), which cannot lie. Round trip less that overhead, less a slack for scheduling noise, is a lower bound on the
program's time that no clock in its process can move: a claim below the bound is replaced by it.
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

# Round trips may exceed a truthful claim by the slack: the harness's overhead varies with the host's pace (a
# vCPU's pace switched by 1.6 to 1.8 times within seconds on the H100 hosts), not with the program's own time.
# The slack is the larger of CLOCK_SLACK_MS and the lesser of the claim and the harness's overhead kept with the
# seed's timing: never more than the claim itself, and no more than that overhead for slow programs.
CLOCK_SLACK_MS = 0.5


@dataclass(frozen=True)
class Timing:
    """How long one program took per call, with the cross-check's verdict."""

    time_ms: float  # what the scores use: the median per call, or the round trips' lower bound where higher
    summary: TimingSummary  # of the worker's own per-call times
    round_trip_ms: float  # median round trip seen by the evaluator
    overhead_ms: float  # median round trip minus worker time
    clock_slack_ms: float | None  # how far the claim may fall below the round trips' estimate; None for the seed
    clock_check: str  # "agrees", or why the round trips' lower bound was used instead

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "summary": asdict(self.summary)}


def measure(calls: list[CallResult], trusted_overhead_ms: float | None) -> Timing:
    """Timing of a program from its timed calls; without a trusted overhead (the seed itself) no cross-check."""
    claimed = [call.worker_ns / 1e6 for call in calls]
    round_trips = [call.evaluator_wall_ns / 1e6 for call in calls]
    summary = timing_summary(claimed)
    round_trip = statistics.median(round_trips)
    overhead = statistics.median(trip - claim for trip, claim in zip(round_trips, claimed))
    time_ms, slack, verdict = summary.median_ms, None, "agrees"
    if trusted_overhead_ms is not None:
        slack = max(CLOCK_SLACK_MS, min(summary.median_ms, trusted_overhead_ms))
        bound = round_trip - trusted_overhead_ms - slack
        if bound > summary.median_ms:
            time_ms = bound
            verdict = (f"the worker claimed {summary.median_ms:.3f} ms per call, but its round trips of "
                       f"{round_trip:.3f} ms, less the harness's {trusted_overhead_ms:.3f} ms and a slack of "
                       f"{slack:.3f} ms, say at least {bound:.3f} ms; that is used")
    return Timing(time_ms, summary, round_trip, overhead, slack, verdict)


@dataclass(frozen=True)
class SeedTiming:
    time_ms: float
    overhead_ms: float  # the harness's per call: the lesser of the seed's and the seed patch's
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
    sound timing (each costs one re-timing): a NaN overhead would switch the clock's cross-check off unseen."""
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

"""Per-call times of a candidate, checked against the evaluator's own clock, and the seed's time per device.

The worker times each call itself (perf_counter around the call, with the whole device synchronised before
the end stamp), but that clock lives in the candidate's process, where it can be patched. The evaluator
also measures every round trip. Round trip minus worker time is the harness's overhead, which for the same
shapes is about the same for every program; it is taken from the seed, which cannot lie. When the
candidate's round trips say it took clearly longer than it claims, the round-trip estimate is used instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluator.eplb.scoring import TimingSummary, timing_summary
from evaluator.files import write_atomically
from evaluator.sandbox import CallResult

# Round trips may exceed a truthful claim by this much (output size, a busy CPU after the call) or by this
# fraction of the claim, whichever is larger: the check is for clocks that lie, not for scheduling noise.
CLOCK_SLACK_MS = 0.5
CLOCK_SLACK_RELATIVE = 1.0


@dataclass(frozen=True)
class Timing:
    """How long one program took per call, with the cross-check's verdict."""

    time_ms: float  # what the scores use: the median per call
    summary: TimingSummary  # of the worker's own per-call times
    round_trip_ms: float  # median round trip seen by the evaluator
    overhead_ms: float  # median round trip minus worker time
    clock_check: str  # "agrees", or why the round trips were used instead

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "summary": asdict(self.summary)}


def measure(calls: list[CallResult], trusted_overhead_ms: float | None) -> Timing:
    """Timing of a program from its timed calls; without a trusted overhead (the seed itself) no cross-check."""
    claimed = [call.worker_ns / 1e6 for call in calls]
    round_trips = [call.evaluator_wall_ns / 1e6 for call in calls]
    summary = timing_summary(claimed)
    round_trip = statistics.median(round_trips)
    overhead = statistics.median(trip - claim for trip, claim in zip(round_trips, claimed))
    time_ms, verdict = summary.median_ms, "agrees"
    if trusted_overhead_ms is not None:
        estimate = round_trip - trusted_overhead_ms
        if estimate > summary.median_ms + max(CLOCK_SLACK_MS, CLOCK_SLACK_RELATIVE * summary.median_ms):
            time_ms = estimate
            verdict = (
                f"the worker claimed {summary.median_ms:.3f} ms per call but its round trips imply {estimate:.3f} ms; "
                "round trips used"
            )
    return Timing(time_ms, summary, round_trip, overhead, verdict)


@dataclass(frozen=True)
class SeedTiming:
    time_ms: float
    overhead_ms: float
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
    """The timings kept in `path`, oldest first; none if it is missing or damaged (that costs one re-timing)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {key: SeedTiming(**value) for key, value in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def default_cache_path() -> Path:
    """Where the seed's timings are kept between runs: $EPLB_EVALUATOR_CACHE, else the user's cache folder."""
    root = os.environ.get("EPLB_EVALUATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "eplb-evaluator"
    )
    return Path(root) / "seed-timing.json"

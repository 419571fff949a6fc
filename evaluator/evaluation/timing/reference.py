"""The seed's time per call where and when a candidate is timed: a yardstick timed beside the candidate, times the
seed's ratio to it.

The yardstick is the seed itself on a small problem (one layer, one node of 64 experts): the same code, the same
kind of work (Python loops over small tensors on the CPU), in a two-hundredth of the time, so that its time follows
the host's pace as the seed's does. A trusted worker of each lane, on the candidates' core, times it between a
candidate's batches (before the first, after the last, and between them as `protocol.yardstick_due` says), while the
candidate's processes are stopped; each batch is read against the yardstick's pace around it. The seed's ratio to the
yardstick is measured once per device and software version, in several fresh processes of the seed, each timed as a
candidate is (the same warm-up, the yardstick in the lane's worker between the seed's calls, the seed stopped
meanwhile), and kept in a cache file; the same measurement fits the harness's model (estimate.py) to two trusted
programs' batches, run back to back (not to the seed's, each of which follows a round of the yardstick).

So a speedup is the seed's time over the candidate's at the same pace on the same core: neither the host's pace
between the seed's measurement and the candidate's, nor its changes during a candidate's batches, move it.

On a GPU lane a second yardstick is timed in each round: the seed patch's program on a problem of 12 slots, the work
of most programs there (torch's dispatch and kernel launches, which a host under load slows less than Python loops).
The seed's ratio is measured against each, and a program is read against a fixed mix of the two
(`TimingSettings.pace_weight`), with the seed's ratio to the same mix.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from evaluator.eplb.problem import Problem
from evaluator.evaluation.timing.estimate import (
    BatchTime,
    HarnessModel,
    device_pace_capped,
    mixed_pace,
    relative_precision,
    steady,
)
from evaluator.files import write_atomically
from evaluator.paths import SEED_PROGRAM


@dataclass(frozen=True, eq=False)
class Yardstick:
    """A call of a trusted program on a fixed input."""

    program: Path
    weight: np.ndarray
    args: tuple[int, ...]
    entry_point: str = "rebalance_experts"


YARDSTICK_PROBLEM = Problem(num_layers=1, num_experts=64, num_replicas=72, num_groups=2, num_nodes=1, num_gpus=8)
YARDSTICK = Yardstick(SEED_PROGRAM, np.random.default_rng(0).integers(0, 50_000, (1, 64)).astype(np.int64),
                      YARDSTICK_PROBLEM.rebalance_args())
# The seed patch's program loops once per expert and slot: on the yardstick's layer it takes about 12 ms a call on an
# H100, on this problem about 3 ms, and follows the host's pace as closely.
DEVICE_YARDSTICK_PROBLEM = Problem(num_layers=1, num_experts=8, num_replicas=12, num_groups=2, num_nodes=1, num_gpus=4)
DEVICE_YARDSTICK_WEIGHT = np.random.default_rng(0).integers(0, 50_000, (1, 8)).astype(np.int64)


def device_yardstick(seed_patch: Path) -> Yardstick:
    """The device's yardstick: the seed patch's program (at `seed_patch`) on `DEVICE_YARDSTICK_PROBLEM`."""
    return Yardstick(seed_patch, DEVICE_YARDSTICK_WEIGHT, DEVICE_YARDSTICK_PROBLEM.rebalance_args())


SeedProcess = tuple[Sequence[BatchTime], Sequence[float], Sequence[float]]
"""One fresh process of the seed, timed as a candidate is: its batches (with the pace around each) and the yardsticks'
rounds in ms (the device's none but on a GPU lane)."""


@dataclass(frozen=True)
class SeedReference:
    """The seed's time per call against the yardstick's on one device and software version."""

    ratio: float  # the seed's time per call over the yardstick's around it, the median over every seed call
    ratio_spread: float  # the relative precision of that median (half its 95% interval over it)
    seed_time_ms: float  # the seed's own time per call when it was measured (the yardstick then times the ratio)
    yardstick_ms: float
    processes: int
    harness: HarnessModel
    device_ratio: float | None = None  # the same against the device's yardstick, on a GPU lane
    device_yardstick_ms: float | None = None

    @classmethod
    def measured(cls, processes: Sequence[SeedProcess], harness_batches: Sequence[BatchTime]) -> SeedReference:
        """The reference from the seed's fresh processes (`SeedProcess`) and from trusted batches for the harness's
        model. The ratio is the median over the steady batches of each process (`steady`); against the device's
        yardstick, each batch's pace is capped as a candidate's is (`capped`). The spread is the wider of the two
        ratios' (`ratio_spread`)."""
        ratios, device_ratios, yardstick_ms, device_yardstick_ms = _ratios(processes)
        seed_ms = statistics.median(batch.claim_ns / 1e6 for batches, _, _ in processes for batch in batches)
        device = (None, None) if device_ratios is None else (statistics.median(device_ratios), device_yardstick_ms)
        return cls(statistics.median(ratios), _spread(ratios, device_ratios), seed_ms, yardstick_ms, len(processes),
                   HarnessModel.fit(harness_batches, yardstick_ms), *device)

    def capped(self, batches: Sequence[BatchTime]) -> list[BatchTime]:
        """`batches` with the device's yardstick's pace around each capped as the seed's were (`device_pace_capped`,
        at the two yardsticks' ratio at this reference)."""
        if self.device_yardstick_ms is None:
            return list(batches)
        return device_pace_capped(batches, self.device_yardstick_ms / self.yardstick_ms)

    def ratio_at(self, weight: float) -> float:
        """The seed's ratio to the pace at `weight`, mixed as the pace is (`mixed_pace`)."""
        return mixed_pace(self.ratio, self.device_ratio, weight)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SeedReference:
        """Raises TypeError or ValueError unless `data` is a sound reference (finite positive numbers, a whole number
        of processes, a harness of non-negative finite terms at a positive pace)."""
        harness = HarnessModel(**data["harness"])  # type: ignore[arg-type]
        reference = cls(**{**data, "harness": harness})  # type: ignore[arg-type]
        positive = (reference.ratio, reference.seed_time_ms, reference.yardstick_ms, harness.pace_ms)
        device = (reference.device_ratio, reference.device_yardstick_ms)
        spreads = (reference.ratio_spread, *asdict(harness).values())
        if not (all(_finite(number) and number > 0 for number in positive)
                and (device == (None, None) or all(_finite(number) and number > 0 for number in device))
                and all(_finite(number) and number >= 0 for number in spreads)
                and type(reference.processes) is int and reference.processes >= 1):
            raise ValueError(f"not a sound seed reference: {data!r:.300}")
        return reference


def ratio_spread(processes: Sequence[SeedProcess]) -> float:
    """The relative precision (half the 95% interval over the median) of the seed's ratio to the yardstick over
    `processes`; on a GPU lane, the wider of its ratios to the two yardsticks'."""
    ratios, device_ratios, _, _ = _ratios(processes)
    return _spread(ratios, device_ratios)


def _spread(ratios: Sequence[float], device_ratios: Sequence[float] | None) -> float:
    return max(relative_precision(ratios), relative_precision(device_ratios) if device_ratios else 0.0)


def _ratios(processes: Sequence[SeedProcess]) -> tuple[list[float], list[float] | None, float, float | None]:
    """The seed's steady batches' times over the yardstick's pace around each, and over the device's yardstick's
    (capped as a candidate's is; None off a GPU lane); the yardsticks' median times."""
    kept = [batch for batches, _, _ in processes for batch in steady(batches)]
    yardstick_ms = statistics.median(ms for _, paces, _ in processes for ms in paces)
    ratios = [batch.claim_ns / 1e6 / batch.pace_ms for batch in kept]
    device_paces = [ms for _, _, paces in processes for ms in paces]
    if not device_paces:
        return ratios, None, yardstick_ms, None
    device_yardstick_ms = statistics.median(device_paces)
    device_ratios = [batch.claim_ns / 1e6 / batch.pace_at(0.0)
                     for batch in device_pace_capped(kept, device_yardstick_ms / yardstick_ms)]
    return ratios, device_ratios, yardstick_ms, device_yardstick_ms


class ReferenceCache:
    """Seed references per device and software version, in memory and (if `path` is set) in a JSON file, which keeps
    the newest `MAX_ENTRIES` (each edit of the evaluator is a new software version). Evaluators in other processes may
    share the file: each write merges what they wrote since."""

    MAX_ENTRIES = 64

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, SeedReference] = _read_references(path) if path is not None else {}

    def get(self, key: str) -> SeedReference | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, reference: SeedReference) -> None:
        with self._lock:
            if self.path is None:
                self._entries = self._newest({**self._entries}, key, reference)
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
                    self._entries = self._newest({**self._entries, **_read_references(self.path)}, key, reference)
                    write_atomically(self.path, json.dumps({k: v.to_json() for k, v in self._entries.items()},
                                                           indent=1))
            except OSError:  # an unwritable cache only costs a new measurement in the next process
                self._entries = self._newest({**self._entries}, key, reference)

    def _newest(self, entries: dict[str, SeedReference], key: str,
                reference: SeedReference) -> dict[str, SeedReference]:
        entries.pop(key, None)
        entries[key] = reference
        return dict(list(entries.items())[-self.MAX_ENTRIES:])


def default_cache_path() -> Path:
    """Where seed references are kept between runs: $EPLB_EVALUATOR_CACHE, else the user's cache folder."""
    root = os.environ.get("EPLB_EVALUATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "eplb-evaluator")
    return Path(root) / "seed-reference.json"


def _read_references(path: Path) -> dict[str, SeedReference]:
    """The references kept in `path`, oldest first; none if it is missing or damaged, and none of an entry that is not
    sound (each costs one new measurement): a NaN ratio would make every speedup NaN."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).items()
    except (OSError, ValueError, AttributeError):
        return {}
    references = {}
    for key, value in entries:
        try:
            references[key] = SeedReference.from_json(value)
        except (TypeError, ValueError, AttributeError, KeyError):
            continue
    return references


def _finite(number: object) -> bool:
    return type(number) in (int, float) and math.isfinite(number)  # type: ignore[arg-type]

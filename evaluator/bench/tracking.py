"""How each speed class's time follows the host's pace, against yardsticks of two kinds.

A speedup is read against yardsticks timed beside the candidate (timing/reference.py): the seed on one small layer,
Python loops on the CPU, and on a GPU the seed patch's program on a problem of 12 slots, torch's dispatch and kernel
launches. Where the host slows, a candidate's time has to slow as much as the pace it is read against for its
speedup to hold. Here each speed class runs in a fresh process on the lane's core, without the harness, its batches
taking turns with rounds of four yardsticks: the evaluator's two, and the `seed-patch` and `topk-snake` classes'
programs on the yardstick's layer on the device. A batch counts as slowed where the evaluator's CPU yardstick around
it took more than `SLOWED` times its usual time (its tenth percentile in the run), and as usual within `PACE_CHANGE`
of it. Per class: its time in slowed batches over its time in usual ones, bare and against each yardstick (1.00: the
yardstick follows the class), and each yardstick's own.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from evaluator.bench.in_process import InProcess, device_named, in_fresh_process, load, on_cores
from evaluator.bench.speed_classes import SPEED_CLASSES, SpeedClass
from evaluator.eplb.default_trace import default_trace
from evaluator.evaluation import Settings
from evaluator.evaluation.lanes import lane_cores
from evaluator.evaluation.seed_plans import seed_patch_program
from evaluator.evaluation.timing import PACE_CHANGE, YARDSTICK, call_inputs, pace_change
from evaluator.evaluation.timing.reference import DEVICE_YARDSTICK_PROBLEM, DEVICE_YARDSTICK_WEIGHT

SLOWED = 1.3  # a batch is slowed where the evaluator's yardstick took this many times its usual time around it
FEWEST = 5  # slowed and usual batches each, for a ratio
USUAL_QUANTILE = 10
WARMUP_S = 0.3
EVALUATORS = "seed (CPU)"  # the evaluator's yardstick, which tells slowed batches from usual ones
# name -> the program's source, and the weight and arguments it is called on
ON_THE_DEVICE: dict[str, tuple[Callable[[], str], np.ndarray, tuple[int, ...]]] = {
    **{f"{speed.name} (device)": (speed.source, YARDSTICK.weight, YARDSTICK.args) for speed in SPEED_CLASSES
       if speed.name in ("seed-patch", "topk-snake")},
    "seed-patch, 12 slots (device)": (seed_patch_program, DEVICE_YARDSTICK_WEIGHT,
                                      DEVICE_YARDSTICK_PROBLEM.rebalance_args()),
}


@dataclass(frozen=True)
class ClassTracking:
    name: str
    batches: int
    slowed_batches: int
    usual_batches: int
    time_ms: float  # median per call over the usual batches (over all where there are too few)
    # the class's median time per call in slowed batches over usual ones: "bare", and against each yardstick's time
    # around the batch (None: too few slowed or usual batches, the host kept its pace)
    slowed_over_usual: dict[str, float | None]
    yardsticks_slowed_over_usual: dict[str, float | None]  # each yardstick's own time, slowed over usual
    yardsticks_ms: dict[str, float]  # each yardstick's median time per call over the run


@dataclass(frozen=True)
class TrackingBenchResult:
    device: str
    card: str
    torch_version: str
    cpus: int
    machine: str
    lane_cpus: list[int] | None
    seconds_per_class: float
    classes: list[ClassTracking]
    seconds: float


def measure(seconds: float = 10.0, device: str = "auto", settings: Settings | None = None) -> TrackingBenchResult:
    """Each speed class in a fresh process on the lane's core for `seconds`, its batches taking turns with rounds of
    the yardsticks."""
    settings = settings or Settings()
    started = time.perf_counter()
    inputs = call_inputs(default_trace().windows)
    lane_cpus = lane_cores(1)[0][0]
    classes = []
    for speed in SPEED_CLASSES:
        rows = in_fresh_process(lambda: _batches_and_rounds(speed, device, lane_cpus, inputs, settings, seconds),
                                f"timing {speed.name} beside the yardsticks")
        classes.append(follow(speed.name, rows["times_ms"], rows["rounds_ms"]))
    used = device_named(device)  # the children are done: this process may touch the device now
    card = torch.cuda.get_device_name(0) if used.startswith("cuda") else platform.processor() or platform.machine()
    return TrackingBenchResult(used, card, torch.__version__, os.cpu_count() or 0, platform.machine(),
                               list(lane_cpus) if lane_cpus else None, seconds, classes,
                               time.perf_counter() - started)


def follow(name: str, times_ms: Sequence[float], rounds_ms: dict[str, Sequence[float]]) -> ClassTracking:
    """How a class's batches (`times_ms` per call) followed the yardsticks' rounds (`rounds_ms`: for each, one round
    before the first batch and one after each), telling slowed batches from usual ones by the evaluator's."""
    times = np.asarray(times_ms, dtype=float)
    paces = {yardstick: _around(rounds) for yardstick, rounds in rounds_ms.items()}
    rounds = rounds_ms[EVALUATORS]
    steady = np.array([pace_change(before, after) <= PACE_CHANGE for before, after in zip(rounds, rounds[1:])])
    usual_ms = float(np.percentile(rounds, USUAL_QUANTILE))
    slowed = steady & (paces[EVALUATORS] > SLOWED * usual_ms)
    usual = steady & (paces[EVALUATORS] <= (1 + PACE_CHANGE) * usual_ms)
    enough = slowed.sum() >= FEWEST and usual.sum() >= FEWEST

    def ratio(values: np.ndarray) -> float | None:
        return float(np.median(values[slowed]) / np.median(values[usual])) if enough else None

    return ClassTracking(
        name, len(times), int(slowed.sum()), int(usual.sum()),
        float(np.median(times[usual] if usual.sum() >= FEWEST else times)),
        {"bare": ratio(times), **{yardstick: ratio(times / pace) for yardstick, pace in paces.items()}},
        {yardstick: ratio(pace) for yardstick, pace in paces.items()},
        {yardstick: float(np.median(values)) for yardstick, values in rounds_ms.items()})


def _around(rounds: Sequence[float]) -> np.ndarray:
    """Each batch's pace: the mean of the rounds before and after it."""
    values = np.asarray(rounds, dtype=float)
    return (values[:-1] + values[1:]) / 2


@dataclass(frozen=True)
class _Yardstick:
    name: str
    function: Callable[..., object]
    weight: torch.Tensor
    args: tuple[int, ...]
    synchronize: Callable[[], None]
    calls: int  # a round's time is the least of these, as the evaluator's rounds (`TimingSettings.yardstick_calls`)

    def ms(self) -> float:
        """A round: the least of `calls` calls, each on a copy of the weight, the device synchronised."""
        least = math.inf
        for _ in range(self.calls):
            weight = self.weight.clone()
            self.synchronize()
            started = time.perf_counter()
            self.function(weight, *self.args)
            self.synchronize()
            least = min(least, (time.perf_counter() - started) * 1e3)
        return least


def _batches_and_rounds(speed: SpeedClass, device: str, cpus: tuple[int, ...] | None, inputs: np.ndarray,
                        settings: Settings, seconds: float) -> dict[str, object]:
    """In this process: the class's batches for `seconds`, a round of each yardstick before the first and after each."""
    on_cores(cpus)
    device = device_named(device)
    calls = InProcess(load(speed.source(), speed.name), device, inputs, settings.problem.rebalance_args())
    least_of = settings.timing.yardstick_calls
    yardsticks = [_Yardstick(EVALUATORS, load(YARDSTICK.program.read_text(encoding="utf-8"), "yardstick"),
                             torch.from_numpy(YARDSTICK.weight), YARDSTICK.args, lambda: None, least_of)]
    yardsticks += [_Yardstick(name, load(source(), name), torch.from_numpy(weight).to(device), args, calls.synchronize,
                              least_of) for name, (source, weight, args) in ON_THE_DEVICE.items()]
    calls.warm_up(WARMUP_S, settings.timing.warmup_calls)
    for yardstick in yardsticks:
        yardstick.ms()
    size = calls.batch_size(settings.timing.min_batch_ms, settings.timing.max_batch_calls)
    rounds = {yardstick.name: [yardstick.ms()] for yardstick in yardsticks}
    times = []
    ended = time.perf_counter() + seconds
    while time.perf_counter() < ended:
        times.append(calls.batch_ms_per_call(size))
        for yardstick in yardsticks:
            rounds[yardstick.name].append(yardstick.ms())
    return {"times_ms": times, "rounds_ms": rounds}

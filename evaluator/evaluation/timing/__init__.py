"""How candidates are timed, in one place: which inputs go in which batches (`schedule`), how many calls a batch
holds, when a run is timed enough and how long a call may take (`protocol`), how a time per call and its interval
come out of the batches (`estimate`), and what a speedup is measured against (`reference`).

The sandbox only runs batches and stamps clocks; `run.py` drives a worker through what these modules decide.
"""

from evaluator.evaluation.timing.estimate import (
    PACE_CHANGE,
    BatchTime,
    HarnessModel,
    Pace,
    Timing,
    TimingSummary,
    estimate,
    median_interval,
    mostly_steady,
    pace_change,
    relative_precision,
    steady,
    summarise,
)
from evaluator.evaluation.timing.protocol import (
    TimingSettings,
    budget_spent,
    call_limit_s,
    calls_per_batch,
    pace_changed,
    precise_enough,
    reference_timed_enough,
    yardstick_due,
)
from evaluator.evaluation.timing.reference import (
    YARDSTICK,
    ReferenceCache,
    SeedReference,
    Yardstick,
    default_cache_path,
    device_yardstick,
)
from evaluator.evaluation.timing.schedule import Batch, BatchPlan, Call, call_inputs, vary, warmup_call

__all__ = [
    "PACE_CHANGE", "YARDSTICK", "Batch", "BatchPlan", "BatchTime", "Call", "HarnessModel", "Pace", "ReferenceCache",
    "SeedReference", "Timing", "TimingSettings", "TimingSummary", "budget_spent", "call_inputs", "call_limit_s",
    "calls_per_batch", "default_cache_path", "device_yardstick", "estimate", "median_interval", "mostly_steady",
    "pace_change", "pace_changed", "precise_enough", "reference_timed_enough", "relative_precision", "steady",
    "summarise", "vary", "warmup_call", "Yardstick", "yardstick_due",
]

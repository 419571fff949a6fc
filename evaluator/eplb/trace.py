"""Expert-load traces: per-expert load summed over windows of inference steps.

The evaluator plans on window i and scores the plan on window i+1, so a trace has at least two windows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from evaluator.eplb.problem import Problem

# Inference steps summed into one window: the default and held-out traces', and a trace file's unless told.
STEPS_PER_WINDOW = 100
# The largest load accepted, per step and per window: every integer up to it is exact in float64, so an
# integer trace and the same trace written with floats (3.0) mean the same thing, and sums cannot overflow.
MAX_LOAD = 2**53

Where = Callable[[tuple[int, ...]], str]


class TraceError(ValueError):
    """A trace that cannot be used; the message says what is wrong and where (file, step, layer, expert)."""


@dataclass(frozen=True, eq=False)
class Trace:
    """Load of each logical expert of each MoE layer, summed over windows of inference steps.

    `windows` is [num_windows, num_layers, num_experts], read-only, int64 when every load is integral
    (floats such as 3.0 included) and float64 otherwise. `source` says where the trace came from
    ("default", "holdout", "synthetic(seed=...)" or a file path); `dropped_steps` counts the steps after
    the last full window, which are left out.
    """

    windows: np.ndarray
    source: str
    steps_per_window: int
    dropped_steps: int = 0

    def __post_init__(self) -> None:
        if self.steps_per_window < 1 or self.dropped_steps < 0:
            raise TraceError(
                f"trace {self.source}: steps_per_window must be at least 1 and dropped_steps at least 0, "
                f"got {self.steps_per_window} and {self.dropped_steps}"
            )
        shape = np.shape(self.windows)
        if len(shape) != 3:
            raise TraceError(
                f"trace {self.source}: windows must be [num_windows, num_layers, num_experts], got shape {shape}"
            )
        if shape[0] < 2:
            raise TraceError(
                f"trace {self.source} has {shape[0]} window(s); at least 2 are needed "
                "(a plan is made on one window and scored on the next)"
            )
        # as_loads returns a new array, so no caller can change the trace's data afterwards
        windows = as_loads(self.windows, lambda i: f"trace {self.source}: window {i[0]}, layer {i[1]}, expert {i[2]}")
        windows.setflags(write=False)
        object.__setattr__(self, "windows", windows)

    @cached_property
    def digest(self) -> str:
        """A sha256 of the windows' data (dtype, shape, values) and the window length: equal for equal traces."""
        content = hashlib.sha256(f"{self.windows.dtype.str} {self.windows.shape} {self.steps_per_window}".encode())
        content.update(np.ascontiguousarray(self.windows).data)
        return content.hexdigest()[:16]

    @property
    def num_windows(self) -> int:
        return self.windows.shape[0]

    @property
    def num_layers(self) -> int:
        return self.windows.shape[1]

    @property
    def num_experts(self) -> int:
        return self.windows.shape[2]


def check_matches(trace: Trace, problem: Problem) -> None:
    """Raise TraceError unless the trace has the problem's number of layers and experts."""
    if (trace.num_layers, trace.num_experts) != (problem.num_layers, problem.num_experts):
        raise TraceError(
            f"trace {trace.source} has {trace.num_layers} layers x {trace.num_experts} experts, "
            f"but the problem has {problem.num_layers} layers x {problem.num_experts} experts"
        )


def as_loads(values: np.ndarray, where: Where) -> np.ndarray:
    """A new array of `values`: int64 if every entry is integral, else float64. TraceError naming the first
    entry that is not a finite, non-negative number of at most MAX_LOAD; `where(index)` names an entry."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        values = _numeric_objects(values, where)
    bad = _first_bad_number(values)
    if bad is not None:
        index, reason = bad
        raise TraceError(f"{where(index)} is {_show(values[index])}: {reason}")
    if values.dtype.kind == "f":
        return values.astype(np.int64) if np.array_equal(values, np.floor(values)) else values.astype(np.float64)
    return values.astype(np.int64)


def _numeric_objects(values: np.ndarray, where: Where) -> np.ndarray:
    """An array of non-numeric dtype (booleans, strings, objects) as numbers, or TraceError at the first
    entry that is not a number."""
    for index, value in np.ndenumerate(values):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TraceError(f"{where(index)} is {_show(value)}, not a number")
        if isinstance(value, int) and not -MAX_LOAD <= value <= MAX_LOAD:
            raise TraceError(f"{where(index)} is {value}: loads must be at most 2**53")
    return values.astype(np.float64)


def _first_bad_number(values: np.ndarray) -> tuple[tuple[int, ...], str] | None:
    if values.dtype.kind == "f":
        checks = (
            (np.isnan(values), "loads must be numbers, not NaN"),
            (np.isinf(values), "loads must be finite"),
        )
    else:
        checks = ()
    checks += ((values < 0, "loads must be non-negative"), (values > MAX_LOAD, "loads must be at most 2**53"))
    for mask, reason in checks:
        if mask.any():
            return tuple(int(i) for i in np.argwhere(mask)[0]), reason
    return None


def _show(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(value.item() if isinstance(value, np.generic) else value)
    text = repr(value)
    return f"{text[:40]}... ({type(value).__name__})" if len(text) > 40 else f"{text} ({type(value).__name__})"

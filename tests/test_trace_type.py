"""The Trace type: normalised, owned, read-only data, and errors that name the window, layer and expert."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator.eplb.problem import Problem
from evaluator.eplb.trace import MAX_LOAD, Trace, TraceError, check_matches


def windows(fill: float = 1.0, dtype: type = np.float64) -> np.ndarray:
    return np.full((3, 2, 4), fill, dtype=dtype)


def test_integral_floats_become_int64() -> None:
    trace = Trace(windows(3.0), source="t", steps_per_window=100)
    assert trace.windows.dtype == np.int64
    assert (trace.windows == 3).all()


def test_fractional_loads_stay_float64() -> None:
    values = windows(3.0, np.float32)
    values[1, 0, 2] = 0.5
    trace = Trace(values, source="t", steps_per_window=100)
    assert trace.windows.dtype == np.float64
    assert trace.windows[1, 0, 2] == 0.5


def test_unsigned_and_narrow_integers_become_int64() -> None:
    assert Trace(windows(2, np.uint16), source="t", steps_per_window=1).windows.dtype == np.int64


def test_trace_owns_read_only_data() -> None:
    values = windows(1, np.int64)
    trace = Trace(values, source="t", steps_per_window=100)
    values[0, 0, 0] = 99
    assert trace.windows[0, 0, 0] == 1
    with pytest.raises(ValueError):
        trace.windows[0, 0, 0] = 5
    assert (trace.num_windows, trace.num_layers, trace.num_experts) == (3, 2, 4)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "window 2, layer 1, expert 3 is nan: loads must be numbers, not NaN"),
        (np.inf, "window 2, layer 1, expert 3 is inf: loads must be finite"),
        (-2.0, "window 2, layer 1, expert 3 is -2.0: loads must be non-negative"),
        (2.0**54, "window 2, layer 1, expert 3 is 1.8014398509481984e+16: loads must be at most 2**53"),
    ],
)
def test_bad_loads_are_named_by_window_layer_and_expert(value: float, message: str) -> None:
    values = windows()
    values[2, 1, 3] = value
    with pytest.raises(TraceError) as raised:
        Trace(values, source="mine", steps_per_window=100)
    assert str(raised.value) == f"trace mine: {message}"


def test_non_numbers_are_named() -> None:
    values = windows().astype(object)
    values[1, 0, 2] = "12"
    with pytest.raises(TraceError, match=r"window 1, layer 0, expert 2 is '12' \(str\), not a number"):
        Trace(values, source="t", steps_per_window=1)
    with pytest.raises(TraceError, match="window 0, layer 0, expert 0 is true, not a number"):
        Trace(np.ones((2, 1, 1), dtype=bool), source="t", steps_per_window=1)


def test_the_largest_load_is_accepted() -> None:
    values = windows(0, np.int64)
    values[0, 0, 0] = MAX_LOAD
    assert Trace(values, source="t", steps_per_window=1).windows.max() == MAX_LOAD


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_windows_is_an_error(count: int) -> None:
    with pytest.raises(TraceError, match=f"trace t has {count} window\\(s\\); at least 2 are needed"):
        Trace(np.ones((count, 2, 4)), source="t", steps_per_window=100)


def test_windows_must_be_three_dimensional() -> None:
    with pytest.raises(TraceError, match=r"must be \[num_windows, num_layers, num_experts\], got shape \(3, 4\)"):
        Trace(np.ones((3, 4)), source="t", steps_per_window=100)


def test_steps_per_window_must_be_positive() -> None:
    with pytest.raises(TraceError, match="steps_per_window must be at least 1"):
        Trace(windows(), source="t", steps_per_window=0)


def test_check_matches_names_both_shapes() -> None:
    trace = Trace(np.ones((2, 58, 128)), source="f.json", steps_per_window=100)
    with pytest.raises(TraceError) as raised:
        check_matches(trace, Problem())
    assert str(raised.value) == (
        "trace f.json has 58 layers x 128 experts, but the problem has 58 layers x 256 experts"
    )
    check_matches(Trace(np.ones((2, 58, 256)), source="ok", steps_per_window=100), Problem())

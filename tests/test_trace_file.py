"""The published trace format: windows summed from per-step loads, streamed; every bad file is named."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from evaluator.commands.traces import on_trace, trace_label
from evaluator.eplb import trace_file
from evaluator.eplb.problem import Problem
from evaluator.eplb.trace import TraceError
from evaluator.eplb.trace_file import load_trace_file

PROBLEM = Problem(num_layers=2, num_experts=4, num_replicas=4, num_groups=2, num_nodes=1, num_gpus=2)


def steps(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=(count, PROBLEM.num_layers, PROBLEM.num_experts))


def write(tmp_path: Path, document: object, name: str = "trace.json", **dump: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document, **dump), encoding="utf-8")
    return path


def published(loads: np.ndarray | list[object]) -> dict[str, object]:
    rows = loads.tolist() if isinstance(loads, np.ndarray) else loads
    return {"load_history": [{"logical_expert_load": step} for step in rows]}


def error_of(path: Path, window: int = 2, problem: Problem = PROBLEM) -> str:
    with pytest.raises(TraceError) as raised:
        load_trace_file(path, problem, window=window)
    return str(raised.value)


# --- good files ---------------------------------------------------------------------------------------


def test_steps_are_summed_into_windows_and_the_partial_window_dropped(tmp_path: Path) -> None:
    loads = steps(11)
    trace = load_trace_file(write(tmp_path, published(loads)), PROBLEM, window=3)
    np.testing.assert_array_equal(trace.windows, loads[:9].reshape(3, 3, 2, 4).sum(axis=1))
    assert trace.windows.dtype == np.int64
    assert (trace.steps_per_window, trace.dropped_steps) == (3, 2)
    assert trace.source == str(tmp_path / "trace.json")


@pytest.mark.parametrize("name", ["default", "holdout", "synthetic(seed=0)"])
def test_a_file_named_like_a_built_in_trace_is_recorded_as_a_file(tmp_path: Path, name: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, published(steps(4)), name)
    monkeypatch.chdir(tmp_path)
    trace = load_trace_file(name, PROBLEM, window=2)
    assert trace.source == f"./{name}"
    assert trace_label({"workload": {"source": trace.source, "problem": asdict(Problem())}}) == f"./{name}"
    assert not any(on_trace(built_in)({"workload": {"source": trace.source}}) for built_in in ("default", "holdout"))


def test_default_window_is_100_steps(tmp_path: Path) -> None:
    trace = load_trace_file(write(tmp_path, published(steps(200))), PROBLEM)
    assert (trace.num_windows, trace.steps_per_window, trace.dropped_steps) == (2, 100, 0)


def test_integral_floats_give_int64_and_fractions_float64(tmp_path: Path) -> None:
    whole = load_trace_file(write(tmp_path, published(steps(4).astype(float)), "whole.json"), PROBLEM, window=2)
    assert whole.windows.dtype == np.int64
    halves = steps(4).astype(float) + 0.5
    fractional = load_trace_file(write(tmp_path, published(halves), "half.json"), PROBLEM, window=1)
    assert fractional.windows.dtype == np.float64
    np.testing.assert_array_equal(fractional.windows, halves)


def test_other_keys_and_any_layout_are_accepted(tmp_path: Path) -> None:
    loads = steps(4)
    document = {
        "model": "deepseek-v3",
        "load_history": [
            {"step": i, "logical_expert_load": step.tolist(), "physical_expert_load": [[1, 2]], "ok": True}
            for i, step in enumerate(loads)
        ],
        "notes": {"nested": [1, 2.5, None, "x"]},
    }
    trace = load_trace_file(write(tmp_path, document, indent=3), PROBLEM, window=2)
    np.testing.assert_array_equal(trace.windows, loads.reshape(2, 2, 2, 4).sum(axis=1))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_reading_in_any_chunk_size_gives_the_same_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    loads = steps(6).astype(float) / 8  # numbers with several digits, cut anywhere by small chunks
    path = write(tmp_path, {"first": 12345, "load_history": published(loads)["load_history"], "last": -1.5e3})
    expected = load_trace_file(path, PROBLEM, window=3).windows
    monkeypatch.setattr(trace_file, "_CHUNK_CHARS", chunk)
    np.testing.assert_array_equal(load_trace_file(path, PROBLEM, window=3).windows, expected)


# --- unreadable and malformed files -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.json") == f"cannot read trace {tmp_path / 'nope.json'}: No such file or directory"


def test_directory(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path} is a directory, not a trace file"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"load_history": [], "caf\xe9": 1}')
    assert "is not UTF-8 JSON text" in error_of(path)


@pytest.mark.parametrize("text", ["", "  \n\t "])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.json"
    path.write_text(text)
    assert error_of(path) == f"{path} is empty"


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_every_truncation_is_reported_as_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(trace_file, "_CHUNK_CHARS", chunk)
    document = {"load_history": [{"logical_expert_load": [[1, 22, 3.5, -0.0], [1e3, 0, 7, 8]]}] * 2, "x": True}
    text = json.dumps(document)
    path = tmp_path / "cut.json"
    for end in range(1, len(text)):
        if not text[:end].strip():
            continue
        path.write_text(text[:end])
        message = error_of(path, window=1)
        assert message.startswith(f"{path}: the file ends inside ") and message.endswith(": it is truncated"), (
            text[:end],
            message,
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"load_history": [{"logical_expert_load": [[1, 2,, 3]]}]}',
            "invalid JSON in load_history[0] at character 49: Expecting value",
        ),
        (
            '{"load_history": [{"logical_expert_load": [[1, 2, 3, 4], [5, 6, 7, 8]]},]}',
            "invalid JSON in load_history[1] at character 72: Expecting value",
        ),
        ('{"load_history": [], }', "invalid JSON in a key of the top-level object at character 21: Expecting value"),
        ("[1, 2]", "the top level (a JSON object with a load_history key), at character 0: expected '{', found '['"),
        (
            '{"load_history": {"a": 1}}',
            "load_history (a list with one entry per inference step), at character 17: expected '[', found '{'",
        ),
        ('{"load_history": [] "x": 1}', "the top-level object, at character 20: expected ',' or '}', found '\"'"),
        ('{"load_history": []} {"more": 1}', "unexpected data after the top-level object at character 21"),
        ('{"load_history": [], "load_history": []}', 'the top-level object has "load_history" twice'),
        ('{"history": []}', 'the top-level object has no "load_history" key'),
        ("{}", 'the top-level object has no "load_history" key'),
    ],
)
def test_malformed_json_and_structure(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert error_of(path) == f"{path}: {expected}"


# --- missing keys and bad shapes ----------------------------------------------------------------------


def bad_step(tmp_path: Path, entry: object, index: int = 2) -> str:
    """The error for a history whose step `index` is `entry` and whose other steps are fine."""
    history = [{"logical_expert_load": step} for step in steps(4).tolist()]
    history[index] = entry
    return error_of(write(tmp_path, {"load_history": history}))


def test_entry_that_is_not_an_object(tmp_path: Path) -> None:
    message = bad_step(tmp_path, [[1, 2, 3, 4], [1, 2, 3, 4]])
    assert message.endswith('load_history[2] is a list, not an object with a "logical_expert_load" key')


def test_entry_without_the_load_key(tmp_path: Path) -> None:
    message = bad_step(tmp_path, {"physical_expert_load": [[1]]}, index=1)
    assert message.endswith('load_history[1] has no "logical_expert_load" key')


def test_loads_that_are_not_a_list(tmp_path: Path) -> None:
    message = bad_step(tmp_path, {"logical_expert_load": 7})
    assert message.endswith("load_history[2].logical_expert_load is a number, not a list of layers")


def test_layer_that_is_not_a_list(tmp_path: Path) -> None:
    message = bad_step(tmp_path, {"logical_expert_load": [[1, 2, 3, 4], "1,2,3,4"]})
    assert message.endswith("load_history[2].logical_expert_load[1] is a string, not a list of per-expert loads")


def test_ragged_layers(tmp_path: Path) -> None:
    message = bad_step(tmp_path, {"logical_expert_load": [[1, 2, 3, 4], [1, 2, 3]]}, index=3)
    assert message.endswith("load_history[3].logical_expert_load is ragged: layer 1 has 3 experts, layer 0 has 4")


def test_a_step_with_another_shape_than_the_others(tmp_path: Path) -> None:
    message = bad_step(tmp_path, {"logical_expert_load": [[1, 2, 3, 4]] * 3}, index=1)
    assert message.endswith("load_history[1].logical_expert_load has 3 layers, but the problem has 2")


def test_a_file_for_another_problem(tmp_path: Path) -> None:
    document = {"load_history": [{"logical_expert_load": [[1] * 8, [2] * 8]}] * 4}
    message = error_of(write(tmp_path, document))
    assert message.endswith("load_history[0].logical_expert_load has 8 experts per layer, but the problem has 4")


# --- bad values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("-1", "is -1: loads must be non-negative"),
        ("-0.5", "is -0.5: loads must be non-negative"),
        ("NaN", "is nan: loads must be numbers, not NaN"),
        ("Infinity", "is inf: loads must be finite"),
        ("-Infinity", "is -inf: loads must be finite"),
        ("1e400", "is inf: loads must be finite"),
        ("18446744073709551616", "is 18446744073709551616: loads must be at most 2**53"),
        ("9007199254740993", "is 9007199254740993: loads must be at most 2**53"),
        ("null", "is null, not a number"),
        ('"12"', "is '12' (str), not a number"),
        ("true", "is true, not a number"),
        ("false", "is false, not a number"),
        ("[1, 2]", "is [1, 2] (list), not a number"),
        ('{"a": 1}', "is {'a': 1} (dict), not a number"),
    ],
)
def test_bad_load_values_are_named_by_step_layer_and_expert(tmp_path: Path, literal: str, expected: str) -> None:
    good = "[[1, 2, 3, 4], [5, 6, 7, 8]]"
    bad = f"[[1, 2, 3, 4], [5, 6, {literal}, 8]]"
    entries = [good, good, good, bad, good]
    path = tmp_path / "values.json"
    path.write_text('{"load_history": [' + ", ".join(f'{{"logical_expert_load": {e}}}' for e in entries) + "]}")
    assert error_of(path, window=1) == f"{path}: load_history[3].logical_expert_load[1][2] {expected}"


def test_a_key_that_merely_says_true_is_no_boolean(tmp_path: Path) -> None:
    document = {"load_history": [{"logical_expert_load": step, "true_or_false": "true"} for step in steps(2).tolist()]}
    assert load_trace_file(write(tmp_path, document), PROBLEM, window=1).num_windows == 2


def test_window_sums_beyond_2_53(tmp_path: Path) -> None:
    big = np.zeros((4, 2, 4), dtype=np.int64)
    big[:, 1, 3] = 2**52 + 1
    message = error_of(write(tmp_path, published(big)), window=2)
    assert message.endswith("the load of layer 1, expert 3 summed over steps 0..1 is more than 2**53")


# --- too few windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "window", "full"), [(0, 100, 0), (150, 100, 1), (199, 100, 1), (3, 2, 1)])
def test_fewer_than_two_windows(tmp_path: Path, count: int, window: int, full: int) -> None:
    message = error_of(write(tmp_path, published(steps(count))), window=window)
    assert message.endswith(
        f"load_history has {count} steps, {full} full window(s) of {window} steps; at least 2 windows are needed "
        "(a plan is made on one window and scored on the next): use a smaller window"
    )


def test_window_must_be_positive(tmp_path: Path) -> None:
    assert "the window must be at least 1 step, got 0" in error_of(write(tmp_path, published(steps(4))), window=0)

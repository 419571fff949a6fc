"""The published trace format: `{"load_history": [{"logical_expert_load": [[...] per layer]}, ...]}`.

One entry per inference step; steps are summed into windows of `window` steps. The file is read as a
stream, one step at a time, so memory stays flat however long the history is: only a few chunks of text,
one step as Python lists, and the finished windows are held at once.
"""

from __future__ import annotations

import json
import os
import re
from typing import TextIO

import numpy as np

from evaluator.eplb.problem import Problem
from evaluator.eplb.trace import MAX_LOAD, STEPS_PER_WINDOW, Trace, TraceError, as_loads

_CHUNK_CHARS = 1 << 20
_NOT_SPACE = re.compile(r"[^ \t\n\r]")
# An error this close to the end of the text read so far may just mean that the value goes on further.
_CUT_MARGIN = 16
# What a file cut inside a number or a literal (true, NaN, -Infinity, ...) ends with.
_PARTIAL_TOKEN = re.compile(r"[\w.+-]*\s*")
_DECODER = json.JSONDecoder()


def load_trace_file(path: str | os.PathLike[str], problem: Problem, window: int = STEPS_PER_WINDOW) -> Trace:
    """Read a trace in the published format, checked against the problem's shape, summed into windows of
    `window` steps. Steps after the last full window are dropped (`Trace.dropped_steps` counts them).
    Raises TraceError, naming the file and the step, layer and expert, for anything unusable."""
    name = os.fspath(path)
    if window < 1:
        raise TraceError(f"{name}: the window must be at least 1 step, got {window}")
    try:
        with open(name, encoding="utf-8") as file:
            return _read_trace(_JsonStream(file, name), problem, window)
    except IsADirectoryError:
        raise TraceError(f"{name} is a directory, not a trace file") from None
    except UnicodeDecodeError as error:
        raise TraceError(f"{name} is not UTF-8 JSON text ({error.reason})") from None
    except OSError as error:
        raise TraceError(f"cannot read trace {name}: {error.strerror or error}") from None


def file_source(path: str) -> str:
    """A trace file's `Trace.source`: its path as given, with `./` before a bare file name, so that no file is
    recorded under the name of a built-in trace ("default", "holdout", "synthetic(seed=N)"), whose results are
    ranked, and kept secret, by that name."""
    return path if os.path.dirname(path) else os.path.join(os.curdir, path)


def _read_trace(stream: _JsonStream, problem: Problem, window: int) -> Trace:
    if stream.peek() == "":
        raise TraceError(f"{stream.path} is empty")
    stream.take("{", "the top level (a JSON object with a load_history key)")
    windows: _Windows | None = None
    separator = "" if stream.peek() == "}" else ","
    while separator == ",":
        key, _ = stream.value("a key of the top-level object")
        if not isinstance(key, str):
            raise TraceError(f"{stream.path}: a key of the top-level object is not a string")
        stream.take(":", f'the top-level key "{key}"')
        if key == "load_history":
            if windows is not None:
                raise TraceError(f'{stream.path}: the top-level object has "load_history" twice')
            windows = _read_history(stream, problem, window)
        else:
            stream.value(f'the value of the top-level key "{key}"')
        separator = stream.take(",}", "the top-level object")
    if separator == "":
        stream.take("}", "the top-level object")
    stream.expect_end()
    if windows is None:
        raise TraceError(f'{stream.path}: the top-level object has no "load_history" key')
    return windows.trace()


def _read_history(stream: _JsonStream, problem: Problem, window: int) -> _Windows:
    stream.take("[", "load_history (a list with one entry per inference step)")
    windows = _Windows(stream.path, problem, window)
    if stream.peek() == "]":
        stream.take("]", "load_history")
        return windows
    separator = ","
    while separator == ",":
        step = windows.steps
        entry, text = stream.value(f"load_history[{step}]", expected_chars=windows.largest_entry_chars)
        windows.add(_step_loads(entry, text, step, problem, stream.path), len(text))
        separator = stream.take(",]", f"load_history after entry {step}")
    return windows


def _step_loads(entry: object, text: str, step: int, problem: Problem, path: str) -> np.ndarray:
    """The [layers, experts] loads of one load_history entry, checked."""
    if not isinstance(entry, dict):
        raise TraceError(
            f'{path}: load_history[{step}] is {_kind(entry)}, not an object with a "logical_expert_load" key'
        )
    if "logical_expert_load" not in entry:
        raise TraceError(f'{path}: load_history[{step}] has no "logical_expert_load" key')
    rows = entry["logical_expert_load"]
    where = f"{path}: load_history[{step}].logical_expert_load"
    _check_shape(rows, where, problem)
    loads = _as_numbers(rows, text)
    if loads is None:
        loads = _as_objects(rows)  # slow, but only to find and name the entry that is not a number
    return as_loads(loads, lambda index: f"{where}[{index[0]}][{index[1]}]")


def _as_numbers(rows: list[list[object]], text: str) -> np.ndarray | None:
    """The rows as a numeric [layers, experts] array; None if an entry is not a number."""
    # numpy would take JSON booleans for 1 and 0; look for them only where the text has any at all
    if ("true" in text or "false" in text) and any(type(value) is bool for row in rows for value in row):
        return None
    try:
        loads = np.array(rows)
    except (ValueError, OverflowError, TypeError):
        return None
    return loads if loads.dtype.kind in "iuf" and loads.ndim == 2 else None


def _check_shape(rows: object, where: str, problem: Problem) -> None:
    if not isinstance(rows, list):
        raise TraceError(f"{where} is {_kind(rows)}, not a list of layers")
    if len(rows) != problem.num_layers:
        raise TraceError(f"{where} has {len(rows)} layers, but the problem has {problem.num_layers}")
    for layer, row in enumerate(rows):
        if not isinstance(row, list):
            raise TraceError(f"{where}[{layer}] is {_kind(row)}, not a list of per-expert loads")
    lengths = [len(row) for row in rows]
    ragged = next((layer for layer, n in enumerate(lengths) if n != lengths[0]), None)
    if ragged is not None:
        raise TraceError(
            f"{where} is ragged: layer {ragged} has {lengths[ragged]} experts, layer 0 has {lengths[0]}"
        )
    if lengths[0] != problem.num_experts:
        raise TraceError(
            f"{where} has {lengths[0]} experts per layer, but the problem has {problem.num_experts}"
        )


def _as_objects(rows: list[list[object]]) -> np.ndarray:
    loads = np.empty((len(rows), len(rows[0])), dtype=object)
    for layer, row in enumerate(rows):
        for expert, value in enumerate(row):
            loads[layer, expert] = value
    return loads


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


class _Windows:
    """Sums steps into windows as they arrive."""

    def __init__(self, path: str, problem: Problem, window: int) -> None:
        self.path, self.window = path, window
        self.steps = 0
        self.largest_entry_chars = 0
        self._done: list[np.ndarray] = []
        self._current = np.zeros((problem.num_layers, problem.num_experts), dtype=np.int64)

    def add(self, loads: np.ndarray, entry_chars: int) -> None:
        self.largest_entry_chars = max(self.largest_entry_chars, entry_chars)
        if loads.dtype != self._current.dtype:
            self._current = self._current.astype(np.result_type(loads, self._current))
        self._current += loads  # no overflow: both are at most MAX_LOAD = 2**53
        if self._current.max() > MAX_LOAD:
            layer, expert = np.unravel_index(int(np.argmax(self._current)), self._current.shape)
            first = self.steps - self.steps % self.window
            raise TraceError(
                f"{self.path}: the load of layer {layer}, expert {expert} summed over steps {first}..{self.steps} "
                "is more than 2**53"
            )
        self.steps += 1
        if self.steps % self.window == 0:
            self._done.append(self._current)
            self._current = np.zeros_like(self._current)

    def trace(self) -> Trace:
        if len(self._done) < 2:
            raise TraceError(
                f"{self.path}: load_history has {self.steps} steps, {len(self._done)} full window(s) of "
                f"{self.window} steps; at least 2 windows are needed (a plan is made on one window and scored "
                "on the next): use a smaller window"
            )
        return Trace(
            np.stack(self._done),
            source=file_source(self.path),
            steps_per_window=self.window,
            dropped_steps=self.steps % self.window,
        )


class _JsonStream:
    """One JSON document read value by value from a text file, holding only the text not yet decoded."""

    def __init__(self, file: TextIO, path: str) -> None:
        self.path = path
        self._file = file
        self._text = ""
        self._pos = 0
        self._consumed = 0  # characters before self._text
        self._end_of_file = False

    def peek(self) -> str:
        """The next character that is not white space, without taking it; "" at the end of the file."""
        while True:
            found = _NOT_SPACE.search(self._text, self._pos)
            if found:
                self._pos = found.start()
                return self._text[self._pos]
            self._pos = len(self._text)
            if not self._read_more():
                return ""

    def take(self, allowed: str, context: str) -> str:
        """Take the next character, which must be one of `allowed`."""
        char = self.peek()
        if char == "":
            raise self._ends_early(context)
        if char not in allowed:
            expected = " or ".join(repr(c) for c in allowed)
            raise TraceError(
                f"{self.path}: {context}, at character {self._offset()}: expected {expected}, found {char!r}"
            )
        self._pos += 1
        return char

    def value(self, context: str, expected_chars: int = 0) -> tuple[object, str]:
        """Decode the next JSON value; return it with its text."""
        if self.peek() == "":
            raise self._ends_early(context)
        # read ahead enough for the value, so that decoding rarely fails on a cut and starts over
        while len(self._text) - self._pos < 2 * expected_chars and self._read_more():
            pass
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._pos)
            except json.JSONDecodeError as error:
                unterminated = error.msg.startswith("Unterminated string")
                if (unterminated or error.pos >= len(self._text) - _CUT_MARGIN) and self._read_more():
                    continue
                if self._end_of_file and (unterminated or _PARTIAL_TOKEN.fullmatch(self._text, error.pos)):
                    raise self._ends_early(context) from None
                raise TraceError(
                    f"{self.path}: invalid JSON in {context} at character {self._consumed + error.pos}: {error.msg}"
                ) from None
            if end == len(self._text) and self._read_more():
                continue  # a number at the end of the text read so far may have more digits
            text = self._text[self._pos : end]
            self._pos = end
            return value, text

    def expect_end(self) -> None:
        if self.peek() != "":
            raise TraceError(
                f"{self.path}: unexpected data after the top-level object at character {self._offset()}"
            )

    def _read_more(self) -> bool:
        """Append at least a chunk (and at least as much as is pending, so retries stay linear); False at
        the end of the file."""
        if self._end_of_file:
            return False
        pending = len(self._text) - self._pos
        chunk = self._file.read(max(_CHUNK_CHARS, pending))
        if not chunk:
            self._end_of_file = True
            return False
        self._consumed += self._pos
        self._text = self._text[self._pos :] + chunk
        self._pos = 0
        return True

    def _offset(self) -> int:
        return self._consumed + self._pos

    def _ends_early(self, context: str) -> TraceError:
        return TraceError(f"{self.path}: the file ends inside {context}: it is truncated")

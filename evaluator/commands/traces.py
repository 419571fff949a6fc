"""Which trace a stored result was measured on: its label in tables and JSON, and `--trace` to keep one trace."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evaluator.commands import CommandError
from evaluator.eplb.problem import Problem
from evaluator.eplb.trace_file import load_trace_file
from evaluator.store import DEFAULT_SOURCE, HOLDOUT_SOURCE, trace_source

_DEFAULT_SHAPE = asdict(Problem())

OnTrace = Callable[[Mapping[str, Any]], bool]


def trace_label(result: Mapping[str, Any]) -> str:
    """"default", "holdout" or the trace file's path, followed by the problem shape's options that are not the
    default (`layers=4 experts=64`): results of one label were measured on comparable workloads."""
    workload = result.get("workload") or {}
    problem = workload.get("problem")
    shape = [f"{name.removeprefix('num_')}={value}" for name, value in problem.items()
             if _DEFAULT_SHAPE.get(name) != value] if isinstance(problem, dict) else []
    return " ".join([trace_source(workload), *shape])


def add_trace_argument(parser: argparse.ArgumentParser) -> None:
    """--trace default|holdout|FILE."""
    parser.add_argument("--trace", metavar=f"{DEFAULT_SOURCE}|{HOLDOUT_SOURCE}|FILE",
                        help=f"only results on this trace: the {DEFAULT_SOURCE} one (of any problem shape), held-out "
                             f"ones, or the trace file FILE (results on its data, wherever it was read from; "
                             f"./{DEFAULT_SOURCE} names a file called {DEFAULT_SOURCE})")


def on_trace(spec: str | None) -> OnTrace | None:
    """Whether a result was measured on the trace `--trace` names; None without --trace. A CommandError for a
    FILE that is not one."""
    if spec is None:
        return None
    if spec in (DEFAULT_SOURCE, HOLDOUT_SOURCE):
        return lambda result: trace_source(result.get("workload") or {}) == spec
    path = Path(spec)
    try:
        if not path.is_file():
            raise CommandError(f"--trace {spec}: neither {DEFAULT_SOURCE!r}, {HOLDOUT_SOURCE!r} nor a trace file")
        path.open("rb").close()
    except OSError as error:
        raise CommandError(f"--trace {spec}: cannot read it: {error.strerror or error}") from None
    return _TraceFile(path)


class _TraceFile:
    """Results measured on the data of a trace file, wherever it was read from: its digest as read with each stored
    result's problem shape and window length."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digests: dict[str, str | None] = {}

    def __call__(self, result: Mapping[str, Any]) -> bool:
        workload = result.get("workload") or {}
        if trace_source(workload) in (DEFAULT_SOURCE, HOLDOUT_SOURCE) or not isinstance(workload.get("problem"), dict):
            return False
        key = json.dumps([workload["problem"], workload.get("steps_per_window")], sort_keys=True)
        if key not in self._digests:
            self._digests[key] = self._digest(workload["problem"], workload.get("steps_per_window"))
        return self._digests[key] is not None and self._digests[key] == workload.get("digest")

    def _digest(self, problem: dict[str, Any], window: object) -> str | None:
        """The file's digest as read for `problem` in windows of `window` steps; None where it cannot be."""
        try:
            return load_trace_file(self.path, Problem(**problem), int(window)).digest  # type: ignore[call-overload]
        except (TypeError, ValueError):  # a TraceError too: the file is no trace of that shape and window
            return None

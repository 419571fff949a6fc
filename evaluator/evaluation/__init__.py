"""From a candidate program to scores a loop can trust: schedule, isolated run, validation, scores.

Its names are imported when first used: what needs only the settings or a result's shape (a command's options and
its `--help`) does not import torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evaluator.evaluation.evaluate import Evaluator
    from evaluator.evaluation.result import CANDIDATE_FAILURES, STATUSES, Result
    from evaluator.evaluation.settings import Settings

_MODULES = {"Evaluator": "evaluate", "Settings": "settings", "Result": "result", "CANDIDATE_FAILURES": "result",
            "STATUSES": "result"}
__all__ = ["CANDIDATE_FAILURES", "STATUSES", "Evaluator", "Result", "Settings"]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)

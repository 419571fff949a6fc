"""Turn what crossed the worker's channel into something the invariants can judge."""

from __future__ import annotations

import numpy as np
import torch

from evaluator.eplb.invariants import PlanCheck, Violation, check_plan
from evaluator.eplb.problem import Problem
from evaluator.sandbox import CallResult, Unsupported

_NAMES = ("phy2log", "log2phy", "logcnt")


def check_call(result: CallResult, problem: Problem) -> PlanCheck:
    """Every invariant of one call's outputs, plus the input-mutation check the worker reported."""
    if result.returned_type not in ("tuple", "list"):
        return PlanCheck((Violation("output.type", None, f"the candidate returned a {result.returned_type}, "
                                    "not a tuple (phy2log, log2phy, logcnt)"),))
    unsupported = [
        Violation(f"{name}.type", None, f"{name} is a {item.type_name} ({item.detail}), not a torch.Tensor")
        for name, item in zip(_NAMES, result.outputs)
        if isinstance(item, Unsupported)
    ]
    if unsupported:
        return PlanCheck(tuple(unsupported))
    outputs = [torch.from_numpy(np.ascontiguousarray(array)) for array in result.outputs]
    if result.returned_length is not None and result.returned_length != len(outputs):
        return PlanCheck((Violation("output.length", None, f"the candidate returned {result.returned_length} items, "
                                    "not the three (phy2log, log2phy, logcnt)"),))
    # Owned: the exchange's reader copied the arrays out of the shared region, so the candidate can reach none.
    check = check_plan(tuple(outputs), problem, owned=True)
    if result.input_mutated:
        mutated = Violation("input.changed", None, "the candidate modified its input tensor in place; "
                            "the load statistics belong to the caller and must be left as they were")
        return PlanCheck((*check.violations, mutated))
    return check

"""check_call: the arrays that crossed the worker's channel are judged as check_plan judges the tensors returned."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from eplb_plans import plan_outputs, random_phy2log

from evaluator.eplb.invariants import check_plan
from evaluator.eplb.problem import Problem
from evaluator.evaluation.outputs import check_call
from evaluator.sandbox import CallResult

SMALL = Problem(num_layers=4, num_experts=16, num_replicas=24, num_groups=4, num_nodes=2, num_gpus=4)

Arrays = tuple[np.ndarray, ...]


def _expert_out_of_range(phy2log: np.ndarray, log2phy: np.ndarray, logcnt: np.ndarray) -> Arrays:
    phy2log[0, 0] = SMALL.num_experts
    return phy2log, log2phy, logcnt


def _padding_made_a_slot(phy2log: np.ndarray, log2phy: np.ndarray, logcnt: np.ndarray) -> Arrays:
    log2phy[0, int(np.flatnonzero(logcnt[0] < log2phy.shape[2])[0]), -1] = 0
    return phy2log, log2phy, logcnt


DAMAGE: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], Arrays]] = {
    "none": lambda phy2log, log2phy, logcnt: (phy2log, log2phy, logcnt),
    "expert-out-of-range": _expert_out_of_range,
    "padding-made-a-slot": _padding_made_a_slot,
    "logcnt-int32": lambda phy2log, log2phy, logcnt: (phy2log, log2phy, logcnt.astype(np.int32)),
    "log2phy-narrowed": lambda phy2log, log2phy, logcnt: (phy2log, log2phy[:, :, :1].copy(), logcnt),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_the_arrays_get_the_verdict_the_tensors_get(damage: str) -> None:
    tensors = plan_outputs(random_phy2log(SMALL, seed=5), SMALL.num_experts, SMALL.max_replicas_per_expert)
    arrays = DAMAGE[damage](*(tensor.numpy().copy() for tensor in tensors))
    # as the exchange's reader leaves them: each a fresh copy of its own
    result = CallResult(1, "tuple", 3, tuple(array.copy() for array in arrays), ("cpu",) * 3, False)
    check, expected = check_call(result, SMALL), check_plan(tuple(torch.from_numpy(array) for array in arrays), SMALL)
    assert (check.violations, check.gpus_with_duplicate_expert) == (expected.violations,
                                                                    expected.gpus_with_duplicate_expert)
    assert check.valid == (damage == "none")


def test_a_valid_plan_keeps_the_arrays_copied_out_of_the_exchange_without_copying_them_again() -> None:
    tensors = plan_outputs(random_phy2log(SMALL, seed=6), SMALL.num_experts, SMALL.max_replicas_per_expert)
    result = CallResult(1, "tuple", 3, tuple(tensor.numpy().copy() for tensor in tensors), ("cpu",) * 3, False)
    plan = check_call(result, SMALL).plan
    assert plan is not None
    for array, tensor in zip(result.outputs, (plan.phy2log, plan.log2phy, plan.logcnt)):
        assert np.shares_memory(array, tensor.numpy())

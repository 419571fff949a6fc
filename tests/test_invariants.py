"""Validation of rebalance outputs: the seed's plans pass, and every corruption is named with its index."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
import torch
from eplb_plans import load_seed, lognormal_weight, plan_outputs, random_phy2log
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluator.eplb.contract import INVARIANT_IDS, INVARIANTS
from evaluator.eplb.invariants import PlanCheck, Violation, _every_value_invariant_holds, check_plan
from evaluator.eplb.problem import Problem

SEED = load_seed()

SMALL = Problem(num_layers=4, num_experts=16, num_replicas=24, num_groups=4, num_nodes=2, num_gpus=4)

SEED_SHAPES = {
    "deepseek-v3-prefill": Problem(),
    "decode-144-gpus-global": Problem(num_layers=8, num_gpus=144, num_nodes=18),
    "tiny-hierarchical": Problem(num_layers=2, num_experts=4, num_replicas=6, num_groups=2, num_nodes=1, num_gpus=2),
    "tiny-global": Problem(num_layers=3, num_experts=6, num_replicas=8, num_groups=3, num_nodes=2, num_gpus=4),
    "no-redundancy": Problem(num_layers=2, num_experts=8, num_replicas=8, num_groups=4, num_nodes=2, num_gpus=4),
    "small": SMALL,
}


def seed_outputs(problem: Problem, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return SEED.run_eplb(weight, *problem.rebalance_args())


@pytest.fixture(scope="module")
def base() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A valid plan for SMALL; tests corrupt clones of it."""
    outputs = seed_outputs(SMALL, lognormal_weight(SMALL, seed=7))
    assert check_plan(outputs, SMALL).valid
    return outputs


@pytest.fixture
def plan(base: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    phy2log, log2phy, logcnt = (tensor.clone() for tensor in base)
    return phy2log, log2phy, logcnt


def only(check: PlanCheck, invariant: str) -> Violation:
    """The single violation of `invariant` in `check`."""
    matching = [v for v in check.violations if v.invariant == invariant]
    assert len(matching) == 1, f"expected one {invariant} violation, got {check.violations}"
    return matching[0]


def ids(check: PlanCheck) -> set[str]:
    return {v.invariant for v in check.violations}


def expert_with_replicas(logcnt: torch.Tensor, layer: int, at_least: int) -> int:
    return int((logcnt[layer] >= at_least).nonzero()[0])


def slots_of(phy2log: torch.Tensor, layer: int, expert: int) -> list[int]:
    return (phy2log[layer] == expert).nonzero().flatten().tolist()


# --- valid plans -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEED_SHAPES))
def test_seed_outputs_are_valid(name: str) -> None:
    problem = SEED_SHAPES[name]
    for weight in (
        lognormal_weight(problem, seed=1),
        torch.randint(0, 1000, (problem.num_layers, problem.num_experts)),
    ):
        outputs = seed_outputs(problem, weight)
        check = check_plan(outputs, problem)
        assert check.valid, check.violations
        assert check.violations == ()
        copies = (check.plan.phy2log, check.plan.log2phy, check.plan.logcnt)
        for original, copy in zip(outputs, copies):
            assert torch.equal(original, copy)
            assert copy.is_contiguous() and copy.data_ptr() != original.data_ptr()


def test_seed_output_with_an_idle_layer_is_valid() -> None:
    weight = lognormal_weight(SMALL, seed=2)
    weight[1] = 0
    assert check_plan(seed_outputs(SMALL, weight), SMALL).valid


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_any_consistent_plan_is_valid_and_any_changed_slot_is_not(seed: int) -> None:
    outputs = plan_outputs(random_phy2log(SMALL, seed), SMALL.num_experts, SMALL.max_replicas_per_expert)
    phy2log, log2phy, logcnt = outputs
    assert check_plan((phy2log, log2phy, logcnt), SMALL).valid
    generator = torch.Generator().manual_seed(seed)
    layer, slot = (
        int(torch.randint(size, (1,), generator=generator)) for size in (SMALL.num_layers, SMALL.num_replicas)
    )
    others = [value for value in range(-2, SMALL.num_experts + 3) if value != phy2log[layer, slot]]
    broken = phy2log.clone()
    broken[layer, slot] = others[int(torch.randint(len(others), (1,), generator=generator))]
    assert not check_plan((broken, log2phy, logcnt), SMALL).valid


def contract_holds(phy2log: torch.Tensor, log2phy: torch.Tensor, logcnt: torch.Tensor, problem: Problem) -> bool:
    """The rebalancer contract's value invariants, read literally, one entry at a time."""
    experts, replicas = problem.num_experts, problem.num_replicas
    for layer in range(problem.num_layers):
        placed = phy2log[layer].tolist()
        if any(not 0 <= expert < experts for expert in placed):
            return False
        listed = []
        for expert in range(experts):
            count, row = int(logcnt[layer, expert]), log2phy[layer, expert].tolist()
            if count < 1 or count != placed.count(expert) or count > len(row):
                return False
            if any(value != -1 for value in row[count:]):
                return False
            if any(not 0 <= slot < replicas or placed[slot] != expert for slot in row[:count]):
                return False
            listed += row[:count]
        if sorted(listed) != list(range(replicas)):
            return False
    return True


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), edits=st.integers(0, 3), drop_an_expert=st.booleans())
def test_the_verdict_on_a_changed_plan_is_the_contracts(seed: int, edits: int, drop_an_expert: bool) -> None:
    """Values set anywhere, entries swapped or copied within a row, a slot listed twice, slots swapped, an extreme
    value, the table narrowed, an expert dropped from an otherwise consistent plan: a plan is valid exactly when
    every invariant, read literally, holds, and the few passes that judge it first say so exactly too."""
    placement = random_phy2log(SMALL, seed)
    if drop_an_expert:
        placement[0][placement[0] == 0] = 1
    phy2log, log2phy, logcnt = (tensor.clone() for tensor in plan_outputs(
        placement, SMALL.num_experts, SMALL.max_replicas_per_expert))
    generator = torch.Generator().manual_seed(seed)

    def pick(size: int) -> int:
        return int(torch.randint(size, (1,), generator=generator))

    layers, experts, width = log2phy.shape
    for _ in range(edits):
        layer, kind = pick(layers), pick(9)
        if kind == 0:
            phy2log[layer, pick(SMALL.num_replicas)] = pick(experts + 4) - 2
        elif kind == 1:
            logcnt[layer, pick(experts)] = pick(5) - 1
        elif kind == 2:
            log2phy[layer, pick(experts), pick(log2phy.shape[2])] = pick(SMALL.num_replicas + 4) - 2
        elif kind == 3:  # within one expert's row: valid between listed entries, invalid with padding
            expert, first, second = pick(experts), pick(log2phy.shape[2]), pick(log2phy.shape[2])
            log2phy[layer, expert, [first, second]] = log2phy[layer, expert, [second, first]]
        elif kind == 4:  # two slots' experts swapped in phy2log alone
            first, second = pick(SMALL.num_replicas), pick(SMALL.num_replicas)
            phy2log[layer, [first, second]] = phy2log[layer, [second, first]]
        elif kind == 5:  # one entry copied over another of the same row: a slot listed twice, or padding moved
            expert, first, second = pick(experts), pick(log2phy.shape[2]), pick(log2phy.shape[2])
            log2phy[layer, expert, first] = log2phy[layer, expert, second]
        elif kind == 6:  # an expert's second slot listed as its first again: a slot twice, another nowhere
            replicated = (logcnt[layer] >= 2).nonzero().flatten().tolist()
            if replicated and log2phy.shape[2] >= 2:
                expert = replicated[pick(len(replicated))]
                log2phy[layer, expert, 1] = log2phy[layer, expert, 0]
        elif kind == 7:  # an extreme value anywhere: no sum, product or offset of the checks may wrap around
            tensor = (phy2log, log2phy, logcnt)[pick(3)]
            tensor.view(-1)[pick(tensor.numel())] = (-2**63, 2**63 - 1, 2**62)[pick(3)]
        else:
            log2phy = log2phy[:, :, :1 + pick(log2phy.shape[2])].contiguous()
    holds = contract_holds(phy2log, log2phy, logcnt, SMALL)
    assert check_plan((phy2log, log2phy, logcnt), SMALL).valid == holds
    assert _every_value_invariant_holds(phy2log, log2phy, logcnt, SMALL) == holds  # exact, not only never wrong


def test_list_and_namedtuple_containers_are_accepted(plan: tuple[torch.Tensor, ...]) -> None:
    Outputs = collections.namedtuple("Outputs", "phy2log log2phy logcnt")
    assert check_plan(list(plan), SMALL).valid
    assert check_plan(Outputs(*plan), SMALL).valid


def test_non_contiguous_and_broadcast_tensors_are_read_correctly(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    transposed_twice = phy2log.t().contiguous().t()
    assert not transposed_twice.is_contiguous()
    assert check_plan((transposed_twice, log2phy, logcnt), SMALL).valid
    # One layer's plan broadcast to every layer: stride 0, valid, and copied into real memory.
    shared = tuple(tensor[:1].expand(SMALL.num_layers, *tensor.shape[1:]) for tensor in plan)
    check = check_plan(shared, SMALL)
    assert check.valid
    assert check.plan.phy2log.stride() == (SMALL.num_replicas, 1)


def test_plan_is_a_private_copy(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log = plan[0]
    check = check_plan(plan, SMALL)
    expected = phy2log.clone()
    phy2log.fill_(0)
    assert torch.equal(check.plan.phy2log, expected)


def test_an_owned_tensor_is_kept_where_it_needs_no_copy(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    transposed_twice = log2phy.transpose(0, 1).contiguous().transpose(0, 1)
    check = check_plan((phy2log, transposed_twice, logcnt), SMALL, owned=True)
    assert check.valid
    assert check.plan.phy2log.data_ptr() == phy2log.data_ptr() and check.plan.logcnt.data_ptr() == logcnt.data_ptr()
    assert check.plan.log2phy.is_contiguous() and torch.equal(check.plan.log2phy, log2phy)


def test_gpus_with_duplicate_expert_counts_layer_gpu_pairs() -> None:
    problem = Problem(num_layers=3, num_experts=3, num_replicas=6, num_groups=1, num_nodes=1, num_gpus=2)
    # 3 slots per GPU. Layer 0: GPU 0 holds expert 0 twice. Layer 1: none. Layer 2: both GPUs, GPU 0 thrice.
    phy2log = torch.tensor([[0, 0, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 2, 2]])
    check = check_plan(plan_outputs(phy2log, 3, problem.max_replicas_per_expert), problem)
    assert check.valid
    assert check.gpus_with_duplicate_expert == 3


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), experts_used=st.integers(1, SMALL.num_experts))
def test_gpus_with_duplicate_expert_is_the_literal_count(seed: int, experts_used: int) -> None:
    """Layer-GPU pairs whose slots hold fewer distinct experts than slots, counted one by one."""
    problem = Problem(num_layers=4, num_experts=experts_used, num_replicas=SMALL.num_replicas, num_groups=1,
                      num_nodes=1, num_gpus=SMALL.num_gpus)
    phy2log = random_phy2log(problem, seed)
    check = check_plan(plan_outputs(phy2log, experts_used, problem.max_replicas_per_expert), problem)
    per_gpu = phy2log.view(problem.num_layers, problem.num_gpus, problem.slots_per_gpu).tolist()
    assert check.gpus_with_duplicate_expert == sum(len(set(slots)) < len(slots) for gpus in per_gpu for slots in gpus)


def test_gpus_with_duplicate_expert_is_absent_when_invalid(plan: tuple[torch.Tensor, ...]) -> None:
    check = check_plan((plan[0], plan[1], plan[2] + 1), SMALL)
    assert not check.valid
    assert check.plan is None and check.gpus_with_duplicate_expert is None


# --- the container -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("outputs", [None, 42, "phy2log", {"phy2log": 1}], ids=["None", "int", "str", "dict"])
def test_output_that_is_no_sequence(outputs: object) -> None:
    violation = only(check_plan(outputs, SMALL), "output.type")
    assert violation.index is None
    expected = "None" if outputs is None else f"a {type(outputs).__name__}"
    assert f"returned {expected}, not a tuple" in violation.message


@pytest.mark.parametrize("length", [0, 2, 4])
def test_output_with_wrong_length(plan: tuple[torch.Tensor, ...], length: int) -> None:
    outputs = (plan * 2)[:length]
    violation = only(check_plan(outputs, SMALL), "output.length")
    assert f"{length} items" in violation.message


def test_tuple_subclass_cannot_lie_about_its_contents(plan: tuple[torch.Tensor, ...]) -> None:
    class Lying(tuple):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: object) -> object:
            raise AssertionError("the validator must not call an overridden __getitem__")

    assert only(check_plan(Lying(plan[:2]), SMALL), "output.length")
    assert check_plan(Lying(plan), SMALL).valid


# --- structure of each tensor ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int32, torch.float32, torch.uint8])
def test_wrong_dtype(plan: tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
    phy2log, log2phy, logcnt = plan
    violation = only(check_plan((phy2log.to(dtype), log2phy, logcnt), SMALL), "phy2log.dtype")
    assert violation.index is None and str(dtype) in violation.message


def test_float_with_nan_and_grad(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    hostile = logcnt.double()
    hostile[0, 0] = float("nan")
    hostile.requires_grad_()
    check = check_plan((phy2log, log2phy, hostile), SMALL)
    assert ids(check) == {"logcnt.dtype"}


@pytest.mark.parametrize(
    "name, reshape",
    [
        ("phy2log", lambda t: t[:, :-1]),
        ("phy2log", lambda t: t.flatten()),
        ("phy2log", lambda t: t[:-1]),
        ("logcnt", lambda t: t.t()),
        ("log2phy", lambda t: t[:, :, 0]),
    ],
    ids=["phy2log-slot-short", "phy2log-1d", "phy2log-layer-short", "logcnt-transposed", "log2phy-2d"],
)
def test_wrong_shape(plan: tuple[torch.Tensor, ...], name: str, reshape) -> None:
    outputs = dict(zip(("phy2log", "log2phy", "logcnt"), plan))
    outputs[name] = reshape(outputs[name])
    violation = only(check_plan(tuple(outputs.values()), SMALL), f"{name}.shape")
    assert str(list(outputs[name].shape)) in violation.message


def test_log2phy_wider_than_any_expert_can_use(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    padded = torch.cat([log2phy, torch.full_like(log2phy[:, :, :1], -1)], dim=2)
    violation = only(check_plan((phy2log, padded, logcnt), SMALL), "log2phy.shape")
    assert f"X <= {SMALL.max_replicas_per_expert}" in violation.message


def test_log2phy_narrower_but_holding_every_replica_is_valid(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    width = int(logcnt.max())
    assert width < SMALL.max_replicas_per_expert
    assert check_plan((phy2log, log2phy[:, :, :width].clone(), logcnt), SMALL).valid


def test_log2phy_too_narrow_for_an_expert(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    width = int(logcnt.max()) - 1
    violation = only(check_plan((phy2log, log2phy[:, :, :width], logcnt), SMALL), "log2phy.width")
    first = tuple((logcnt > width).nonzero()[0].tolist())
    assert violation.index == first


@pytest.mark.parametrize("as_what", ["list", "numpy"])
def test_containers_instead_of_tensors(plan: tuple[torch.Tensor, ...], as_what: str) -> None:
    convert = (lambda t: t.tolist()) if as_what == "list" else (lambda t: t.numpy())
    check = check_plan(tuple(convert(tensor) for tensor in plan), SMALL)
    assert ids(check) == {"phy2log.type", "log2phy.type", "logcnt.type"}
    expected = "list" if as_what == "list" else "numpy.ndarray"
    assert f"is a {expected}, not a torch.Tensor" in only(check, "phy2log.type").message


def test_tensor_subclass_is_refused_without_running_its_code(plan: tuple[torch.Tensor, ...]) -> None:
    calls = []

    class Sneaky(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            calls.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    phy2log, log2phy, logcnt = plan
    sneaky = phy2log.as_subclass(Sneaky)
    calls.clear()
    violation = only(check_plan((sneaky, log2phy, logcnt), SMALL), "phy2log.type")
    assert "subclass of torch.Tensor" in violation.message and "Sneaky" in violation.message
    assert calls == []
    parameter = torch.nn.Parameter(logcnt, requires_grad=False)
    assert only(check_plan((phy2log, log2phy, parameter), SMALL), "logcnt.type")


def test_methods_planted_on_a_plain_tensor_are_ignored(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    fake = torch.zeros_like(phy2log)
    for method in ("to", "clone", "detach", "contiguous", "stride", "storage_offset", "untyped_storage"):
        setattr(phy2log, method, lambda *args, **kwargs: fake)
    check = check_plan((phy2log, log2phy, logcnt), SMALL)
    assert check.valid
    assert torch.equal(check.plan.phy2log, torch.Tensor.clone(phy2log))


def test_absurd_size_is_refused_without_allocating(plan: tuple[torch.Tensor, ...]) -> None:
    _, log2phy, logcnt = plan
    # 10^10 elements claimed by a stride-0 view of one element: reading it would need 80 GB.
    huge = torch.zeros(1, dtype=torch.int64).expand(100_000, 100_000)
    assert only(check_plan((huge, log2phy, logcnt), SMALL), "phy2log.shape")
    on_meta = torch.empty(10**10, dtype=torch.int64, device="meta")
    assert "meta" in only(check_plan((on_meta, log2phy, logcnt), SMALL), "phy2log.device").message


def test_tensor_whose_storage_was_shrunk_is_refused(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    hollow = phy2log.clone()
    hollow.untyped_storage().resize_(8)  # reading the shape's 768 bytes would go out of bounds
    violation = only(check_plan((hollow, log2phy, logcnt), SMALL), "phy2log.storage")
    assert "8 bytes" in violation.message


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_sparse_and_nested_tensors_are_refused(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    assert only(check_plan((phy2log.to_sparse(), log2phy, logcnt), SMALL), "phy2log.layout")
    nested = torch.nested.nested_tensor([logcnt[0], logcnt[1, :3]])
    assert only(check_plan((phy2log, log2phy, nested), SMALL), "logcnt.layout")
    jagged = torch.nested.nested_tensor([logcnt[0], logcnt[1, :3]], layout=torch.jagged)
    assert only(check_plan((phy2log, log2phy, jagged), SMALL), "logcnt.type")


# --- values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, SMALL.num_experts, 2**62])
def test_phy2log_out_of_range(plan: tuple[torch.Tensor, ...], value: int) -> None:
    phy2log, log2phy, logcnt = plan
    phy2log[2, 5] = value
    violation = only(check_plan((phy2log, log2phy, logcnt), SMALL), "phy2log.range")
    assert violation.index == (2, 5)
    assert f"phy2log[2, 5] = {value}" in violation.message


def test_dropped_expert(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    layer = 1
    dropped = int((logcnt[layer] == 1).nonzero()[0])
    other = (dropped + 1) % SMALL.num_experts
    phy2log[layer, slots_of(phy2log, layer, dropped)] = other
    violation = only(check_plan((phy2log, log2phy, logcnt), SMALL), "phy2log.coverage")
    assert violation.index == (layer, dropped)
    assert f"expert {dropped} of layer {layer} has no slot" in violation.message


def test_logcnt_below_one(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    logcnt[3, 9] = 0
    violation = only(check_plan((phy2log, log2phy, logcnt), SMALL), "logcnt.min")
    assert violation.index == (3, 9)


def test_logcnt_with_wrong_sum(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    logcnt[2, 0] += 1
    violation = only(check_plan((phy2log, log2phy, logcnt), SMALL), "logcnt.sum")
    assert violation.index == (2,)
    assert f"sums to {SMALL.num_replicas + 1}" in violation.message


def test_logcnt_that_lies_with_the_right_sum(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    layer = 2
    rich = expert_with_replicas(logcnt, layer, at_least=2)
    poor = int((logcnt[layer] == 1).nonzero()[0])
    logcnt[layer, rich] -= 1
    logcnt[layer, poor] += 1
    check = check_plan((phy2log, log2phy, logcnt), SMALL)
    assert "logcnt.sum" not in ids(check)
    violation = only(check, "phy2log.bincount")
    first = min(rich, poor)
    assert violation.index == (layer, first)
    slots = ", ".join(map(str, slots_of(phy2log, layer, first)))
    holds = len(slots_of(phy2log, layer, first))
    assert violation.message.startswith(
        f"logcnt[{layer}, {first}] = {int(logcnt[layer, first])} but phy2log[{layer}] holds expert {first} "
        f"in {holds} slot"
    )
    assert f"({slots})" in violation.message


def test_log2phy_slot_of_another_expert(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    layer, first, second = 1, 3, 11
    swapped = log2phy[layer, [second, first], 0]
    log2phy[layer, [first, second], 0] = swapped
    check = check_plan((phy2log, log2phy, logcnt), SMALL)
    assert ids(check) == {"log2phy.slot"}
    violation = only(check, "log2phy.slot")
    assert violation.index == (layer, first, 0)
    slot = int(log2phy[layer, first, 0])
    assert f"phy2log[{layer}, {slot}] = {second}, not {first}" in violation.message


def test_log2phy_duplicate_slot(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    layer = 3
    expert = expert_with_replicas(logcnt, layer, at_least=2)
    lost = int(log2phy[layer, expert, 1])
    log2phy[layer, expert, 1] = log2phy[layer, expert, 0]
    check = check_plan((phy2log, log2phy, logcnt), SMALL)
    assert ids(check) == {"log2phy.duplicate", "log2phy.missing_slot"}
    assert only(check, "log2phy.duplicate").index == (layer, expert, 1)
    assert only(check, "log2phy.missing_slot").index == (layer, lost)


def test_log2phy_padding_that_is_not_minus_one(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    layer, expert = 0, 6
    count = int(logcnt[layer, expert])
    log2phy[layer, expert, count] = 5
    check = check_plan((phy2log, log2phy, logcnt), SMALL)
    assert ids(check) == {"log2phy.padding"}
    assert only(check, "log2phy.padding").index == (layer, expert, count)


def test_log2phy_missing_slot(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    layer = 2
    expert = expert_with_replicas(logcnt, layer, at_least=2)
    last = int(logcnt[layer, expert]) - 1
    lost = int(log2phy[layer, expert, last])
    log2phy[layer, expert, last] = -1
    check = check_plan((phy2log, log2phy, logcnt), SMALL)
    assert ids(check) == {"log2phy.missing_slot", "log2phy.range"}
    assert only(check, "log2phy.missing_slot").index == (layer, lost)
    assert only(check, "log2phy.range").index == (layer, expert, last)


def test_log2phy_slot_out_of_range(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    log2phy[1, 4, 0] = SMALL.num_replicas
    violation = only(check_plan((phy2log, log2phy, logcnt), SMALL), "log2phy.range")
    assert violation.index == (1, 4, 0)
    assert f"not a slot in [0, {SMALL.num_replicas})" in violation.message


def test_replica_counts_whose_sum_wraps_around_are_refused(plan: tuple[torch.Tensor, ...]) -> None:
    """Four counts each raised by 2**62 leave an int64 sum of them unchanged: no check may trust it."""
    phy2log, log2phy, logcnt = plan
    logcnt[0, :4] += 2**62
    assert not _every_value_invariant_holds(phy2log, log2phy, logcnt, SMALL)
    assert {"log2phy.width", "phy2log.bincount"} <= ids(check_plan((phy2log, log2phy, logcnt), SMALL))


def test_negative_slots_are_refused_even_where_they_would_wrap_to_a_slot_of_their_expert(
        plan: tuple[torch.Tensor, ...]) -> None:
    """An expert's first slot in the first layer and in the last, made negative so that, read as offsets from the
    end of (or into) all layers' slots together, they would trade places: each would name a slot of its expert."""
    phy2log, log2phy, logcnt = plan
    layers, replicas = phy2log.shape
    expert = next(e for e in range(SMALL.num_experts) if log2phy[-1, e, 0] != replicas - 1)  # -1 would be padding
    first, last = int(log2phy[0, expert, 0]), int(log2phy[-1, expert, 0])
    log2phy[0, expert, 0] = last - replicas
    log2phy[-1, expert, 0] = first - (layers - 1) * replicas
    assert not _every_value_invariant_holds(phy2log, log2phy, logcnt, SMALL)
    assert "log2phy.range" in ids(check_plan((phy2log, log2phy, logcnt), SMALL))


def test_garbage_reports_at_most_one_violation_per_invariant() -> None:
    generator = torch.Generator().manual_seed(3)
    garbage = (
        torch.randint(-3, 40, (SMALL.num_layers, SMALL.num_replicas), generator=generator),
        torch.randint(
            -3, 40, (SMALL.num_layers, SMALL.num_experts, SMALL.max_replicas_per_expert), generator=generator
        ),
        torch.randint(-1, 4, (SMALL.num_layers, SMALL.num_experts), generator=generator),
    )
    check = check_plan(garbage, SMALL)
    assert len(check.violations) == len(ids(check)) >= 8
    assert all(v.index is not None and "more like it" in v.message for v in check.violations)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_on_mixed_devices_are_checked_on_one(plan: tuple[torch.Tensor, ...]) -> None:
    phy2log, log2phy, logcnt = plan
    mixed = (phy2log.cuda(), log2phy, logcnt.cuda())
    on_gpu = check_plan(mixed, SMALL)
    assert on_gpu.valid and on_gpu.plan.log2phy.device.type == "cuda"
    on_cpu = check_plan(mixed, SMALL, device="cpu")
    assert on_cpu.valid and on_cpu.plan.phy2log.device.type == "cpu"
    broken = logcnt.cuda()
    broken[1, 2] = 0
    assert only(check_plan((phy2log.cuda(), log2phy.cuda(), broken), SMALL), "logcnt.min").index == (1, 2)


# --- the registry: every invariant on the values is refused by both paths ------------------------------------


def _break_coverage(phy2log, log2phy, logcnt):
    expert = int((logcnt[0] == 1).nonzero()[0])  # its one slot given to the next expert leaves it none
    phy2log[0, slots_of(phy2log, 0, expert)[0]] = (expert + 1) % SMALL.num_experts


def _break_bincount(phy2log, log2phy, logcnt):
    more = expert_with_replicas(logcnt, 0, 2)
    logcnt[0, more] -= 1
    logcnt[0, (more + 1) % SMALL.num_experts] += 1


def _break_padding(phy2log, log2phy, logcnt):
    expert = int((logcnt[0] < log2phy.shape[2]).nonzero()[0])
    log2phy[0, expert, -1] = 0


def _break_duplicate(phy2log, log2phy, logcnt):
    expert = expert_with_replicas(logcnt, 0, 2)
    log2phy[0, expert, 1] = log2phy[0, expert, 0]


BREAKERS = {  # each damages a valid plan of SMALL, in place, so that the invariant named is broken
    "phy2log.range": lambda phy2log, log2phy, logcnt: phy2log.__setitem__((0, 0), SMALL.num_experts),
    "phy2log.coverage": _break_coverage,
    "logcnt.min": lambda phy2log, log2phy, logcnt: logcnt.__setitem__((0, 0), 0),
    "logcnt.sum": lambda phy2log, log2phy, logcnt: logcnt.__setitem__((0, 0), logcnt[0, 0] + 1),
    "phy2log.bincount": _break_bincount,
    "log2phy.width": lambda phy2log, log2phy, logcnt: logcnt.__setitem__((0, 0), log2phy.shape[2] + 1),
    "log2phy.padding": _break_padding,
    "log2phy.range": lambda phy2log, log2phy, logcnt: log2phy.__setitem__((0, 0, 0), SMALL.num_replicas),
    "log2phy.slot": lambda phy2log, log2phy, logcnt: log2phy.__setitem__(
        (0, 0, 0), int((phy2log[0] != 0).nonzero()[0])),
    "log2phy.duplicate": _break_duplicate,
    "log2phy.missing_slot": _break_duplicate,  # a slot listed twice leaves another listed nowhere
}


def test_every_invariant_on_the_values_has_a_test_that_breaks_it():
    assert set(BREAKERS) == {invariant.id for invariant in INVARIANTS if invariant.on_values}


@pytest.mark.parametrize("invariant", sorted(BREAKERS))
def test_each_invariant_on_the_values_is_refused_by_both_paths(plan, invariant):
    """The few passes that judge a plan first refuse it, and the checks that name violations name this one."""
    phy2log, log2phy, logcnt = plan
    BREAKERS[invariant](phy2log, log2phy, logcnt)
    assert not _every_value_invariant_holds(phy2log, log2phy, logcnt, SMALL)
    assert invariant in ids(check_plan((phy2log, log2phy, logcnt), SMALL))


def test_a_violation_of_no_registered_invariant_is_refused():
    with pytest.raises(ValueError, match="no invariant of the contract"):
        Violation("plan.too_clever", None, "made up")
    assert {name for name in INVARIANT_IDS if name.endswith(".dtype")} == {"phy2log.dtype", "log2phy.dtype",
                                                                          "logcnt.dtype"}


def test_the_docs_table_is_the_registry():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "validation-and-scoring.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \| (.+) \|$", docs, flags=re.MULTILINE)
    assert [(name, where.strip(), meaning.strip()) for name, where, meaning in rows] == [
        (invariant.id, invariant.index_into, invariant.meaning) for invariant in INVARIANTS]

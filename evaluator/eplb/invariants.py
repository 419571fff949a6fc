"""Prove a rebalance output valid: every invariant of the rebalancer contract, checked in the evaluator process.

What the candidate returned is untrusted and may be any object. The checks run
in three stages, each only when the one before passed, so no check indexes with
a value it has not vetted and nothing is allocated for a size it has not seen:

1. the container: a tuple or list of exactly three items;
2. each tensor's structure: a plain `torch.Tensor` (never a subclass), dense,
   on CPU or CUDA, int64, the contract's shape, with storage that really holds
   that shape. No data is read before this passes, so a tensor claiming 10^10
   elements is refused at no cost;
3. the values, vectorised over all layers and experts at once, on private copies
   of the tensors (on one device; the first passes in numpy, on CPU).

Each invariant (an entry of contract.py) reports at most one violation: its first offending index in
row-major order, and how many entries break it.

Width of log2phy: X may be anything from 1 to `problem.max_replicas_per_expert`
(R - E + 1, the seed's width) as long as every expert's replicas fit
(X >= max logcnt, invariant "log2phy.width"). A narrower table loses nothing; a
wider one could only ever hold padding, since no expert can have more than
R - E + 1 replicas, so it is a shape violation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from evaluator.eplb.contract import OUTPUT_NAMES, Violation
from evaluator.eplb.plan import Plan
from evaluator.eplb.problem import Problem

_LISTED = 8  # positions a message names before it only counts them
_READABLE_DEVICES = ("cpu", "cuda")

ShapeSpec = tuple["int | range", ...]


@dataclass(frozen=True)
class PlanCheck:
    """The verdict on one rebalance output.

    `plan` holds private, validated copies of the tensors, or None when invalid.
    `gpus_with_duplicate_expert` (None when invalid) counts the (layer l, GPU g)
    pairs whose slots g*S .. (g+1)*S-1 of phy2log[l] (S = slots per GPU) hold
    some logical expert more than once. That is legal, but the GPU then serves
    the expert's traffic through two slots where one would do and the other
    could have held another expert: a report, never a violation.
    """

    violations: tuple[Violation, ...]
    plan: Plan | None = None
    gpus_with_duplicate_expert: int | None = None

    @property
    def valid(self) -> bool:
        return not self.violations


def check_plan(outputs: object, problem: Problem, device: torch.device | str | None = None, *,
               owned: bool = False) -> PlanCheck:
    """Check every invariant of `outputs`, what `rebalance_experts` returned for `problem`.

    Values are checked, and the plan kept, on `device`, by default the device phy2log is on (the first passes run
    on CPU, whatever the device). With `owned`, the caller vouches that the tensors are its own copies, which
    nothing the candidate holds can reach (check_call's, copied out of the exchange): those already contiguous on
    `device` become the plan's without being copied again.
    """
    items, container_violation = _unpack_outputs(outputs)
    if container_violation is not None:
        return PlanCheck((container_violation,))
    layers, experts, replicas = problem.num_layers, problem.num_experts, problem.num_replicas
    shapes: tuple[ShapeSpec, ...] = (
        (layers, replicas),
        (layers, experts, range(1, problem.max_replicas_per_expert + 1)),
        (layers, experts),
    )
    tensors, structural = [], []
    for item, name, shape in zip(items, OUTPUT_NAMES, shapes):
        tensor, found = _vet_tensor(item, name, torch.int64, shape)
        tensors.append(tensor)
        structural.extend(found)
    if structural:
        return PlanCheck(tuple(structural))
    target = torch.device(device) if device is not None else tensors[0].device
    phy2log, log2phy, logcnt = (_private(tensor, target, owned) for tensor in tensors)
    if not _every_value_invariant_holds(phy2log, log2phy, logcnt, problem):
        violations = _expert_count_violations(phy2log, logcnt, problem) + _log2phy_violations(phy2log, log2phy, logcnt)
        if violations:
            return PlanCheck(tuple(violations))
    return PlanCheck((), Plan(phy2log, log2phy, logcnt), _gpus_with_duplicate_expert(phy2log, problem))


def _unpack_outputs(outputs: object) -> tuple[tuple[object, ...], Violation | None]:
    # Read through the base class: a subclass could override __len__ or __getitem__.
    kind = type(outputs)
    base: type[tuple] | type[list]
    if issubclass(kind, tuple):
        base = tuple
    elif issubclass(kind, list):
        base = list
    else:
        return (), Violation(
            "output.type",
            None,
            f"the candidate returned {_describe(outputs)}, not a tuple (phy2log, log2phy, logcnt)",
        )
    length = base.__len__(outputs)
    if length != len(OUTPUT_NAMES):
        return (), Violation(
            "output.length",
            None,
            f"the candidate returned a {base.__name__} of {length} items, not the three (phy2log, log2phy, logcnt)",
        )
    return tuple(base.__getitem__(outputs, i) for i in range(length)), None


def _vet_tensor(
    item: object, name: str, dtype: torch.dtype, shape: ShapeSpec
) -> tuple[torch.Tensor | None, list[Violation]]:
    """Return a fresh handle on `item` if it is a readable tensor of `dtype` and `shape`, else the violations."""
    if type(item) is not torch.Tensor:
        if issubclass(type(item), torch.Tensor):
            message = (
                f"{name} is a {_type_name(item)}, a subclass of torch.Tensor; only a plain torch.Tensor is "
                "accepted because a subclass can change what the checks see"
            )
        else:
            message = f"{name} is {_describe(item)}, not a torch.Tensor"
        return None, [Violation(f"{name}.type", None, message)]
    # A new Python object on the same data: methods or attributes set on the candidate's object stay behind.
    tensor = torch.Tensor.detach(item)
    if tensor.is_nested or tensor.layout != torch.strided:
        layout = "nested" if tensor.is_nested else str(tensor.layout)
        return None, [Violation(f"{name}.layout", None, f"{name} has layout {layout}, but a dense tensor is required")]
    if tensor.device.type not in _READABLE_DEVICES:
        return None, [
            Violation(f"{name}.device", None, f"{name} is on device '{tensor.device}', which holds no readable data")
        ]
    found = []
    if tensor.dtype != dtype:
        found.append(Violation(f"{name}.dtype", None, f"{name} has dtype {tensor.dtype}, but it must be {dtype}"))
    if not _shape_matches(tuple(tensor.shape), shape):
        found.append(
            Violation(
                f"{name}.shape", None, f"{name} has shape {list(tensor.shape)}, but it must be {_format_shape(shape)}"
            )
        )
    elif not _storage_holds(tensor):
        found.append(
            Violation(
                f"{name}.storage",
                None,
                f"{name} has shape {list(tensor.shape)} but its storage holds only "
                f"{tensor.untyped_storage().nbytes()} bytes",
            )
        )
    return (None if found else tensor), found


def _shape_matches(actual: tuple[int, ...], spec: ShapeSpec) -> bool:
    return len(actual) == len(spec) and all(
        size in want if isinstance(want, range) else size == want for size, want in zip(actual, spec)
    )


def _format_shape(spec: ShapeSpec) -> str:
    sizes = ", ".join("X" if isinstance(want, range) else str(want) for want in spec)
    bounds = [f" with {want.start} <= X <= {want.stop - 1}" for want in spec if isinstance(want, range)]
    return f"[{sizes}]" + "".join(bounds)


def _storage_holds(tensor: torch.Tensor) -> bool:
    # A tensor whose storage was shrunk after it was made reads out of bounds (and can crash the process).
    if tensor.numel() == 0:
        return True
    last = tensor.storage_offset() + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return (last + 1) * tensor.element_size() <= tensor.untyped_storage().nbytes()


def _private(tensor: torch.Tensor, device: torch.device, owned: bool) -> torch.Tensor:
    """`tensor` contiguous on `device`, in memory of its own: the candidate keeps no handle that could change it after
    the check. An `owned` tensor is copied only where it must move or be made contiguous (`to` and `contiguous`
    return the tensor itself where it needs neither)."""
    if owned:
        return tensor.to(device).contiguous()
    return tensor.to(device=device, copy=True, memory_format=torch.contiguous_format)


def _every_value_invariant_holds(phy2log: torch.Tensor, log2phy: torch.Tensor, logcnt: torch.Tensor,
                                 problem: Problem) -> bool:
    """Whether the plan is valid, in a few passes over log2phy's entries that list slots (and one over all of it)
    rather than the many over all of it that naming each violation takes. False only sends the plan to the checks
    that name the violations, which decide.

    In numpy on CPU: torch spends more on each operation on tensors this small than the work itself, and there are
    a dozen. The entries that logcnt makes slots are gathered into one flat, row-major list, so every operation runs
    over one long array rather than over the many short rows of log2phy.

    Enough: if 1 <= logcnt <= X, the listed entries are slots in [0, R) held by their expert, there are L * R of
    them covering every slot (so each slot is listed once), and the -1s in log2phy are as many as the entries
    left (so, with no listed entry -1, every one of those is padding -1), then expert e holds exactly the
    logcnt[e] slots it lists: logcnt is the bincount of phy2log, sums to R, and places every expert. The order
    matters on hostile values: logcnt is bounded before it is summed (no sum wraps around) and the slots before
    they are offset and indexed with (no negative index reaches from the end).
    """
    phy2log, log2phy, logcnt = (tensor.cpu().numpy() for tensor in (phy2log, log2phy, logcnt))
    layers, experts, width = log2phy.shape
    replicas = problem.num_replicas
    counts = logcnt.reshape(-1)  # replicas of each (layer, expert) row of log2phy
    listed = layers * replicas
    if counts.min() < 1 or counts.max() > width or counts.sum() != listed:
        return False
    if np.count_nonzero(log2phy == -1) != log2phy.size - listed:
        return False
    rows = np.repeat(np.arange(layers * experts), counts)  # the row of each listed entry
    row_starts = np.cumsum(counts) - counts  # where each row's entries begin in the flat list
    slots = log2phy.reshape(-1)[rows * width + np.arange(listed) - row_starts[rows]]
    if slots.min() < 0 or slots.max() >= replicas:
        return False
    layer_slots = slots + rows // experts * replicas  # slot p of layer l as l * R + p
    if not np.array_equal(phy2log.reshape(-1)[layer_slots], rows % experts):
        return False
    covered = np.zeros(listed, dtype=bool)
    covered[layer_slots] = True
    return bool(covered.all())


def _expert_count_violations(phy2log: torch.Tensor, logcnt: torch.Tensor, problem: Problem) -> list[Violation]:
    """phy2log ids in range, every expert placed, logcnt >= 1, sum = R, and logcnt = bincount(phy2log)."""
    experts, replicas = problem.num_experts, problem.num_replicas
    out_of_range = (phy2log < 0) | (phy2log >= experts)
    # holds[l, e]: slots of layer l that hold expert e (out-of-range ids count nowhere).
    holds = torch.zeros_like(logcnt).scatter_add_(1, phy2log.clamp(0, experts - 1), (~out_of_range).to(torch.int64))
    found = []
    if first := _first(out_of_range):
        (layer, slot), count = first
        found.append(
            Violation(
                "phy2log.range",
                (layer, slot),
                f"phy2log[{layer}, {slot}] = {phy2log[layer, slot].item()} is not an expert id in "
                f"[0, {experts}){_and_more(count)}",
            )
        )
    if first := _first(holds == 0):
        (layer, expert), count = first
        found.append(
            Violation(
                "phy2log.coverage",
                (layer, expert),
                f"expert {expert} of layer {layer} has no slot in phy2log[{layer}], but every expert needs "
                f"at least one{_and_more(count)}",
            )
        )
    if first := _first(logcnt < 1):
        (layer, expert), count = first
        found.append(
            Violation(
                "logcnt.min",
                (layer, expert),
                f"logcnt[{layer}, {expert}] = {logcnt[layer, expert].item()}, but every expert needs at least "
                f"one replica{_and_more(count)}",
            )
        )
    sums = logcnt.sum(1)
    if first := _first(sums != replicas):
        (layer,), count = first
        found.append(
            Violation(
                "logcnt.sum",
                (layer,),
                f"logcnt[{layer}] sums to {sums[layer].item()}, but layer {layer} has {replicas} slots"
                f"{_and_more(count)}",
            )
        )
    if first := _first(holds != logcnt):
        (layer, expert), count = first
        slots = (phy2log[layer] == expert).nonzero().flatten().tolist()
        found.append(
            Violation(
                "phy2log.bincount",
                (layer, expert),
                f"logcnt[{layer}, {expert}] = {logcnt[layer, expert].item()} but phy2log[{layer}] holds expert "
                f"{expert} in {_count_slots(slots)}{_and_more(count)}",
            )
        )
    return found


def _log2phy_violations(phy2log: torch.Tensor, log2phy: torch.Tensor, logcnt: torch.Tensor) -> list[Violation]:
    """log2phy lists each expert's logcnt slots, all of that expert, then -1; every slot exactly once."""
    layers, experts, width = log2phy.shape
    replicas = phy2log.shape[1]
    found = []
    if first := _first(logcnt > width):
        (layer, expert), count = first
        found.append(
            Violation(
                "log2phy.width",
                (layer, expert),
                f"logcnt[{layer}, {expert}] = {logcnt[layer, expert].item()}, but log2phy has room for only "
                f"{width} slots per expert{_and_more(count)}",
            )
        )
    used = torch.arange(width, device=log2phy.device) < logcnt.clamp(0, width).unsqueeze(-1)
    if first := _first(~used & (log2phy != -1)):
        (layer, expert, k), count = first
        found.append(
            Violation(
                "log2phy.padding",
                (layer, expert, k),
                f"log2phy[{layer}, {expert}, {k}] = {log2phy[layer, expert, k].item()}, but logcnt[{layer}, "
                f"{expert}] = {logcnt[layer, expert].item()} makes it padding, which must be -1{_and_more(count)}",
            )
        )
    not_a_slot = used & ((log2phy < 0) | (log2phy >= replicas))
    if first := _first(not_a_slot):
        (layer, expert, k), count = first
        found.append(
            Violation(
                "log2phy.range",
                (layer, expert, k),
                f"log2phy[{layer}, {expert}, {k}] = {log2phy[layer, expert, k].item()} is not a slot in "
                f"[0, {replicas}), but logcnt[{layer}, {expert}] = {logcnt[layer, expert].item()} makes it one "
                f"of expert {expert}'s replicas{_and_more(count)}",
            )
        )
    listed = used & ~not_a_slot
    slots = log2phy.clamp(0, replicas - 1)
    owner = phy2log.gather(1, slots.view(layers, -1)).view(layers, experts, width)
    expert_ids = torch.arange(experts, device=log2phy.device).view(1, experts, 1)
    if first := _first(listed & (owner != expert_ids)):
        (layer, expert, k), count = first
        slot = log2phy[layer, expert, k].item()
        found.append(
            Violation(
                "log2phy.slot",
                (layer, expert, k),
                f"log2phy[{layer}, {expert}, {k}] = {slot}, but phy2log[{layer}, {slot}] = "
                f"{phy2log[layer, slot].item()}, not {expert}{_and_more(count)}",
            )
        )
    times_listed = torch.zeros_like(phy2log).scatter_add_(1, slots.view(layers, -1), listed.view(layers, -1).long())
    if first := _first(times_listed > 1):
        (layer, slot), count = first
        places = (listed[layer] & (log2phy[layer] == slot)).nonzero().tolist()
        found.append(
            Violation(
                "log2phy.duplicate",
                (layer, *places[1]),
                f"slot {slot} of layer {layer} is listed {len(places)} times in log2phy[{layer}], at "
                f"{_list_positions(places)}, but each slot belongs to exactly one entry{_and_more(count)}",
            )
        )
    if first := _first(times_listed == 0):
        (layer, slot), count = first
        found.append(
            Violation(
                "log2phy.missing_slot",
                (layer, slot),
                f"slot {slot} of layer {layer} (expert {phy2log[layer, slot].item()}) is listed nowhere in "
                f"log2phy[{layer}]{_and_more(count)}",
            )
        )
    return found


def _gpus_with_duplicate_expert(phy2log: torch.Tensor, problem: Problem) -> int:
    """For a valid plan (0 <= phy2log < E). In numpy, for the reason `_every_value_invariant_holds` is. Expert e on
    GPU i (counting every layer's GPUs) is the key i * E + e: sorted within each GPU, no key equals one of another
    GPU, so a key equal to the one before it is an expert its GPU holds twice, and the key // E names that GPU."""
    gpus, experts = problem.num_layers * problem.num_gpus, problem.num_experts
    per_gpu = phy2log.cpu().numpy().reshape(gpus, problem.slots_per_gpu) + np.arange(gpus)[:, None] * experts
    keys = np.sort(per_gpu, axis=1).reshape(-1)
    repeated = keys[1:][keys[1:] == keys[:-1]]
    return len(np.unique(repeated // experts))


def _first(mask: torch.Tensor) -> tuple[tuple[int, ...], int] | None:
    """The row-major index of the first True in `mask` and how many there are; None if none."""
    count = int(mask.sum())
    if count == 0:
        return None
    flat = int(mask.reshape(-1).to(torch.uint8).argmax())  # argmax returns the first maximum
    index = []
    for size in reversed(mask.shape):
        flat, position = divmod(flat, size)
        index.append(position)
    return tuple(reversed(index)), count


def _and_more(count: int) -> str:
    return "" if count == 1 else f" (and {count - 1} more like it)"


def _at(name: str, index: tuple[int, ...]) -> str:
    return f"{name}[{', '.join(map(str, index))}]"


def _count_slots(slots: list[int]) -> str:
    if not slots:
        return "no slot"
    shown = ", ".join(map(str, slots[:_LISTED])) + (", ..." if len(slots) > _LISTED else "")
    return f"{len(slots)} slot{'s' if len(slots) > 1 else ''} ({shown})"


def _list_positions(places: list[list[int]]) -> str:
    shown = ", ".join(f"[{expert}, {k}]" for expert, k in places[:_LISTED])
    return shown + (", ..." if len(places) > _LISTED else "")


def _type_name(obj: object) -> str:
    # Read through `type` itself: a metaclass could make __name__ or __module__ run code.
    cls = type(obj)
    name = type.__dict__["__qualname__"].__get__(cls)
    module = type.__dict__["__module__"].__get__(cls)
    return name if type(module) is not str or module == "builtins" else f"{module}.{name}"


def _describe(obj: object) -> str:
    return "None" if obj is None else f"a {_type_name(obj)}"

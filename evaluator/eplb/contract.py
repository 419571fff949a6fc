"""The rebalancer contract's invariants, one entry each: what a `Violation` may name.

Every violation the evaluator reports names an invariant of `INVARIANTS`; one that names another is refused when it
is made, so no check can report an invariant that has no entry. The table in docs/validation-and-scoring.md is these
entries, row for row (a test holds it to them), and each invariant on the plan's values has a test that breaks it
alone and finds it named by the checks that name violations and refused by the few passes that judge a plan first
(invariants.py).
"""

from __future__ import annotations

from dataclasses import dataclass

OUTPUT_NAMES = ("phy2log", "log2phy", "logcnt")


@dataclass(frozen=True)
class Invariant:
    """One rule: its stable id, what a violation's index points into ("-" where it names the whole object), and
    what breaking it means."""

    id: str
    index_into: str
    meaning: str

    @property
    def on_values(self) -> bool:
        """Whether it is a rule on the plan's values, judged once the structure is right."""
        return self.index_into not in ("-", "none")


INVARIANTS = (
    Invariant("output.type", "-", "not a tuple or list"),
    Invariant("output.length", "-", "not exactly three items (phy2log, log2phy, logcnt)"),
    Invariant("<name>.type", "-", "not a plain `torch.Tensor`; subclasses (Parameter, nested-jagged, custom) are "
              "refused"),
    Invariant("<name>.layout", "-", "sparse or nested"),
    Invariant("<name>.device", "-", "neither CPU nor CUDA (e.g. `meta`)"),
    Invariant("<name>.dtype", "-", "not int64"),
    Invariant("<name>.shape", "-", "phy2log not [L, R]; logcnt not [L, E]; log2phy not [L, E, X] with "
              "1 <= X <= R - E + 1"),
    Invariant("<name>.storage", "-", "the storage is smaller than the shape claims"),
    Invariant("phy2log.range", "phy2log [l, p]", "an expert id outside [0, E)"),
    Invariant("phy2log.coverage", "logcnt [l, e]", "an expert with no slot"),
    Invariant("logcnt.min", "logcnt [l, e]", "fewer than one replica"),
    Invariant("logcnt.sum", "logcnt [l]", "a layer's counts do not add up to R"),
    Invariant("phy2log.bincount", "logcnt [l, e]", "logcnt disagrees with how often phy2log holds the expert"),
    Invariant("log2phy.width", "logcnt [l, e]", "more replicas than log2phy has columns"),
    Invariant("log2phy.padding", "log2phy [l, e, k]", "an entry past logcnt[l, e] that is not -1"),
    Invariant("log2phy.range", "log2phy [l, e, k]", "a listed entry that is not a slot in [0, R)"),
    Invariant("log2phy.slot", "log2phy [l, e, k]", "a listed slot whose phy2log entry is another expert"),
    Invariant("log2phy.duplicate", "log2phy [l, e, k]", "a slot listed twice; the index is its second listing"),
    Invariant("log2phy.missing_slot", "phy2log [l, p]", "a slot listed nowhere"),
    Invariant("input.changed", "none", "the candidate changed its input tensor in place: the worker compares it, on "
              "the device, with a copy taken before the call, and says so with the outputs"),
    Invariant("output.reused", "none", "a call returned tensors sharing memory with those an earlier call of its "
              "batch returned: one call changed a plan another had returned"),
    Invariant("plan.not_reproducible", "none", "a timed call's plan differs when its input is given again to a "
              "fresh process: the plan depends on chance, earlier calls or timing"),
    Invariant("plan.input_dependence", "none", "plans for fresh inputs near the trace's windows balance the next "
              "window clearly worse than the windows' own plans: cached, stale or looked up"),
)

INVARIANT_IDS = frozenset(
    name for invariant in INVARIANTS
    for name in ([invariant.id.replace("<name>", output) for output in OUTPUT_NAMES]
                 if invariant.id.startswith("<name>.") else [invariant.id]))


@dataclass(frozen=True)
class Violation:
    """One broken invariant.

    `invariant` is the id of an entry of `INVARIANTS` such as "phy2log.range" (ValueError for any other); `index` is
    the first offending position in the tensor the message names first (None when the fault is the whole object:
    type, dtype, shape); `message` says in one sentence what is wrong, where, and with which values.
    """

    invariant: str
    index: tuple[int, ...] | None
    message: str

    def __post_init__(self) -> None:
        if self.invariant not in INVARIANT_IDS:
            raise ValueError(f"{self.invariant!r} is no invariant of the contract (evaluator/eplb/contract.py)")

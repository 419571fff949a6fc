"""The result of evaluating one candidate: plain data, and its JSON form (the schema is in docs/evaluation.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from evaluator.eplb.problem import Problem
from evaluator.eplb.trace import Trace
from evaluator.status import Status

# The statuses as their strings, and those a candidate is responsible for (its patch's, its process's, its outputs').
STATUSES = tuple(status.value for status in Status)
CANDIDATE_FAILURES = tuple(status.value for status in Status if status.candidate_failed)


@dataclass(frozen=True)
class Result:
    """Scores and diagnostics of one evaluation. Every score is 0 unless `status` is "ok"."""

    status: str
    error: str | None = None
    violations: list[dict[str, Any]] = field(default_factory=list)
    balancedness_score: float = 0.0
    speed_score: float = 0.0
    combined_score: float = 0.0
    speedup: float | None = None
    speedup_interval: list[float] | None = None  # 95%: the candidate's time, the seed's ratio and the pace combined
    time_ms: float | None = None
    seed_time_ms: float | None = None
    slot_balancedness: float | None = None
    reference_balancedness: float | None = None  # the seed planned on the future window itself
    seed_balancedness: float | None = None  # the seed planned as the candidate is: on the past window
    gpus_with_duplicate_expert: float | None = None  # per plan, (layer, GPU) pairs holding an expert twice
    # how the plan made on the trace's first window loads the GPUs on the second: each GPU's load summed over layers,
    # each layer's busiest GPU's load and mean GPU load (None on a held-out trace, whose loads stay secret)
    gpu_load: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    card: str | None = None
    # the Ray node it was measured on (`host`, `address`, `id`); None: the local backend's, this machine
    node: dict[str, Any] | None = None
    # the earlier attempts the evaluator lost (their node died), each an infra_error naming its node
    attempts: list[dict[str, Any]] = field(default_factory=list)
    software: dict[str, Any] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)  # what the candidate's process was confined to
    workload: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {', '.join(STATUSES)}")
        object.__setattr__(self, "status", Status(self.status).value)  # plain data: the string, not the enum

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        """A stored result as a Result; fields a newer or older evaluator wrote but this one lacks are left out."""
        return cls(**{item.name: data[item.name] for item in fields(cls) if item.name in data})


def workload_summary(trace: Trace, problem: Problem) -> dict[str, object]:
    """What a result records of the workload it was measured on; stored results are matched on it."""
    return {"source": trace.source, "digest": trace.digest, "windows": trace.num_windows,
            "steps_per_window": trace.steps_per_window, "problem": asdict(problem)}

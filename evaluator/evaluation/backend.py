"""Where candidates are evaluated: on this machine's devices (the `local` backend, `Evaluator`) or on the nodes of a
Ray cluster (the `ray` backend, `evaluator.cluster.RayEvaluator`). Both are a `CandidateEvaluator`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from evaluator.eplb.trace import Trace
    from evaluator.evaluation.result import Result
    from evaluator.evaluation.settings import Settings

BACKENDS = ("local", "ray")


class CandidateEvaluator(Protocol):
    """Evaluates candidate programs on one trace, from any number of threads; a context manager."""

    settings: Settings
    trace: Trace

    @property
    def lane_count(self) -> int:
        """How many candidates it times at once: one per lane."""

    def evaluate(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """Run, validate and score `program`; with `give_up_at` (a `time.monotonic()` time), an `infra_error` when
        no lane is free by then."""

    def check(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """The cheap first stage: the program imports and returns one valid plan; nothing is timed or scored."""

    def close(self) -> None:
        """Stop its workers; evaluations still running end as `infra_error`."""

    def __enter__(self) -> CandidateEvaluator: ...

    def __exit__(self, *exc_info: object) -> None: ...

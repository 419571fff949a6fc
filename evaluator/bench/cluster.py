"""How many candidates a minute a Ray cluster gets through against how many of its lanes are kept busy: the seed
patch's program evaluated back to back from as many threads as lanes, for 1, 2, 4, ... lanes and then every lane.

A first round, one candidate on every lane at once, has each node measure the seed's reference, as every evaluator
does on a device it has none cached for; it is left out of the figures.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluator.bench import timed_evaluations
from evaluator.evaluation.seed_plans import seed_patch_program

if TYPE_CHECKING:
    from evaluator.cluster import RayEvaluator
    from evaluator.evaluation.backend import CandidateEvaluator


@dataclass(frozen=True)
class Throughput:
    lanes: int  # kept busy: candidates submitted from this many threads
    candidates: int
    seconds: float
    candidates_per_minute: float


@dataclass(frozen=True)
class ClusterBenchResult:
    nodes: list[dict[str, Any]]  # as `RayEvaluator.nodes()` gives them
    lanes: int
    throughput: list[Throughput]  # one per number of lanes, fewest first


def measure(evaluator: RayEvaluator, candidates: int) -> ClusterBenchResult:
    """Every node's lanes started, the reference round, then `candidates` candidates for each number of lanes."""
    evaluator.wait_for_nodes()
    lanes = evaluator.lane_count
    if lanes == 0:
        raise RuntimeError("no node of the cluster has lanes that started")
    with tempfile.TemporaryDirectory(prefix="eplb-bench-") as folder:
        program = Path(folder) / "candidate.py"
        program.write_text(seed_patch_program(), encoding="utf-8")
        throughput(evaluator, program, lanes, lanes)  # each node measures the seed's reference
        rows = [throughput(evaluator, program, candidates, busy) for busy in lane_steps(lanes)]
    return ClusterBenchResult(evaluator.nodes(), lanes, rows)


def lane_steps(lanes: int) -> list[int]:
    """1, 2, 4, ... below `lanes`, then `lanes`."""
    steps = [1]
    while steps[-1] * 2 < lanes:
        steps.append(steps[-1] * 2)
    return steps if lanes == 1 else [*steps, lanes]


def throughput(evaluator: CandidateEvaluator, program: Path, candidates: int, lanes: int) -> Throughput:
    """`candidates` evaluations of `program` from `lanes` threads: at most that many lanes busy at once. Raises
    RuntimeError if one is not `ok`."""
    seconds, _ = timed_evaluations(evaluator, program, candidates, lanes)
    return Throughput(lanes, candidates, seconds, candidates / seconds * 60)

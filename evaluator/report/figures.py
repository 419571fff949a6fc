"""The report's charts, from its data: each point titled with its candidate and linked to the candidate's page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from evaluator.report.charts import Point, bars, progress, scatter
from evaluator.report.data import Leaderboard, Row, number_in
from evaluator.untrusted import NAME_CHARS, one_line

CANDIDATE_DIR = "candidate"  # the candidates' pages, beside index.html


def times(value: object) -> str:
    """A speedup: three significant digits, whole numbers from 100 on; "-" for no number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def candidate_page(candidate_id: str) -> str:
    """A candidate page's path from the report's folder."""
    return f"{CANDIDATE_DIR}/{candidate_id}.html"


def speed_against_balancedness(board: Leaderboard) -> Markup:
    """Every ok candidate's speedup (log) against its balancedness, the Pareto front joined, the seed at 1x."""
    points = [_point(row, number_in(row.result.data, "balancedness_score"), number_in(row.result.data, "speedup"),
                     "point front" if row.candidate.id in board.front else "point") for row in board.scored_rows]
    seed = None
    if board.seed_balancedness is not None:
        seed = Point(board.seed_balancedness, 1.0, f"the seed: balancedness {board.seed_balancedness:.4f}, "
                                                   "speedup 1x by definition", kind="seed")
    front = [point for point in points if "front" in point.kind]
    return scatter(points, seed, front, "balancedness_score", "speedup over the seed (log)",
                   f"speedup against balancedness on the {board.trace.label}")


def best_over_time(board: Leaderboard) -> Markup:
    """Each candidate's combined score (failures at 0) in the order candidates were made, and the best so far."""
    points = [_point(row, order, _score(row), "point" if row.result.scored else "point failed")
              for order, row in enumerate(board.by_creation, start=1)]
    return progress(points, "candidates in the order they were made", "combined_score",
                    f"best combined score as candidates were made, on the {board.trace.label}")


def gpu_loads(load: Mapping[str, Any]) -> tuple[Markup, Markup]:
    """A result's `gpu_load`: each GPU's load summed over layers, against the mean; each layer's busiest GPU's
    load, against the layer's mean."""
    per_gpu, layer_max, layer_mean = load["per_gpu"], load["layer_max"], load["layer_mean"]
    mean = sum(per_gpu) / len(per_gpu)
    gpus = bars(per_gpu, [f"GPU {gpu}: {value:,.0f} ({value / mean:.3f} x the mean)" if mean else
                          f"GPU {gpu}: {value:,.0f}" for gpu, value in enumerate(per_gpu)],
                [mean] * len(per_gpu), "GPU", "load summed over layers", "load per GPU")
    layers = bars(layer_max, [f"layer {layer}: busiest GPU {peak:,.0f}, mean {average:,.0f}"
                              for layer, (peak, average) in enumerate(zip(layer_max, layer_mean))],
                  layer_mean, "layer", "busiest GPU's load", "busiest GPU's load per layer")
    return gpus, layers


def _point(row: Row, x: float, y: float, kind: str) -> Point:
    data = row.result.data
    name = one_line(row.candidate.name, NAME_CHARS) or "(unnamed)"
    if row.result.scored:
        scores = (f"combined {number_in(data, 'combined_score'):.4f}, "
                  f"balancedness {number_in(data, 'balancedness_score'):.4f}, "
                  f"speedup {times(number_in(data, 'speedup'))}x")
    else:
        scores = row.result.status
    return Point(x, y, f"{row.candidate.id} {name}: {scores}", candidate_page(row.candidate.id), kind)


def _score(row: Row) -> float:
    return number_in(row.result.data, "combined_score") if row.result.scored else 0.0

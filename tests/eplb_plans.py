"""Plans for tests: the seed program's outputs, and valid plans built from any slot assignment."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

from evaluator.eplb.problem import Problem

SEED_PATH = Path(__file__).resolve().parents[1] / "seeds" / "eplb.py"


def load_seed() -> ModuleType:
    """Import the seed program from its file, as the evaluator does with any candidate."""
    spec = importlib.util.spec_from_file_location("eplb_seed_under_test", SEED_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lognormal_weight(problem: Problem, seed: int) -> torch.Tensor:
    """A skewed [L, E] load, like real expert traffic."""
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(problem.num_layers, problem.num_experts, generator=generator, dtype=torch.float64)
    return (normal * 1.5).exp() * 100


def random_phy2log(problem: Problem, seed: int) -> torch.Tensor:
    """A random valid slot assignment: every expert at least once, the redundant slots anywhere."""
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(problem.num_layers):
        extra = torch.randint(problem.num_experts, (problem.num_replicas - problem.num_experts,), generator=generator)
        experts = torch.cat([torch.arange(problem.num_experts), extra])
        layers.append(experts[torch.randperm(problem.num_replicas, generator=generator)])
    return torch.stack(layers)


def plan_outputs(
    phy2log: torch.Tensor, num_experts: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(phy2log, log2phy, logcnt) consistent with `phy2log`, each expert's slots listed in ascending order."""
    layers, replicas = phy2log.shape
    logcnt = torch.zeros(layers, num_experts, dtype=torch.int64).scatter_add_(1, phy2log, torch.ones_like(phy2log))
    order = phy2log.argsort(dim=1, stable=True)
    sorted_experts = phy2log.gather(1, order)
    first_position = logcnt.cumsum(1) - logcnt
    rank = torch.arange(replicas) - first_position.gather(1, sorted_experts)
    log2phy = torch.full((layers, num_experts, width), -1, dtype=torch.int64)
    log2phy.view(layers, -1).scatter_(1, sorted_experts * width + rank, order)
    return phy2log, log2phy, logcnt

"""A program the evaluator runs in a worker, as candidates run: the harness's time per call is measured with it.

It returns, almost at once, the narrowest valid plan there is (slot p holds expert p mod E, so log2phy is as
narrow as R/E allows) without looking at its load. Its round trip is nearly all harness: the input's way in, the
input check, the outputs' way out, which grows with their size. No valid plan's outputs are smaller, so no
candidate's harness costs less than this program's. `in_the_seeds_shapes` returns the same plan with log2phy as wide
as the seed's, as most programs return theirs: the harness's probe in a run's rounds (estimate.py).
"""

import torch


def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _plan(weight, num_replicas, -(-num_replicas // weight.shape[1]))


def in_the_seeds_shapes(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                        num_gpus: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _plan(weight, num_replicas, num_replicas - weight.shape[1] + 1)


def _plan(weight: torch.Tensor, num_replicas: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    layers, experts = weight.shape
    slots = torch.arange(experts, device=weight.device)[:, None] + experts * torch.arange(width, device=weight.device)
    log2phy = torch.where(slots < num_replicas, slots, -1)
    phy2log = torch.arange(num_replicas, device=weight.device) % experts
    logcnt = (log2phy >= 0).sum(dim=1)
    return (phy2log.expand(layers, -1).contiguous(), log2phy.expand(layers, -1, -1).contiguous(),
            logcnt.expand(layers, -1).contiguous())

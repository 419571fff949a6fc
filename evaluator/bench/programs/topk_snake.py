"""A fast balancer (about 0.5 ms per call on an H100): replicas by one top-k, slots dealt onto GPUs in snake order.
`bench aa` times it as its fastest speed class.

Giving one more replica to the expert with the highest load per replica, again and again, picks the largest values
of load / k (k = 1, 2, ...) over every expert in decreasing order; one top-k finds them all at once. The slots, by
load, are then dealt to the GPUs one round at a time, in alternating directions. A few dozen kernels, no Python
loop over layers, slots or GPUs.
"""

import torch


def replica_counts(load: torch.Tensor, num_replicas: int) -> torch.Tensor:
    """[L, E] replicas per expert: one each, and the extra slots to the largest loads per replica."""
    layers, experts = load.shape
    extra = num_replicas - experts
    counts = torch.ones(layers, experts, dtype=torch.int64, device=load.device)
    if extra == 0:
        return counts
    divisors = torch.arange(1, extra + 1, dtype=load.dtype, device=load.device)
    per_replica = (load.unsqueeze(-1) / divisors).flatten(1)  # [L, E * extra]: load / k for the k-th replica
    chosen = per_replica.topk(extra, dim=1, sorted=False).indices // extra
    return counts.scatter_add_(1, chosen, torch.ones_like(chosen))


def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    layers, experts = weight.shape
    device = weight.device
    load = weight.double()
    width = num_replicas - experts + 1
    slots_per_gpu = num_replicas // num_gpus
    logcnt = replica_counts(load, num_replicas)

    # The replicas in expert order, num_replicas per layer: which expert each is, and its rank among that expert's.
    ends = logcnt.cumsum(dim=1)
    replica = torch.arange(num_replicas, device=device).expand(layers, -1).contiguous()
    expert = torch.searchsorted(ends, replica, right=True)
    replica_rank = replica - (ends - logcnt).gather(1, expert)

    # Deal the replicas, heaviest first, one per GPU a round, the direction turning each round.
    replica_load = (load / logcnt).gather(1, expert)
    order = replica_load.sort(dim=1, descending=True, stable=True).indices
    position = torch.arange(num_replicas, device=device)
    round_, seat = position // num_gpus, position % num_gpus
    gpu = torch.where(round_ % 2 == 0, seat, num_gpus - 1 - seat)
    slot = (gpu * slots_per_gpu + round_).expand(layers, -1)
    phy2log = torch.empty(layers, num_replicas, dtype=torch.int64, device=device)
    phy2log.scatter_(1, slot, expert.gather(1, order))

    log2phy = torch.full((layers, experts * width), -1, dtype=torch.int64, device=device)
    placed = torch.empty_like(slot)
    placed.scatter_(1, order, slot)  # the slot of each replica, in expert order
    log2phy.scatter_(1, expert * width + replica_rank, placed)
    return phy2log, log2phy.view(layers, experts, width), logcnt

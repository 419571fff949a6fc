"""Queues about half a second of GPU work on a side stream and returns before it finishes."""
import torch

SPIN_CYCLES = 1_000_000_000  # about 0.5 s at the H100's 2 GHz


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(SPIN_CYCLES)
    return weight

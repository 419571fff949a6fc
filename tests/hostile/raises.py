"""Raises from a helper called by the entry point."""


def plan_layers(weight):
    raise ValueError("no plan for these layers: the greedy pass ran out of slots")


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    return plan_layers(weight)

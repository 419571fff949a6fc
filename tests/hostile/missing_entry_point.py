"""Defines the algorithm under the wrong name."""


def rebalance(weight, num_replicas, num_groups, num_nodes, num_gpus):
    raise AssertionError("never called")

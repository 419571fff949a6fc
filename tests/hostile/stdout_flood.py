"""Writes 100 MB to stdout in the call, then returns the seed's plan."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "seeds"))
import eplb  # noqa: E402


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    block = "x" * (1024 * 1024 - 1) + "\n"
    for _ in range(100):
        sys.stdout.write(block)
    sys.stdout.flush()
    return eplb.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)

"""Returns lists instead of tensors."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "seeds"))
import eplb  # noqa: E402


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    return [tensor.tolist() for tensor in eplb.rebalance_experts(weight, num_replicas, num_groups, num_nodes,
                                                                  num_gpus)]

"""Prints its whole environment to stdout, then returns its input."""
import json
import os

print(json.dumps(dict(os.environ)), flush=True)


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    return weight

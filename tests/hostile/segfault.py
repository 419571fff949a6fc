"""Dereferences a null pointer in the call."""
import ctypes


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    print("about to crash", flush=True)
    ctypes.string_at(0)

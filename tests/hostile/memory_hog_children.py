"""Forks children that each hold a moderate amount of memory: no process is large, the tree is."""
import os
import time

CHILDREN = 6
EACH = 300 * 1024 * 1024


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    for _ in range(CHILDREN):
        if os.fork() == 0:
            block = bytearray(EACH)
            for offset in range(0, EACH, 4096):
                block[offset] = 1
            time.sleep(3600)
    time.sleep(3600)

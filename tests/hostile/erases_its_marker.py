"""Forks a child that erases its whole environment block (the worker's marker with it) and sleeps, then ends its
worker at once: an orphan whose environment says nothing of the worker it came from. Prints the child's pid."""
import ctypes
import os
import time


def _erase_environment_block():
    """Overwrite the block /proc/<pid>/environ shows (fields 50 and 51 of /proc/self/stat bound it)."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # from field 3 on
    start, end = int(fields[47]), int(fields[48])
    ctypes.memset(start, ord("x"), end - start)


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    erased_read, erased_write = os.pipe()
    child = os.fork()
    if child == 0:
        _erase_environment_block()
        os.write(erased_write, b"1")
        time.sleep(3600)
        os._exit(0)
    os.read(erased_read, 1)
    print("child", child, flush=True)
    os._exit(0)

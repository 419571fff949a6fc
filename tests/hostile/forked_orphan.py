"""Forks a child (no exec: it keeps the worker's own memory) that moves to a new session and outlives the
worker, then kills its own process. The child writes its pid to `pid` beside this file."""
import os
import time

PID_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pid")


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    if os.fork() == 0:
        os.setsid()
        with open(PID_FILE + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.rename(PID_FILE + ".tmp", PID_FILE)
        time.sleep(3600)
        os._exit(0)
    while not os.path.exists(PID_FILE):
        time.sleep(0.01)
    os._exit(0)

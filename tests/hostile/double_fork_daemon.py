"""Daemonises a grandchild the classic way (fork, setsid, fork), then returns normally.

The daemon writes its pid to `pid` beside this file.
"""
import os
import time

PID_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pid")


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(PID_FILE + ".tmp", "w") as file:
                file.write(str(os.getpid()))
            os.rename(PID_FILE + ".tmp", PID_FILE)
            time.sleep(3600)
        os._exit(0)
    while not os.path.exists(PID_FILE):
        time.sleep(0.01)
    return weight

"""Starts a grandchild in a new session through a short-lived child, then kills its own process.

The grandchild outlives both its parent and the worker; it writes its pid to `pid` beside this file.
"""
import os
import subprocess
import sys
import time

PID_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pid")
GRANDCHILD = f"""
import os, time
with open({PID_FILE + '.tmp'!r}, 'w') as file:
    file.write(str(os.getpid()))
os.rename({PID_FILE + '.tmp'!r}, {PID_FILE!r})
time.sleep(3600)
"""
CHILD = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}], start_new_session=True)\n"


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    subprocess.run([sys.executable, "-c", CHILD], check=True)
    while not os.path.exists(PID_FILE):
        time.sleep(0.01)
    os._exit(0)

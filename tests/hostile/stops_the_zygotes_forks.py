"""For a few seconds, stops (SIGSTOP) every process the zygotes fork (the children of the evaluator's children
running the zygote, found as `signals_the_zygote` finds them), then returns its input. It prints "watching" once it
has found the zygotes, then the pids it stopped.

A fork lives for a millisecond or so before it hands its worker over, so between looks for the zygotes it watches
only their children lists (/proc/<pid>/task/<tid>/children): a sweep of all of /proc on a busy machine can take
longer than that and miss it."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from signals_the_zygote import is_zygote  # noqa: E402

WATCH_S = 8.0
LOOK_AGAIN_S = 0.5  # for zygotes started since


def _zygotes(evaluator):
    found = []
    for name in os.listdir("/proc"):
        try:
            if is_zygote(int(name), evaluator):
                found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


def _children(pid):
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", "rb") as file:
            children.extend(int(child) for child in file.read().split())
    return children


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    evaluator, stopped = os.getppid(), set()
    deadline = time.monotonic() + WATCH_S
    zygotes, looked_at = _zygotes(evaluator), time.monotonic()
    print("watching", flush=True)
    while time.monotonic() < deadline:
        if time.monotonic() - looked_at >= LOOK_AGAIN_S:
            zygotes, looked_at = _zygotes(evaluator), time.monotonic()
        for zygote in zygotes:
            try:
                children = _children(zygote)
            except OSError:
                continue
            for child in children:
                if child not in stopped:
                    try:
                        os.kill(child, signal.SIGSTOP)
                    except OSError:
                        continue
                    stopped.add(child)
                    print(child, flush=True)
        time.sleep(0.0001)
    return weight

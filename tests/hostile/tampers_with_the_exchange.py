"""Tries to shrink and grow the shared memory its calls cross in (a read past the end of a shrunk region would kill
the evaluator with SIGBUS), then leaves a thread writing over the region's start, inputs and outputs alike, during
its later calls and after its replies. Returns a copy of its input."""
import mmap
import os
import threading

_started = []


def _exchange_descriptors():
    for name in os.listdir("/proc/self/fd"):
        try:
            if "eplb-exchange" in os.readlink(f"/proc/self/fd/{name}"):
                yield int(name)
        except OSError:
            continue


def _scribble(memory):
    value = 0
    while True:
        value = (value + 1) % 256
        memory[:1 << 20] = bytes([value]) * (1 << 20)


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    if not _started:
        for fd in _exchange_descriptors():
            for size in (0, 1 << 40):
                try:
                    os.ftruncate(fd, size)
                    print(f"resized to {size}", flush=True)
                except OSError as error:
                    print(f"refused: {error.strerror}", flush=True)
        fd = next(_exchange_descriptors())
        memory = mmap.mmap(fd, os.fstat(fd).st_size)
        _started.append(threading.Thread(target=_scribble, args=(memory,), daemon=True))
        _started[0].start()
    return weight.clone()

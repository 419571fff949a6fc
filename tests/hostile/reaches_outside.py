"""Tries to reach past its worker and prints what came of each try, as one JSON object: read the evaluator's
memory, signal it, write beside this file, in its own folder, in its temporary folder and in /dev/shm, open a disk
(a block device), the kernel's log and the null device for writing (writing nothing), connect to the TCP port its
environment's REACH_PORT names; and what it holds (capabilities, no_new_privs), in every thread. Returns its
input."""
import json
import os
import signal
import socket
import stat
import tempfile


def _attempt(action):
    try:
        action()
        return "done"
    except OSError as error:
        return f"refused: {error.strerror}"


def _read_evaluator_memory():
    with open(f"/proc/{os.getppid()}/maps") as maps, open(f"/proc/{os.getppid()}/mem", "rb", 0) as memory:
        start = int(next(line for line in maps if " r" in line).split("-")[0], 16)
        memory.seek(start)
        memory.read(16)


def _write(folder):
    with open(os.path.join(folder, "reached"), "w") as file:
        file.write("reached")


def _open_a_disk_for_writing():
    """Opens the first block device for writing and closes it at once: nothing is written."""
    disks = [entry.path for entry in os.scandir("/dev") if stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode)]
    if disks:
        os.close(os.open(disks[0], os.O_WRONLY))


def _open_for_writing(path):
    os.close(os.open(path, os.O_WRONLY))  # nothing is written


def _connect():
    with socket.create_connection(("127.0.0.1", int(os.environ["REACH_PORT"])), timeout=5):
        pass


def _status(task="self"):
    """The fields of /proc/<task>/status, by name."""
    with open(f"/proc/{task}/status") as status:
        return {name: value.strip() for name, value in (line.split(":", 1) for line in status if ":" in line)}


def _unconfined_threads():
    """Threads of this process that kept a capability or may gain privileges: started before the confinement."""
    found = []
    for thread in os.listdir("/proc/self/task"):
        fields = _status(f"self/task/{thread}")
        if fields["NoNewPrivs"] != "1" or int(fields["CapEff"], 16):
            found.append(thread)
    return found


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    outcomes = {
        "read_evaluator_memory": _attempt(_read_evaluator_memory),
        "signal_evaluator": _attempt(lambda: os.kill(os.getppid(), signal.SIGCONT)),
        "write_beside_program": _attempt(lambda: _write(os.path.dirname(os.path.abspath(__file__)))),
        "write_own_folder": _attempt(lambda: _write(os.getcwd())),
        "write_temporary_folder": _attempt(lambda: _write(tempfile.gettempdir())),
        "write_shared_memory": _attempt(lambda: _write("/dev/shm")),
        "open_a_disk_for_writing": _attempt(_open_a_disk_for_writing),
        "open_the_kernel_log_for_writing": _attempt(lambda: _open_for_writing("/dev/kmsg")),
        "open_the_null_device_for_writing": _attempt(lambda: _open_for_writing("/dev/null")),
        "connect_tcp": _attempt(_connect),
        "effective_capabilities": _status()["CapEff"],
        "no_new_privileges": _status()["NoNewPrivs"],
        "unconfined_threads": _unconfined_threads(),
    }
    print(json.dumps(outcomes), flush=True)
    return weight

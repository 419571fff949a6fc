"""Tries to reach past its worker and prints what came of each try, as one JSON object: read the evaluator's
memory, signal it, write beside this file, in its own folder, in its temporary folder and in /dev/shm, open a disk
(a block device), the kernel's log and the null device for writing (writing nothing), connect to the TCP port its
environment's REACH_PORT names, open a UDP and a vsock socket (sending nothing), change its own file's mode, times,
flags and version (to what they are) and its folder's extended attributes, create System V shared memory and a POSIX
message queue (removed again), add a key to its process's keyring, read the evaluator's limits, set the evaluator's
priority and CPUs (to what they are), ask the loop devices for a free one, look at its own pages' residency, take a
lease on its own file, set a new thread's audit login uid, set up an io_uring and, last, enter a user namespace; and
what it holds (capabilities, no_new_privs), in every thread. Returns its input."""
import ctypes
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import struct
import tempfile
import threading

_LIBC = ctypes.CDLL(None, use_errno=True)
# add_key, mq_open, mq_unlink, io_uring_setup, mincore, unshare
_NUMBERS = {"x86_64": (248, 240, 241, 425, 27, 272), "aarch64": (217, 180, 181, 425, 232, 97)}.get(os.uname().machine)
_IPC_PRIVATE, _IPC_CREAT, _IPC_RMID = 0, 0o1000, 0
_PROCESS_KEYRING = -2
_GET_FLAGS, _SET_FLAGS = 0x80086601, 0x40086602  # FS_IOC_GETFLAGS, FS_IOC_SETFLAGS
_GET_VERSION, _SET_VERSION = 0x80087601, 0x40086604  # FS_IOC_GETVERSION, EXT4_IOC_SETVERSION
_LOOP_GET_FREE = 0x4C82  # LOOP_CTL_GET_FREE
_NEW_USER_NAMESPACE = 0x10000000
_AF_VSOCK = 40


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


def _checked(result):
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


def _keep_times(path):
    times = os.stat(path)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def _create_shared_memory():
    segment = _checked(_LIBC.shmget(_IPC_PRIVATE, 4096, _IPC_CREAT | 0o600))
    _LIBC.shmctl(segment, _IPC_RMID, None)


def _keep(path, get, set_):
    """Read a file's attribute by ioctl `get` and write it back, unchanged, by `set_`."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(descriptor, set_, fcntl.ioctl(descriptor, get, struct.pack("l", 0)))
    finally:
        os.close(descriptor)


def _ask_for_a_free_loop_device():
    descriptor = os.open("/dev/loop-control", os.O_RDONLY)
    try:
        fcntl.ioctl(descriptor, _LOOP_GET_FREE)
    finally:
        os.close(descriptor)


def _by_number(index, *arguments):
    if _NUMBERS is None:
        raise OSError(0, "not tried on this architecture")
    return _checked(_LIBC.syscall(_NUMBERS[index], *arguments))


def _add_a_key():
    _by_number(0, b"user", b"reached", b"1", 1, _PROCESS_KEYRING)


def _create_a_message_queue():
    """The call itself takes the queue's name without the leading slash the C library's mq_open strips."""
    os.close(_by_number(1, b"eplb-reached", os.O_CREAT | os.O_RDONLY, 0o600, None))
    _by_number(2, b"eplb-reached")


def _set_up_io_uring():
    parameters = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    os.close(_by_number(3, 4, parameters))


def _take_a_lease(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(descriptor)


def _set_a_threads_login_uid():
    """In a new thread, write its own audit login uid (to the process's): moves the audit session counter if done."""
    outcome = []

    def write():
        try:
            descriptor = os.open(f"/proc/self/task/{threading.get_native_id()}/loginuid", os.O_WRONLY)
            try:
                os.write(descriptor, str(os.getuid()).encode())
            finally:
                os.close(descriptor)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    if outcome:
        raise outcome[0]


def _open_a_socket(family, kind):
    socket.socket(family, kind).close()


def _look_at_residency():
    page = ctypes.create_string_buffer(os.sysconf("SC_PAGE_SIZE") * 2)
    start = (ctypes.addressof(page) | (os.sysconf("SC_PAGE_SIZE") - 1)) + 1  # the page-aligned part of it
    _by_number(4, ctypes.c_void_p(start), 1, ctypes.create_string_buffer(1))


def _status(task="self"):
    """The fields of /proc/<task>/status, by name."""
    with open(f"/proc/{task}/status") as status:
        return {name: value.strip() for name, value in (line.split(":", 1) for line in status if ":" in line)}


def _unconfined_threads():
    """Threads of this process that kept a capability or may gain privileges: started before the confinement."""
    found = []
    for thread in os.listdir("/proc/self/task"):
        try:
            fields = _status(f"self/task/{thread}")
        except (ProcessLookupError, FileNotFoundError):
            continue  # it ended since the listing
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
        "change_a_files_mode": _attempt(lambda: os.chmod(__file__, stat.S_IMODE(os.stat(__file__).st_mode))),
        "change_a_files_times": _attempt(lambda: _keep_times(__file__)),
        "change_a_files_flags": _attempt(lambda: _keep(__file__, _GET_FLAGS, _SET_FLAGS)),
        "change_a_files_version": _attempt(lambda: _keep(__file__, _GET_VERSION, _SET_VERSION)),
        "set_an_extended_attribute": _attempt(lambda: os.setxattr(os.getcwd(), "user.reached", b"1")),
        "create_shared_memory": _attempt(_create_shared_memory),
        "create_a_message_queue": _attempt(_create_a_message_queue),
        "add_a_key": _attempt(_add_a_key),
        "read_the_evaluators_limits": _attempt(lambda: resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE)),
        "set_the_evaluators_priority": _attempt(
            lambda: os.setpriority(os.PRIO_PROCESS, os.getppid(), os.getpriority(os.PRIO_PROCESS, os.getppid()))),
        "set_the_evaluators_cpus": _attempt(
            lambda: os.sched_setaffinity(os.getppid(), os.sched_getaffinity(os.getppid()))),
        "take_every_cpu": _attempt(lambda: os.sched_setaffinity(0, range(os.cpu_count() or 1))),
        "ask_for_a_free_loop_device": _attempt(_ask_for_a_free_loop_device),
        "look_at_page_residency": _attempt(_look_at_residency),
        "take_a_lease": _attempt(lambda: _take_a_lease(__file__)),
        "set_a_threads_login_uid": _attempt(_set_a_threads_login_uid),
        "set_up_io_uring": _attempt(_set_up_io_uring),
        "open_a_udp_socket": _attempt(lambda: _open_a_socket(socket.AF_INET, socket.SOCK_DGRAM)),
        "open_a_vsock_socket": _attempt(lambda: _open_a_socket(_AF_VSOCK, socket.SOCK_STREAM)),
        "effective_capabilities": _status()["CapEff"],
        "no_new_privileges": _status()["NoNewPrivs"],
        "unconfined_threads": _unconfined_threads(),
    }
    outcomes["enter_a_user_namespace"] = _attempt(lambda: _by_number(5, _NEW_USER_NAMESPACE))  # last: it changes us
    print(json.dumps(outcomes), flush=True)
    return weight

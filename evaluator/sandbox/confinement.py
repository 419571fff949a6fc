"""What a worker may reach beyond itself, cut down before any program runs in it (Linux).

The worker confines itself first thing, while it is still a single thread, so every thread and process it starts
later is confined too (a spawned worker before it imports the package: `spawned_worker.py`; this module imports
nothing of it):

- no new privileges: no setuid program or file capability gives any back;
- no capabilities: a worker started as root cannot read or trace the evaluator, nor override file permissions;
- Landlock, where the kernel has it: writes only in the worker's own folder, to the GPU's devices and the null and
  random ones, and to its own entries under /proc; ioctls only on those devices (no loop device, no terminal); no
  TCP bind or connect; no signal and no abstract unix socket to a process outside the worker's own tree, and no
  tracing or reading the memory of one (`/proc/<pid>/mem`), whatever the user;
- a seccomp filter, on x86_64 and aarch64: no change to a file's mode, owner, times, flags or extended attributes,
  no System V IPC or POSIX message queue, no keyring, no io_uring, no loop device, no look at the page cache, no
  lease, no limit, priority or scheduling set on another process, no CPU set at all (a worker runs on the cores its
  lane gives it), no user namespace (Landlock rules none of them, and each outlives the worker or reaches others: a
  place to leave a plan for the recheck's process, a way to slow the evaluator or other workers or to take more cores
  than the others, or, as root, to make a program setuid); no socket but unix and
  netlink ones; and no new session or process group, so that every process the worker starts stays in its process
  group, which the evaluator kills whole;
- its audit login uid set (where it may be: as root), so that no thread of it moves the audit session counter.

The evaluator and the zygote make themselves non-dumpable, so that a worker of the same user cannot read or trace
them (the evaluator holds the held-out windows and the schedule's secret generator; every worker is forked from the
zygote) even where Landlock is missing. A forked worker makes itself dumpable again: the evaluator reads its
environment and memory use.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import stat
import tempfile
from dataclasses import dataclass

_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522
_LAST_CAPABILITY_BOUND = 64

# Landlock's system calls (the same number on every architecture) and flags, from linux/landlock.h
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_WRITE_FILE = 1 << 1
_FILE_RIGHTS = 1 << 0 | _WRITE_FILE | 1 << 2 | 1 << 14 | 1 << 15  # the rights a rule on a file (not a folder) may hold
# what the worker may do only where a rule allows it: every way of changing the file system, by ABI version
_WRITES = _WRITE_FILE | sum(1 << bit for bit in range(4, 13))  # remove, make (char, dir, reg, sock, fifo, block, sym)
_WRITES_BY_ABI = {1: _WRITES, 2: _WRITES | 1 << 13, 3: _WRITES | 1 << 13 | 1 << 14}  # refer, truncate
_IOCTL_DEV = 1 << 15  # ioctls on a device (ABI 5)
_NET_TCP = 1 << 0 | 1 << 1  # bind, connect (ABI 4)
_SCOPES = 1 << 0 | 1 << 1  # abstract unix sockets, signals (ABI 6)
# seccomp, from linux/seccomp.h, linux/filter.h and linux/audit.h
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_LOAD_WORD, _AND, _JUMP, _JUMP_IF_EQUAL, _JUMP_IF_AT_LEAST, _RETURN = 0x20, 0x54, 0x05, 0x15, 0x35, 0x06
# offsets in struct seccomp_data: the call's number, the architecture, the low word of its first argument (8 bytes each)
_NUMBER, _ARCHITECTURE, _ARGUMENTS = 0, 4, 16
_ALLOW, _REFUSE, _UNKNOWN = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
_LOCAL_FAMILIES = (1, 16)  # AF_UNIX, AF_NETLINK: the only sockets a worker may open
# ioctl requests that change a file's metadata: FS_IOC_SETFLAGS, FS_IOC_SETVERSION and EXT4_IOC_SETVERSION (each
# with its 32-bit twin), FS_IOC_FSSETXATTR, FS_IOC_SET_ENCRYPTION_POLICY; and the loop devices' type of request
# (attaching a file to a loop device, which outlives the worker, needs only a read-only descriptor)
_METADATA_IOCTLS = (0x40086602, 0x40046602, 0x40087602, 0x40047602, 0x40086604, 0x40046604, 0x401C5820, 0x800C6613)
_IOCTL_TYPE, _LOOP_IOCTLS = 0xFF00, 0x4C00
_CLONE_NEWUSER = 0x10000000  # a user namespace, in which its capabilities would pass the kernel's checks on others
_PRIO_PROCESS, _IOPRIO_WHO_PROCESS = 0, 1
_SET_LEASE = 1024  # F_SETLEASE: a lease on a file it can read stalls, for up to a minute, whoever opens it to write
_UNSET_LOGIN_UID = "4294967295"


# Refused whatever their arguments: calls that change a file's mode, owner, times or extended attributes; System V
# IPC and POSIX message queues; keyrings; a new session or process group; io_uring, whose operations pass no system
# call, so no filter; the page cache's residency (which pages of the host's files are cached would carry a message).
# Then calls refused for some arguments only (`_filter_program`), clone3, whose flags a filter cannot read (refused as
# not implemented: the C library then uses clone), and the first number newer than any call this filter knows:
# those too, so that a call a later kernel adds is not open by default.
_REFUSED = ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime", "utimes",
            "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
            "fremovexattr", "setxattrat", "removexattrat", "file_setattr", "shmget", "shmat", "shmctl", "shmdt",
            "semget", "semop", "semctl", "semtimedop", "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink",
            "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr", "add_key", "request_key", "keyctl",
            "setsid", "setpgid", "io_uring_setup", "io_uring_enter", "io_uring_register", "mincore", "cachestat",
            "sched_setaffinity")
_ONE_NUMBERING = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "clone3": 435,
                  "cachestat": 451, "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466,
                  "file_setattr": 469}  # 424 on, numbers are alike on every architecture
_FIRST_UNKNOWN = 470
_NUMBERS = {  # from asm/unistd_64.h and asm-generic/unistd.h; aarch64 lacks the calls that take no directory
    "x86_64": {"chmod": 90, "fchmod": 91, "fchmodat": 268, "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260,
               "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280, "setxattr": 188, "lsetxattr": 189,
               "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199, "shmget": 29,
               "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220,
               "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_open": 240, "mq_unlink": 241,
               "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245, "add_key": 248,
               "request_key": 249, "keyctl": 250, "setsid": 112, "setpgid": 109, "mincore": 27, "socket": 41,
               "ioctl": 16, "fcntl": 72, "prlimit64": 302, "setpriority": 141, "sched_setparam": 142,
               "sched_setscheduler": 144, "sched_setaffinity": 203, "sched_setattr": 314, "ioprio_set": 251,
               "clone": 56, "unshare": 272, **_ONE_NUMBERING},
    "aarch64": {"fchmod": 52, "fchmodat": 53, "fchown": 55, "fchownat": 54, "utimensat": 88, "setxattr": 5,
                "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15, "fremovexattr": 16,
                "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "semget": 190, "semop": 193, "semctl": 191,
                "semtimedop": 192, "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "mq_open": 180,
                "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184,
                "mq_getsetattr": 185, "add_key": 217, "request_key": 218, "keyctl": 219, "setsid": 157,
                "setpgid": 154, "mincore": 232, "socket": 198, "ioctl": 29, "fcntl": 25, "prlimit64": 261,
                "setpriority": 140, "sched_setparam": 118, "sched_setscheduler": 119, "sched_setaffinity": 122,
                "sched_setattr": 274, "ioprio_set": 30, "clone": 220, "unshare": 97, **_ONE_NUMBERING},
}
# the audit number of each architecture, and where the numbers of another ABI sharing it begin (x86_64's x32)
_ARCHITECTURES = {"x86_64": (0xC000003E, 0x40000000), "aarch64": (0xC00000B7, None)}
# what a worker may write under /dev: the null and random devices, its controlling terminal, and the GPU's (NVIDIA's,
# AMD's compute and render nodes)
_WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/nvidia*",
                     "/dev/nvidia-caps/*", "/dev/kfd", "/dev/dri/renderD*")
# where programs and the libraries they use put temporary files and caches: a worker is started with each set to
# its own folder
FOLDER_VARIABLES = ("HOME", "TMPDIR", "TMP", "TEMP", "XDG_CACHE_HOME", "TRITON_HOME", "TORCHINDUCTOR_CACHE_DIR")


@dataclass(frozen=True)
class Confinement:
    """What a worker cut itself off from before any candidate code ran (see `confinement.py`)."""

    no_new_privileges: bool  # no setuid program or file capability can raise its privileges
    capabilities_dropped: bool  # it holds no capability, even as root
    landlock_abi: int  # the kernel's Landlock version; 0 where there is none, and the four below are False
    writes_confined: bool  # it writes only in its own folder, to the GPU's and harmless devices, to its /proc
    tcp_denied: bool  # no TCP bind or connect
    ioctls_confined: bool  # ioctls only on the devices it may write
    scoped: bool  # no signal and no abstract unix socket to a process outside its own tree
    calls_filtered: bool  # the seccomp filter: see `_REFUSED` and `_argument_rules`

    @classmethod
    def none(cls) -> Confinement:
        return cls(False, False, 0, False, False, False, False, False)


class _CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapabilityData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _RulesetAttributes(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _FilterInstruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jump_if_true", ctypes.c_uint8), ("jump_if_false", ctypes.c_uint8),
                ("operand", ctypes.c_uint32)]


class _FilterProgram(ctypes.Structure):
    _fields_ = [("length", ctypes.c_ushort), ("instructions", ctypes.POINTER(_FilterInstruction))]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def set_dumpable(dumpable: bool) -> bool:
    """Make this process dumpable or not. A process that is not cannot have its memory read, be traced (or dump its
    core) by any process without CAP_SYS_PTRACE, nor have its environment read. True if done."""
    try:
        return _libc().prctl(_PR_SET_DUMPABLE, int(dumpable), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def confine(folder: str) -> Confinement:
    """Confine this process (and whatever it starts later) as the module says; `folder` is the one place it may
    write. Applies what the kernel allows and reports it."""
    tempfile.tempdir = None  # a forked worker's was found in the zygote's environment: read it again from TMPDIR
    try:
        libc = _libc()
    except OSError:
        return Confinement.none()
    no_new_privileges = libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    _set_login_uid()
    capabilities_dropped = _drop_capabilities(libc)
    calls_filtered = no_new_privileges and _filter_calls(libc)
    abi = libc.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION) if no_new_privileges else -1
    if abi < 1 or not _restrict(libc, abi, folder):
        return Confinement(no_new_privileges, capabilities_dropped, 0, False, False, False, False, calls_filtered)
    # before version 3 Landlock cannot refuse truncating a file: writes are not confined
    return Confinement(no_new_privileges, capabilities_dropped, abi, abi >= 3, abi >= 4, abi >= 5, abi >= 6,
                       calls_filtered)


def _set_login_uid() -> None:
    """Set this process's audit login uid to its user where none is set, while it may (as root): then neither it nor
    any thread it starts can set one, and each first setting moves a global counter (the audit session id) that any
    process can read, a channel between workers."""
    try:
        with open("/proc/self/loginuid", "r+") as file:
            if file.read().strip() == _UNSET_LOGIN_UID:
                file.seek(0)
                file.write(str(os.getuid()))
    except OSError:
        pass


def _drop_capabilities(libc: ctypes.CDLL) -> bool:
    """Drop every capability, from the bounding set too (so that no program run later gets one back); True if the
    process holds none afterwards."""
    for capability in range(_LAST_CAPABILITY_BOUND):
        libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0)  # fails past the last one, or without CAP_SETPCAP
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapabilityHeader(_CAPABILITY_VERSION_3, 0)
    libc.capset(ctypes.byref(header), (_CapabilityData * 2)())
    held = (_CapabilityData * 2)()
    if libc.capget(ctypes.byref(header), held) != 0:
        return False
    return not any(data.effective or data.permitted or data.inheritable for data in held)


def _filter_calls(libc: ctypes.CDLL) -> bool:
    """Install the seccomp filter `_filter_program` builds for this architecture; True if it is in place. Needs no
    new privileges set first."""
    machine = os.uname().machine
    if machine not in _ARCHITECTURES or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    instructions = _filter_program(machine)
    array = (_FilterInstruction * len(instructions))(*(_FilterInstruction(*fields) for fields in instructions))
    program = _FilterProgram(len(instructions), array)
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) == 0


def _filter_program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter's instructions: EPERM for `_REFUSED`, for the calls `_argument_rules` refuses on their arguments, and
    for every call through another architecture's entry (a 32-bit one) or another ABI's numbers, which would bypass
    the numbers; ENOSYS for clone3 and for calls newer than the filter knows."""
    audit, other_abi_from = _ARCHITECTURES[machine]
    number = _NUMBERS[machine]
    rules = _argument_rules()
    assembled: list[tuple[int, int | str, int | str, int | str]] = [
        (_LOAD_WORD, 0, 0, _ARCHITECTURE), (_JUMP_IF_EQUAL, 0, "refuse", audit), (_LOAD_WORD, 0, 0, _NUMBER)]
    if other_abi_from is not None:
        assembled.append((_JUMP_IF_AT_LEAST, "refuse", 0, other_abi_from))
    assembled += [(_JUMP_IF_AT_LEAST, "unknown", 0, _FIRST_UNKNOWN),
                  (_JUMP_IF_EQUAL, "unknown", 0, number["clone3"])]
    assembled += [(_JUMP_IF_EQUAL, "refuse", 0, number[name]) for name in _REFUSED if name in number]
    assembled += [(_JUMP_IF_EQUAL, name, 0, number[name]) for name in rules]
    assembled.append((_JUMP, 0, 0, "allow"))
    labels: dict[str, int] = {}
    for name, rule in rules.items():
        labels[name] = len(assembled)
        assembled += rule
    labels.update(allow=len(assembled), refuse=len(assembled) + 1, unknown=len(assembled) + 2)
    assembled += [(_RETURN, 0, 0, _ALLOW), (_RETURN, 0, 0, _REFUSE), (_RETURN, 0, 0, _UNKNOWN)]

    def offset(index: int, target: int | str) -> int:  # a label becomes the count of instructions skipped to it
        return labels[target] - index - 1 if isinstance(target, str) else target

    return [(code, offset(index, if_true), offset(index, if_false), offset(index, operand))
            for index, (code, if_true, if_false, operand) in enumerate(assembled)]


def _argument_rules() -> dict[str, list[tuple[int, int | str, int | str, int | str]]]:
    """By call, the instructions that allow or refuse it on its arguments: sockets only of `_LOCAL_FAMILIES` (no
    TCP, UDP or other network); no ioctl of `_METADATA_IOCTLS` nor of the loop devices; no lease; limits,
    priorities and scheduling set on itself only (on another process of its user, as root or in a user
    namespace, they would carry a message, or slow the evaluator and other workers); no user namespace. (CPUs are
    refused outright, in `_REFUSED`: a worker runs on the cores its lane gives it.)"""

    def load(argument: int) -> tuple[int, int, int, int]:
        return _LOAD_WORD, 0, 0, _ARGUMENTS + 8 * argument

    def only_if(*required: tuple[int, int]) -> list[tuple[int, int | str, int | str, int | str]]:
        """Allowed only when each (argument, value) holds."""
        instructions: list[tuple[int, int | str, int | str, int | str]] = []
        for position, (argument, value) in enumerate(required):
            last = position == len(required) - 1
            instructions += [load(argument), (_JUMP_IF_EQUAL, "allow" if last else 0, "refuse", value)]
        return instructions

    itself = only_if((0, 0))  # a pid (or thread id) of 0: the caller
    no_user_namespace = [load(0), (_AND, 0, 0, _CLONE_NEWUSER), (_JUMP_IF_EQUAL, "allow", "refuse", 0)]
    return {
        "socket": [load(0), *((_JUMP_IF_EQUAL, "allow", 0, family) for family in _LOCAL_FAMILIES),
                   (_JUMP, 0, 0, "refuse")],
        "ioctl": [load(1), *((_JUMP_IF_EQUAL, "refuse", 0, request) for request in _METADATA_IOCTLS),
                  (_AND, 0, 0, _IOCTL_TYPE), (_JUMP_IF_EQUAL, "refuse", "allow", _LOOP_IOCTLS)],
        "fcntl": [load(1), (_JUMP_IF_EQUAL, "refuse", "allow", _SET_LEASE)],
        "prlimit64": itself, "sched_setscheduler": itself, "sched_setparam": itself,
        "sched_setattr": itself, "setpriority": only_if((0, _PRIO_PROCESS), (1, 0)),
        "ioprio_set": only_if((0, _IOPRIO_WHO_PROCESS), (1, 0)), "clone": no_user_namespace,
        "unshare": no_user_namespace,
    }


def _restrict(libc: ctypes.CDLL, abi: int, folder: str) -> bool:
    """Enforce a Landlock ruleset of the writes, network and scopes `abi` knows; True if enforced."""
    writes = _WRITES_BY_ABI[min(abi, 3)]
    device_ioctls = _IOCTL_DEV if abi >= 5 else 0
    attributes = _RulesetAttributes(writes | device_ioctls, _NET_TCP if abi >= 4 else 0, _SCOPES if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attributes), size, 0)
    if ruleset < 0:
        return False
    try:
        if not _allow(libc, ruleset, folder, writes):
            return False
        # its own entries under /proc: the GPU's driver writes there as it initialises; CUDA starts only with them
        _allow(libc, ruleset, f"/proc/{os.getpid()}", writes)
        for device in _writable_devices():  # the only devices it may also send ioctls
            _allow(libc, ruleset, device, (writes | device_ioctls) & _FILE_RIGHTS)
        return libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) == 0
    finally:
        os.close(ruleset)


def _writable_devices() -> list[str]:
    """The device files a worker may write: the GPU's and the harmless ones, no other. A block device would let it
    write a disk beneath every file's permissions, and other character devices (the kernel's log, consoles,
    terminals, SCSI generics) do harm or carry messages between processes for a worker running as root."""
    return [path for pattern in _WRITABLE_DEVICES for path in glob.glob(pattern) if _is_character_device(path)]


def _is_character_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.lstat(path).st_mode)
    except OSError:
        return False


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> bool:
    """Allow `rights` beneath `path`; True if the rule was added."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False  # a device gone since it was listed
    try:
        return libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(_PathBeneath(rights, fd)), 0) == 0
    finally:
        os.close(fd)

"""What a worker may reach beyond itself, cut down before any program runs in it (Linux).

The worker confines itself first thing, while it is still a single thread, so every thread and process it starts
later is confined too (a spawned worker before it imports the package: `spawned_worker.py`; this module imports
nothing of it):

- no new privileges: no setuid program or file capability gives any back;
- no capabilities: a worker started as root cannot read or trace the evaluator, nor override file permissions;
- Landlock, where the kernel has it: writes only in the worker's own folder, to the GPU's devices and the null and
  random ones, and to its own entries under /proc; no TCP bind or connect; no signal and no abstract unix socket to
  a process outside the worker's own tree, and no tracing or reading the memory of one (`/proc/<pid>/mem`),
  whatever the user.

The evaluator and the zygote make themselves non-dumpable, so that a worker of the same user cannot read or trace
them (the evaluator holds the held-out windows and the schedule's secret generator; every worker is forked from the
zygote) even where Landlock is missing. A forked worker makes itself dumpable again: the evaluator reads its
environment and memory use.
"""

from __future__ import annotations

import ctypes
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
_NET_TCP = 1 << 0 | 1 << 1  # bind, connect (ABI 4)
_SCOPES = 1 << 0 | 1 << 1  # abstract unix sockets, signals (ABI 6)
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
    landlock_abi: int  # the kernel's Landlock version; 0 where there is none, and the three below are False
    writes_confined: bool  # it writes only in its own folder, to the GPU's and harmless devices, to its /proc
    tcp_denied: bool  # no TCP bind or connect
    scoped: bool  # no signal and no abstract unix socket to a process outside its own tree

    @classmethod
    def none(cls) -> Confinement:
        return cls(False, False, 0, False, False, False)


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
    capabilities_dropped = _drop_capabilities(libc)
    abi = libc.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION) if no_new_privileges else -1
    if abi < 1 or not _restrict(libc, abi, folder):
        return Confinement(no_new_privileges, capabilities_dropped, 0, False, False, False)
    # before version 3 Landlock cannot refuse truncating a file: writes are not confined
    return Confinement(no_new_privileges, capabilities_dropped, abi, abi >= 3, abi >= 4, abi >= 6)


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


def _restrict(libc: ctypes.CDLL, abi: int, folder: str) -> bool:
    """Enforce a Landlock ruleset of the writes, network and scopes `abi` knows; True if enforced."""
    writes = _WRITES_BY_ABI[min(abi, 3)]
    attributes = _RulesetAttributes(writes, _NET_TCP if abi >= 4 else 0, _SCOPES if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attributes), size, 0)
    if ruleset < 0:
        return False
    try:
        if not _allow(libc, ruleset, folder, writes):
            return False
        # its own entries under /proc: the GPU's driver writes there as it initialises; CUDA starts only with them
        _allow(libc, ruleset, f"/proc/{os.getpid()}", writes)
        for device in _writable_devices():
            _allow(libc, ruleset, device, writes & _FILE_RIGHTS)
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

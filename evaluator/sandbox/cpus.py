"""The machine's CPUs as the kernel shows them, and moving a process onto some of them (Linux).

A physical core may run two hardware threads (siblings); each is a CPU to the kernel, and a busy sibling slows the
other by half or more. A candidate being timed gets a core of its own, its siblings left idle; everything else runs
on the other cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

_TOPOLOGY = "/sys/devices/system/cpu/cpu{}/topology/thread_siblings_list"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def physical_cores(cpus: Iterable[int]) -> list[tuple[int, ...]]:
    """`cpus` grouped by physical core (siblings together, from the kernel's topology; a CPU it says nothing of is a
    core of its own), in the order of each core's first CPU."""
    wanted = sorted(set(cpus))
    cores: dict[tuple[int, ...], list[int]] = {}
    for cpu in wanted:
        siblings = tuple(sorted(_siblings(cpu) | {cpu}))
        cores.setdefault(siblings, []).append(cpu)
    return sorted((tuple(members) for members in cores.values()), key=lambda members: members[0])


def pin_threads(pid: int, cpus: Sequence[int]) -> None:
    """Move every thread of process `pid` onto `cpus`; threads and processes it starts later inherit them. Raises
    OSError when the process is gone or the CPUs cannot be had."""
    threads = os.listdir(f"/proc/{pid}/task")
    for thread in threads:
        try:
            os.sched_setaffinity(int(thread), cpus)
        except ProcessLookupError:  # a thread that ended since it was listed
            continue


def _siblings(cpu: int) -> set[int]:
    try:
        text = Path(_TOPOLOGY.format(cpu)).read_text().strip()
    except OSError:
        return set()
    return set(_parse_list(text))


def _parse_list(text: str) -> list[int]:
    """A kernel CPU list ("0-3,8,10-11") as numbers."""
    numbers: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        numbers.extend(range(int(first), int(last or first) + 1))
    return numbers

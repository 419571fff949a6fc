"""Where the Ray cluster is (`--address`), read and checked before anything connects, and the errors of a cluster
that cannot evaluate."""

from __future__ import annotations

import os
import re

AUTO = "auto"  # the cluster started on this machine (`ray start --head`), as Ray finds it
ADDRESS_VARIABLE = "RAY_ADDRESS"  # Ray's own: the address when none is given
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>[0-9]{1,5})")


class ClusterError(RuntimeError):
    """The cluster cannot evaluate: no node could start its lanes. The message says which node failed and why."""


class ClusterUnreachable(ClusterError, ConnectionError):
    """No Ray cluster answers at the address given; the message names it and says why."""


def parse_address(text: str) -> str:
    """`text` as a cluster's address: `auto`, or the head node's `HOST:PORT` (its GCS, as `ray start --head`
    prints it). Raises ValueError for anything else."""
    found = _HOST_PORT.fullmatch(text)
    if text == AUTO or (found and 0 < int(found["port"]) < 2**16):
        return text
    raise ValueError(f"expected HOST:PORT (the head node's address, as `ray start --head` prints it) or {AUTO!r}, "
                     f"got {text!r}")


def resolve_address(address: str | None) -> str:
    """The address to connect to: `address`, else `$RAY_ADDRESS`, else `auto`; raises ValueError for a bad one."""
    return parse_address(address or os.environ.get(ADDRESS_VARIABLE) or AUTO)


def host_and_port(address: str) -> tuple[str, int] | None:
    """The host and port of a `HOST:PORT` address (an IPv6 host without its brackets); None for `auto`."""
    found = _HOST_PORT.fullmatch(address)
    return None if found is None else (found["host"].strip("[]"), int(found["port"]))

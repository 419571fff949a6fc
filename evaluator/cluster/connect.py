"""Connecting this process to a Ray cluster, or failing within seconds with a message that says why.

`ray.init` given an address where no cluster answers waits forever (it retries the connection without end), so the
address is first tried with a plain TCP connection, and `ray.init` itself is waited for a bounded time.
"""

from __future__ import annotations

import logging
import socket
import threading

import ray

from evaluator.cluster.address import AUTO, ClusterUnreachable, host_and_port, resolve_address

PROBE_TIMEOUT_S = 5.0  # for the head node to accept a TCP connection
CONNECT_TIMEOUT_S = 30.0  # for ray.init once it does: a cluster that answers connects within a few seconds


def connect(address: str | None) -> bool:
    """Connect this process to the cluster at `address` (`resolve_address`); True if this call connected it (its
    caller disconnects, `ray.shutdown()`), False if the process was connected already, to whichever cluster it
    chose. Raises ClusterUnreachable when no cluster answers there, ValueError for an address of the wrong form."""
    if ray.is_initialized():
        return False
    target = resolve_address(address)
    endpoint = host_and_port(target)
    if endpoint is not None:
        _probe(target, *endpoint)
    _init_within(target, CONNECT_TIMEOUT_S)
    return True


def _probe(address: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterUnreachable(f"no Ray cluster answers at {address}: {_reason(error)}; start one with "
                                 "`ray start --head` there, or give its head node's address") from None


def _reason(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror})"
    return error.strerror or type(error).__name__


def _init_within(address: str, timeout_s: float) -> None:
    """`ray.init(address)` on a thread of its own, waited for `timeout_s`: one that never returns (something else
    listens at the address) is left behind, asleep, and the caller told."""
    outcome: list[BaseException | None] = []

    def init() -> None:
        try:
            # The cluster's logs stay on the cluster: what its workers print (candidates included) is not this
            # process's output, which may be a loop's JSON.
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            outcome.append(None)
        except BaseException as error:  # handed to the caller
            outcome.append(error)

    thread = threading.Thread(target=init, name="ray-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    where = "the Ray cluster started on this machine" if address == AUTO else f"a Ray cluster at {address}"
    if not outcome:
        raise ClusterUnreachable(f"cannot connect to {where}: no answer within {timeout_s:g} s (is it a Ray head "
                                 "node's address?)")
    if outcome[0] is not None:
        error = outcome[0]
        raise ClusterUnreachable(f"cannot connect to {where}: {type(error).__name__}: {error}") from None

"""The `ray` backend's driver: `RayEvaluator`, with the interface of the local `Evaluator`, sends each candidate to a
free lane of a node of the cluster and, when that node dies mid-evaluation, to another node.

Each node that has lanes (`nodes.py`) gets one actor (`node.py`) owning a local `Evaluator` over all of them, rather
than one actor per lane: the lanes of one machine share its cores (each lane gets one of its own, the evaluator's
threads the rest) and the seed's reference, which one `Evaluator` per machine shares out as it does locally. The
driver counts each node's busy lanes and sends a candidate only to a node with a lane free, so a node's death loses
no more candidates than it was timing. Drivers in other processes have actors of their own on the nodes, which take
turns with this one's on each lane.

A candidate is scored once: the result of the attempt that returned one. An attempt whose node (or actor) died is
recorded in the result's `attempts` as an `infra_error` naming the node, its node gets nothing more, and the
candidate goes to a node it has not been tried on, at most `MAX_ATTEMPTS` times in all; whatever a dead node's
attempt might still produce is never read.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from evaluator.cluster.address import ClusterError
from evaluator.cluster.connect import connect
from evaluator.cluster.node import NodeEvaluator
from evaluator.cluster.nodes import LaneNode, lane_nodes, no_lanes
from evaluator.eplb.trace import Trace, check_matches
from evaluator.evaluation.result import Result, workload_summary
from evaluator.evaluation.settings import Settings
from evaluator.software import package_digest
from evaluator.status import Status
from evaluator.untrusted import tail

MAX_ATTEMPTS = 3  # of one candidate, each on another node
START_TIMEOUT_S = 300.0  # for a first node's lanes to start (its actor placed, torch imported, workers starting)
POLL_S = 0.5  # how often a candidate waiting for a lane looks for nodes that finished starting
DISCOVER_EVERY_S = 30.0  # how often the cluster is looked at for nodes that joined it
CLOSE_TIMEOUT_S = 30.0  # for the nodes to stop their workers before their actors are killed
_MESSAGE_CHARS = 600  # of Ray's account of a lost attempt

_RemoteNode = ray.remote(NodeEvaluator)


@dataclass
class _Node:
    """A node's actor as the driver keeps track of it."""

    spec: LaneNode
    actor: Any  # ray's ActorHandle
    starting: Any  # the ObjectRef of its description while it starts; None once it has started
    lanes: int
    where: dict[str, Any] = field(default_factory=dict)  # what a result names it by: host, address, id
    card: str | None = None
    busy: int = 0
    lost: str | None = None  # why it evaluates nothing more

    @property
    def ready(self) -> bool:
        return self.starting is None and self.lost is None


class _Closed(Exception):
    pass


class _GaveUp(Exception):
    pass


class RayEvaluator:
    """Evaluates candidate programs on a Ray cluster's nodes: the local `Evaluator`'s interface and results, each
    result naming its node (`Result.node`). Thread-safe; a context manager.

    Connects to the cluster at `address` (`evaluator.cluster.address.resolve_address`; a process that is connected
    to one already uses that one) and starts an actor on every node with lanes for `device`; returns once one
    node's lanes have started, and uses the others as they do. Nodes that join later get lanes too. Raises
    `ClusterUnreachable` when no cluster answers at `address`, `ClusterError` when no node could start its lanes,
    and ValueError for a trace that does not fit the settings' problem or a cluster without lanes for `device`.
    `spares` and `retime_seed` are those of each node's `Evaluator`; the trace goes to the cluster once.
    """

    def __init__(self, trace: Trace, settings: Settings | None = None, *, address: str | None = None,
                 device: str = "auto", spares: int = 2, retime_seed: bool = False,
                 announce: Callable[[str], contextlib.AbstractContextManager[object]] | None = None) -> None:
        self.settings = settings or Settings()
        check_matches(trace, self.settings.problem)
        self.trace = trace
        self._device = device
        self._options = (self.settings, spares, retime_seed)
        self._digest = package_digest()
        self._condition = threading.Condition()
        self._nodes: dict[str, _Node] = {}
        self._closed = False
        self._discovered_at = 0.0
        self._owns_connection = connect(address)
        try:
            self._trace_ref = ray.put(trace)
            with (announce or (lambda _: contextlib.nullcontext()))("starting the lanes of the cluster's nodes"):
                self._start()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def lane_count(self) -> int:
        """The lanes of every node that has started or is starting: how many candidates it times at once."""
        with self._condition:
            return sum(node.lanes for node in self._nodes.values() if node.lost is None)

    def nodes(self) -> list[dict[str, Any]]:
        """Each node it has started lanes on: where it is, its device and card, its lanes, how many are busy and its
        `state` (`starting`, `ready`, or `lost`, with `why`)."""
        with self._condition:
            return [{**node.where, "device": node.spec.device, "card": node.card, "lanes": node.lanes,
                     "busy": node.busy, "state": "lost" if node.lost else "ready" if node.ready else "starting",
                     **({"why": node.lost} if node.lost else {})} for node in self._nodes.values()]

    def wait_for_nodes(self, timeout_s: float = START_TIMEOUT_S) -> bool:
        """Wait until every node it started lanes on has started them (or failed to); True if they all did."""
        return self._wait(lambda nodes: not any(node.starting is not None for node in nodes), timeout_s)

    def evaluate(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """Run, validate and score `program` on a node of the cluster, as `Evaluator.evaluate` does on this machine;
        `give_up_at` bounds the wait for a free lane (a `time.monotonic()` time of this process)."""
        return self._run(program, False, give_up_at)

    def check(self, program: str | Path, give_up_at: float | None = None) -> Result:
        """The cheap first stage, `Evaluator.check`, on a node of the cluster."""
        return self._run(program, True, give_up_at)

    def close(self) -> None:
        """Stop every node's workers and actor; evaluations still running end as `infra_error`."""
        with self._condition:
            if self._closed:
                return
            self._closed = True
            nodes = [node for node in self._nodes.values() if node.lost is None]
            self._condition.notify_all()
        if not ray.is_initialized():  # shut down already (at exit, Ray's own handler runs first): the actors with it
            return
        # Each actor stops its workers, then exits as a process does (its scratch folder removed at exit); one that
        # does not in time, or is still starting, is killed.
        leaving = [call.remote() for node in nodes if node.ready
                   for call in (node.actor.close, node.actor.__ray_terminate__)]
        if leaving:
            ray.wait(leaving, num_returns=len(leaving), timeout=CLOSE_TIMEOUT_S)
        for node in nodes:
            _kill(node.actor)
        if self._owns_connection:
            ray.shutdown()

    def _run(self, program: str | Path, check: bool, give_up_at: float | None) -> Result:
        source = _source(program)
        lost: list[dict[str, Any]] = []
        try:
            return self._attempts(source, check, give_up_at, lost)
        except Exception as error:  # the evaluator's own fault, as for the local backend: a result, never a crash
            return self._failure(f"the evaluator failed: {type(error).__name__}: {error}", lost)

    def _attempts(self, source: bytes, check: bool, give_up_at: float | None, lost: list[dict[str, Any]]) -> Result:
        """The result of the first attempt that returns one, each lost attempt appended to `lost`."""
        tried: set[str] = set()
        while len(lost) < MAX_ATTEMPTS:
            try:
                node = self._take(tried, give_up_at)
            except _Closed:
                return self._failure("the evaluator was closed before the candidate got a lane", lost)
            except _GaveUp:
                return self._failure("gave up waiting for a lane: other evaluations held every lane of the cluster "
                                     "until the deadline", lost)
            if node is None:
                return self._failure("no node of the cluster is left to evaluate it on", lost)
            try:
                data = ray.get(node.actor.evaluate.remote(source, check, _until(give_up_at)))
            except RayError as error:
                if self._closed:
                    return self._failure("the evaluator was closed while the candidate was being evaluated", lost)
                lost.append({"status": Status.INFRA_ERROR.value, "node": node.where,
                             "error": f"the attempt was lost: {_account(error)}"})
                tried.add(node.spec.node_id)
                if not isinstance(error, RayTaskError):  # the actor itself is gone, not just this call
                    self._lose(node, _account(error))
                continue
            finally:
                self._release(node)
            return replace(Result.from_json(data), node=node.where, attempts=lost)
        return self._failure(f"the evaluation was lost {len(lost)} times, each on another node; it is not tried again",
                             lost)

    def _failure(self, message: str, lost: list[dict[str, Any]]) -> Result:
        return Result(Status.INFRA_ERROR, message, attempts=lost,
                      workload=workload_summary(self.trace, self.settings.problem))

    def _start(self) -> None:
        """Start an actor on every node with lanes, and wait until one has started."""
        self._discovered_at = time.monotonic()
        self._discover()
        with self._condition:
            if not self._nodes:
                raise ValueError(no_lanes(self._device))
        if self._wait(lambda nodes: any(node.ready for node in nodes), START_TIMEOUT_S):
            return
        with self._condition:
            nodes = list(self._nodes.values())
        if any(node.starting is not None for node in nodes):
            raise ClusterError(f"no node of the cluster started its lanes within {START_TIMEOUT_S:g} s")
        raise ClusterError("no node of the cluster could start its lanes: " + "; ".join(
            f"{node.where.get('host') or node.spec.address}: {node.lost}" for node in nodes))

    def _wait(self, done: Callable[[list[_Node]], bool], timeout_s: float) -> bool:
        """Wait until `done(nodes)`, or until no node is starting any more; whether `done` came within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._condition:
                self._admit()
                nodes = list(self._nodes.values())
            starting = [node.starting for node in nodes if node.starting is not None]
            if done(nodes) or not starting:
                return done(nodes)
            if time.monotonic() >= deadline:
                return False
            ray.wait(starting, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))

    def _discover_if_due(self) -> None:
        """`_discover`, by one thread at a time, at most every `DISCOVER_EVERY_S`."""
        with self._condition:
            if self._closed or time.monotonic() - self._discovered_at <= DISCOVER_EVERY_S:
                return
            self._discovered_at = time.monotonic()
        self._discover()

    def _discover(self) -> None:
        """Start an actor on each live node with lanes that has none. The cluster is asked without the lock (a call
        to its head node), so that lanes are released and taken meanwhile."""
        listed = lane_nodes(ray.nodes(), self._device)
        with self._condition:
            if not self._closed:
                self._start_actors(listed)

    def _start_actors(self, specs: list[LaneNode]) -> None:
        """An actor on each node of `specs` that has none (held: the lock)."""
        settings, spares, retime_seed = self._options
        for spec in specs:
            if spec.node_id in self._nodes:  # one that lost its actor gets no other: it may lose that one too
                continue
            actor = _RemoteNode.options(
                **spec.actor_options(), max_concurrency=spec.lanes + 1, max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(spec.node_id, soft=False),
            ).remote(self._trace_ref, settings, spec.device, spec.lanes, spares, retime_seed)
            self._nodes[spec.node_id] = _Node(spec, actor, actor.describe.remote(), spec.lanes,
                                              {"address": spec.address, "id": spec.node_id})

    def _admit(self) -> None:
        """Take in the nodes that finished starting since (held: the lock): those that run this evaluator."""
        starting = {node.starting: node for node in self._nodes.values() if node.starting is not None}
        if not starting:
            return
        done, _ = ray.wait(list(starting), num_returns=len(starting), timeout=0)
        for reference in done:
            node = starting[reference]
            node.starting = None
            try:
                description = ray.get(reference)
            except RayError as error:
                self._lose(node, f"its lanes did not start: {_account(error)}")
                continue
            node.where, node.lanes, node.card = description["node"], description["lanes"], description["card"]
            if description["evaluator_digest"] != self._digest:
                self._lose(node, f"it runs evaluator {description['evaluator']} (digest "
                                 f"{description['evaluator_digest']}), not this one (digest {self._digest}): install "
                                 "the same evaluator on every node")

    def _take(self, tried: set[str], give_up_at: float | None) -> _Node | None:
        """A node with a free lane, one of its lanes counted busy; one with the most free lanes, among those not in
        `tried`. None when no such node is left; raises _GaveUp past `give_up_at`, _Closed once closed."""
        while True:
            self._discover_if_due()
            with self._condition:
                if self._closed:
                    raise _Closed
                self._admit()
                usable = [node for node in self._nodes.values() if node.lost is None
                          and node.spec.node_id not in tried]
                free = [node for node in usable if node.ready and node.busy < node.lanes]
                if free:
                    most = max(node.lanes - node.busy for node in free)
                    # among those, any: drivers in other processes, which start from the same view, spread too
                    node = random.choice([node for node in free if node.lanes - node.busy == most])
                    node.busy += 1
                    return node
                if not usable:
                    return None
                remaining = _until(give_up_at)
                if remaining == 0.0:
                    raise _GaveUp
                self._condition.wait(POLL_S if remaining is None else min(POLL_S, remaining))

    def _release(self, node: _Node) -> None:
        with self._condition:
            node.busy -= 1
            self._condition.notify_all()

    def _lose(self, node: _Node, why: str) -> None:
        """Send `node` nothing more, and stop its actor if it still runs."""
        with self._condition:
            if node.lost is None:
                node.lost = why
                _kill(node.actor)
            self._condition.notify_all()


def _source(program: str | Path) -> bytes:
    path = Path(program)
    if not path.is_file():
        raise FileNotFoundError(f"no program file at {program}")
    return path.read_bytes()


def _until(give_up_at: float | None) -> float | None:
    return None if give_up_at is None else max(0.0, give_up_at - time.monotonic())


def _account(error: RayError) -> str:
    """Ray's account of a failure, on one line, its end (where it says why) kept."""
    return tail(" ".join(f"{type(error).__name__}: {error}".split()), _MESSAGE_CHARS)


def _kill(actor: Any) -> None:
    with contextlib.suppress(RayError, ValueError):
        ray.kill(actor)

"""Which nodes of a Ray cluster evaluate candidates, and on how many lanes: every GPU of a node is a lane; a node
without GPUs has one lane, on its CPU, where it declares the custom resource `eplb_cpu_lane`
(`ray start --resources '{"eplb_cpu_lane": 1}'`). Read from `ray.nodes()`'s records: no connection needed here.

Evaluators in several processes (a loop's process pool, a process per candidate) each place an actor on every node,
as on one machine each process has an evaluator of its own: the actors share the node's lanes and take turns on
each, through the lock per device every evaluator on a machine takes (evaluation/lanes.py). So an actor reserves
no lane in Ray's accounting: it asks for a sliver of the CPU lane, and for no GPU, seeing every GPU of its node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CPU_LANE_RESOURCE = "eplb_cpu_lane"
DEVICES = ("auto", "cuda", "cpu")
# Of a node's CPU lane, what one evaluator's actor asks for: as many evaluators as a loop runs share it.
LANE_SHARE = 0.001
# So that Ray leaves an actor that asks for no GPU the node's GPUs as its Ray shows them (older releases emptied
# CUDA_VISIBLE_DEVICES for such an actor).
_SEE_NODE_GPUS = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}


@dataclass(frozen=True)
class LaneNode:
    """A node that evaluates: its Ray id, its IP address, the device its lanes are on and how many it has."""

    node_id: str
    address: str
    device: str  # "cuda" or "cpu"
    lanes: int

    def actor_options(self) -> dict[str, Any]:
        """What its actor asks Ray for: no CPU (the actor's work is the evaluator's, which the lanes account for) and
        a share of the node's CPU lane, or no GPU while seeing the node's."""
        if self.device == "cuda":
            return {"num_cpus": 0, "num_gpus": 0, "runtime_env": {"env_vars": dict(_SEE_NODE_GPUS)}}
        return {"num_cpus": 0, "resources": {CPU_LANE_RESOURCE: LANE_SHARE}}


def lane_nodes(nodes: Iterable[Mapping[str, Any]], device: str) -> list[LaneNode]:
    """The live nodes among `nodes` (`ray.nodes()`) that evaluate on `device`: "cuda", on their GPUs; "cpu", on their
    CPU lane; "auto", on their GPUs where they have some, else on their CPU lane."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    found = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources") or {}
        gpus = int(resources.get("GPU", 0))
        if gpus and device != "cpu":
            found.append(LaneNode(node["NodeID"], node["NodeManagerAddress"], "cuda", gpus))
        elif resources.get(CPU_LANE_RESOURCE, 0) >= 1 and device != "cuda":
            found.append(LaneNode(node["NodeID"], node["NodeManagerAddress"], "cpu", 1))
    return found


def no_lanes(device: str) -> str:
    """Why a cluster whose nodes have no lanes for `device` cannot evaluate, and how a node gets some."""
    wanted = {"cuda": "a GPU", "cpu": f"the resource {CPU_LANE_RESOURCE}"}.get(device, f"a GPU or {CPU_LANE_RESOURCE}")
    return (f"no live node of the cluster has lanes for device {device!r}: none has {wanted}. Each GPU of a node is a "
            f"lane; a node evaluates on its CPU where it declares one CPU lane: ray start ... --resources "
            f"'{{\"{CPU_LANE_RESOURCE}\": 1}}'")

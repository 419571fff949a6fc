"""The `ray` backend: candidates evaluated on the nodes of a Ray cluster, each in a fresh, confined worker process
on its node, as the local backend evaluates them on this machine (docs/cluster.md).

`RayEvaluator` (the driver's side, `driver.py`) has the interface of the local `Evaluator`; on each node an actor
(`node.py`) owns a local `Evaluator` over the node's lanes. ray itself is imported only by those two and
`connect.py`: what needs only the options (a command's `--help`, the local backend) never imports it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from evaluator.cluster.address import ClusterError, ClusterUnreachable
from evaluator.cluster.nodes import CPU_LANE_RESOURCE

if TYPE_CHECKING:
    from evaluator.cluster.driver import RayEvaluator

__all__ = ["CPU_LANE_RESOURCE", "ClusterError", "ClusterUnreachable", "RayEvaluator"]


def __getattr__(name: str) -> Any:
    if name != "RayEvaluator":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f"{__name__}.driver").RayEvaluator
    except ModuleNotFoundError as error:
        if error.name != "ray":
            raise
        raise ImportError("the ray backend needs ray, which is not installed: "
                          "pip install 'eplb-evaluator[ray]'") from None

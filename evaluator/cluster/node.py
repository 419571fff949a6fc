"""One node's part of the `ray` backend: a Ray actor that owns a local `Evaluator` over the node's lanes (the first
GPUs the node's Ray counts, or its CPU lane) and evaluates the program text the driver sends it. Actors of other
drivers on the node take turns with it on each lane, as evaluators in several processes of one machine do.

Nodes share no filesystem with the driver: each program arrives as bytes and is written into the actor's own
scratch folder, and its result goes back as the JSON data a result file holds. The seed's reference is measured on
the node, on the first lane that needs it, and kept in a cache file named after the node's host, so that nodes
whose home folders are one shared folder each measure their own.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from evaluator import __version__
from evaluator.eplb.trace import Trace
from evaluator.evaluation.evaluate import Evaluator
from evaluator.evaluation.settings import Settings
from evaluator.evaluation.timing import ReferenceCache, default_cache_path
from evaluator.files import remove_tree
from evaluator.scratch import scratch_folder
from evaluator.software import package_digest


class NodeEvaluator:
    """Evaluates candidates on the node it runs on; created by `RayEvaluator`, one per node, as a Ray actor whose
    methods run on several threads at once (one per lane, and one more for `describe` and `close`)."""

    def __init__(self, trace: Trace, settings: Settings, device: str, lanes: int, spares: int,
                 retime_seed: bool) -> None:
        host = socket.gethostname()
        cache = default_cache_path()
        self._where = {"host": host, "address": ray.util.get_node_ip_address(),
                       "id": ray.get_runtime_context().get_node_id()}
        # With `ray start --num-gpus N`, Ray counts the first N GPUs it sees, as it numbers them.
        gpus = list(range(lanes)) if device == "cuda" else None
        self._evaluator = Evaluator(trace, settings, device=device, gpus=gpus, spares=spares, retime_seed=retime_seed,
                                    seed_references=ReferenceCache(cache.with_name(f"{cache.stem}-{host}.json")))
        self._programs = scratch_folder("cluster-programs-")

    def describe(self) -> dict[str, Any]:
        """Where it is (`host`, `address`, Ray's node `id`), its lanes, their device and card, and which evaluator
        it runs (its version and the digest of its files: the driver uses only nodes that run its own)."""
        lane = self._evaluator.lanes.lanes[0]
        return {"node": self._where, "lanes": self._evaluator.lane_count, "device": lane.device, "card": lane.card,
                "evaluator": __version__, "evaluator_digest": package_digest()}

    def evaluate(self, program: bytes, check: bool, give_up_in_s: float | None) -> dict[str, Any]:
        """Evaluate (or, with `check`, check) the program whose source is `program`; its result as JSON data. With
        `give_up_in_s`, an `infra_error` when no lane of the node is free that many seconds from now."""
        give_up_at = None if give_up_in_s is None else time.monotonic() + give_up_in_s
        folder = Path(tempfile.mkdtemp(dir=self._programs))
        try:
            path = folder / "program.py"
            path.write_bytes(program)
            run = self._evaluator.check if check else self._evaluator.evaluate
            return run(path, give_up_at).to_json()
        finally:
            remove_tree(folder)

    def close(self) -> None:
        self._evaluator.close()
        remove_tree(self._programs)

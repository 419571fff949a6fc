"""`--backend local|ray` and `--address ADDR`, for every command that evaluates: where candidates are evaluated."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from evaluator.cluster.address import ADDRESS_VARIABLE, AUTO, ClusterError, parse_address
from evaluator.cluster.nodes import CPU_LANE_RESOURCE
from evaluator.commands import CommandError
from evaluator.eplb.trace import Trace
from evaluator.evaluation.backend import BACKENDS
from evaluator.evaluation.settings import Settings
from evaluator.exitcodes import ExitCode

if TYPE_CHECKING:
    from evaluator.cluster import RayEvaluator


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="where candidates are evaluated: on this machine's devices, or on the nodes of a Ray "
                             "cluster, one lane per GPU of each node (or per node declaring the resource "
                             f"{CPU_LANE_RESOURCE}) (default: %(default)s)")
    parser.add_argument("--address", type=_address, metavar="ADDR",
                        help=f"with --backend ray: the cluster's head node, HOST:PORT (default: ${ADDRESS_VARIABLE}, "
                             f"else {AUTO!r}, the cluster started on this machine)")


def on_cluster(args: argparse.Namespace) -> bool:
    """Whether the options send candidates to a Ray cluster; a CommandError for cluster options without it."""
    if args.backend == "ray":
        if getattr(args, "gpu_ids", None):
            raise CommandError("--gpu-ids names GPUs of this machine; with --backend ray every GPU of each node of the "
                               "cluster is a lane")
        return True
    if args.address is not None:
        raise CommandError("--address names a Ray cluster: give it with --backend ray")
    return False


def open_cluster(args: argparse.Namespace, trace: Trace, settings: Settings, spares: int = 2,
                 announce: Callable[[str], contextlib.AbstractContextManager[object]] | None = None) -> RayEvaluator:
    """A `RayEvaluator` of `trace` on the cluster the options name, `spares` workers kept started per lane.
    An unreachable cluster, or one whose nodes could not start their lanes, is a CommandError with the
    infrastructure's exit code; one without lanes for `--device`, or without ray installed, a bad input."""
    try:
        from evaluator.cluster import RayEvaluator  # imports ray: only for --backend ray
    except ImportError as error:
        raise CommandError(f"--backend ray: {error}") from None
    try:
        return RayEvaluator(trace, settings, address=args.address, device=args.device, spares=spares,
                            retime_seed=getattr(args, "retime_seed", False), announce=announce)
    except ClusterError as error:
        raise CommandError(str(error), ExitCode.INFRA_ERROR) from None
    except ValueError as error:
        raise CommandError(f"--backend ray: {error}") from None


def _address(text: str) -> str:
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None

"""Options shared by the commands that need a problem shape and a trace: which trace, and its shape."""

from __future__ import annotations

import argparse

from evaluator.commands import CommandError, whole_number
from evaluator.eplb.default_trace import DEFAULT_SEED, default_trace
from evaluator.eplb.holdout import holdout_trace
from evaluator.eplb.problem import MAX_PROBLEM_SIZE, Problem
from evaluator.eplb.synthetic import SyntheticConfig, generate_trace
from evaluator.eplb.trace import STEPS_PER_WINDOW, Trace
from evaluator.eplb.trace_file import load_trace_file

_PROBLEM_OPTIONS = (
    ("--layers", "num_layers", "MoE layers"),
    ("--experts", "num_experts", "logical experts per layer"),
    ("--replicas", "num_replicas", "physical expert slots per layer"),
    ("--groups", "num_groups", "expert groups"),
    ("--nodes", "num_nodes", "nodes"),
    ("--gpus", "num_gpus", "GPUs"),
)


def add_workload_arguments(parser: argparse.ArgumentParser, held_out_by_default: bool = False) -> None:
    """--workload/--holdout/--window and the problem-shape options; where the trace is `held_out_by_default` (a
    loop's command), --default-trace instead of --holdout's absence names the public one."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--workload", metavar="PATH", help='a trace in the published JSON format: {"load_history": [...]}'
    )
    source.add_argument(
        "--holdout", action="store_true", default=held_out_by_default,
        help="a trace from a secret seed that never reaches the candidate: fresh each time, or the one of the key "
             "in $EPLB_EVALUATOR_HOLDOUT_KEY" + (" (the default)" if held_out_by_default else "")
    )
    if held_out_by_default:
        source.add_argument(
            "--default-trace", dest="holdout", action="store_false",
            help="the public default trace instead, which a candidate can regenerate and look its next window up in: "
                 "for comparisons, not for a loop"
        )
    parser.add_argument(
        "--window", type=whole_number(1), metavar="N", help=f"steps summed into one window, with --workload (default: {STEPS_PER_WINDOW})"
    )
    default = Problem()
    problem = parser.add_argument_group("problem shape (default: DeepSeek-V3 prefill)")
    for flag, field, what in _PROBLEM_OPTIONS:
        problem.add_argument(
            flag, dest=field, type=whole_number(1, MAX_PROBLEM_SIZE), default=getattr(default, field), metavar="N",
            help=f"{what} (default: %(default)s)"
        )


def problem_from(args: argparse.Namespace) -> Problem:
    """The problem shape the options give; a CommandError for one that cannot be."""
    try:
        return Problem(**{field: getattr(args, field) for _, field, _ in _PROBLEM_OPTIONS})
    except ValueError as error:
        raise CommandError(str(error)) from None


def trace_from(args: argparse.Namespace, problem: Problem) -> Trace:
    """The trace the options name: a file, a fresh held-out trace, or the default for the problem's shape."""
    if args.window is not None and args.workload is None:
        raise CommandError(f"--window applies to --workload only: the default and held-out traces have "
                           f"{STEPS_PER_WINDOW}-step windows")
    try:
        if args.workload is not None:
            return load_trace_file(args.workload, problem, STEPS_PER_WINDOW if args.window is None else args.window)
        if args.holdout:
            return holdout_trace(problem)
        return default_trace_for(problem)
    except ValueError as error:  # a TraceError
        raise CommandError(str(error)) from None


def default_trace_for(problem: Problem) -> Trace:
    """The embedded default trace, or for another shape the default generator's trace from the same seed."""
    default = default_trace()
    if default.windows.shape[1:] == (problem.num_layers, problem.num_experts) and problem.num_groups == Problem().num_groups:
        return default
    return generate_trace(SyntheticConfig.for_problem(problem), DEFAULT_SEED)

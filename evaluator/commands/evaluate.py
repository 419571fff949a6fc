"""`evaluate PROGRAM...`: run candidate programs in isolation, validate and score them."""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from evaluator.commands import MAX_SECONDS, CommandError, add_device_argument, positive_number, whole_number
from evaluator.commands.workload import add_workload_arguments, problem_from, trace_from
from evaluator.eplb.problem import Problem
from evaluator.eplb.trace import Trace
from evaluator.evaluation.result import Result
from evaluator.evaluation.settings import Settings
from evaluator.evaluation.timing import ReferenceCache, default_cache_path
from evaluator.exitcodes import ExitCode
from evaluator.sandbox import Limits
from evaluator.software import software
from evaluator.untrusted import TEXT_CHARS, quoted
from evaluator.status import Status

if TYPE_CHECKING:
    from evaluator.evaluation.evaluate import Evaluator

NAME = "evaluate"
HELP = "Run candidate programs in isolated workers, validate every output and score them."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("programs", nargs="+", metavar="PROGRAM", type=Path, help="candidate program files")
    parser.add_argument("--json", action="store_true", help="print one JSON object per program instead of text")
    add_evaluation_arguments(parser)


def add_evaluation_arguments(parser: argparse.ArgumentParser, held_out_by_default: bool = False) -> None:
    """Options of every command that evaluates: limits, device, seed timing, workload and problem shape (the trace
    `held_out_by_default` for a loop's command)."""
    defaults = Settings()
    parser.add_argument("--timeout", type=positive_number(MAX_SECONDS), default=defaults.timeout_s, metavar="S",
                        help="wall-clock limit for one candidate, import and every call (default: %(default)s)")
    parser.add_argument("--memory-mb", type=whole_number(1, 2**30), default=defaults.limits.memory_mb, metavar="MB",
                        help="host memory limit of a candidate's process tree (default: %(default)s)")
    parser.add_argument("--gpu-memory-mb", type=whole_number(1, 2**30), default=defaults.limits.gpu_memory_mb,
                        metavar="MB", help="GPU memory limit of a candidate's process tree, beyond its worker's CUDA "
                                           "context (default: %(default)s)")
    add_device_argument(parser)
    parser.add_argument("--gpu-ids", dest="gpu_ids", type=_gpu_list, metavar="LIST",
                        help="GPUs to run candidates on, one candidate per GPU at a time, e.g. 0,1 "
                             "(default: every visible GPU)")
    parser.add_argument("--retime-seed", action="store_true",
                        help="measure the seed's reference (its ratio to the yardstick) again instead of using the cached "
                             "one for this device and software")
    add_workload_arguments(parser, held_out_by_default)


class _Refusing(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def evaluation_parser() -> argparse.ArgumentParser:
    """The evaluation options of a loop's command: those of `evaluate`, with the trace held out unless told
    otherwise. A bad option raises ValueError."""
    parser = _Refusing(prog="evaluation options", add_help=False)
    add_evaluation_arguments(parser, held_out_by_default=True)
    return parser


def evaluation_inputs(args: argparse.Namespace) -> tuple[Problem, Trace]:
    """The problem and the trace the options name."""
    problem = problem_from(args)
    return problem, trace_from(args, problem)


def settings_from(args: argparse.Namespace, problem: Problem) -> Settings:
    """The settings the evaluation options give, for `problem`."""
    limits = Limits(timeout_s=args.timeout, import_timeout_s=args.timeout, memory_mb=args.memory_mb,
                    gpu_memory_mb=args.gpu_memory_mb)
    return Settings(problem=problem, timeout_s=args.timeout, limits=limits)


def open_evaluator(args: argparse.Namespace, problem: Problem, trace: Trace, programs: int = 1) -> Evaluator:
    """An Evaluator of `trace`, configured from the command's options, for `programs` evaluations (for one, no
    spare starts beside the candidate being timed)."""
    from evaluator.evaluation.evaluate import Evaluator  # imports torch: not at the top, which --help runs
    try:
        return Evaluator(trace, settings_from(args, problem), device=args.device,
                         gpus=args.gpu_ids, seed_references=ReferenceCache(default_cache_path()),
                         retime_seed=args.retime_seed, replenish=programs > 1)
    except ValueError as error:
        raise _device_error(args, error) from None


def measured_here(args: argparse.Namespace) -> dict[str, Any]:
    """Where an evaluation configured by `args` would measure, as a result records it (`device`, `card`, the
    `software` versions that change timings or scores), found without starting a worker."""
    from evaluator.evaluation.lanes import first_lane_card  # imports torch, as above

    try:
        device, card = first_lane_card(args.device, args.gpu_ids)
    except ValueError as error:
        raise _device_error(args, error) from None
    return {"device": device, "card": card, "software": software()}


def _device_error(args: argparse.Namespace, error: ValueError) -> CommandError:
    option = f"--gpu-ids {','.join(map(str, args.gpu_ids))}" if args.gpu_ids else f"--device {args.device}"
    return CommandError(f"{option}: {error}")


def _gpu_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices separated by commas, e.g. 0,1; got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    folders = [str(path) for path in args.programs if path.is_dir()]
    if folders:
        raise CommandError(f"a folder, not a program file: {', '.join(folders)}")
    missing = [str(path) for path in args.programs if not path.is_file()]
    if missing:
        raise CommandError(f"no such program file: {', '.join(missing)}")
    exit_code = ExitCode.OK
    total = len(args.programs)
    with open_evaluator(args, *evaluation_inputs(args), programs=total) as evaluator:
        # One more thread than devices: a candidate is launched and scored while others are timed.
        with ThreadPoolExecutor(len(evaluator.lanes.lanes) + 1 if total > 1 else 1) as threads:
            pending = {threads.submit(evaluator.evaluate, program): program for program in args.programs}
            for done, future in enumerate(as_completed(pending), start=1):
                result = future.result()
                if total > 1:
                    print(f"[{done}/{total}] {pending[future]}: {result.status}", file=sys.stderr, flush=True)
                note_cpu_fallback(result, args.device, first=done == 1)
                report(result, str(pending[future]), args.json)
                exit_code = max(exit_code, exit_code_of(result))
    return exit_code


def exit_code_of(result: Result) -> ExitCode:
    """The command's exit code for one evaluation's result."""
    if result.ok:
        return ExitCode.OK
    return ExitCode.INFRA_ERROR if result.status == Status.INFRA_ERROR else ExitCode.CANDIDATE_FAILED


def note_cpu_fallback(result: Result, device: str, first: bool) -> None:
    """Say once, on standard error, that `--device auto` found no GPU and ran on the CPU."""
    if first and device == "auto" and result.device == "cpu":
        print("note: no GPU found, so candidates run on the CPU; the seed is timed on the same CPU, so speedups "
              "stay comparable, but GPU-only tricks show no gain here", file=sys.stderr)


def report(result: Result, label: str, as_json: bool) -> None:
    """Print one result: a JSON object, or a short text for people."""
    if as_json:
        print(json.dumps({"program": label, **result.to_json()}))
        return
    print(f"{label}: {result.status}")
    if not result.ok:
        print(quoted(result.error or "", TEXT_CHARS, indent="  "))
        if result.stderr.strip():
            print("  stderr (last lines):\n" + quoted("\n".join(result.stderr.strip().splitlines()[-15:]), TEXT_CHARS,
                                                     indent="  "))
        return
    print(f"  balancedness   {result.balancedness_score:.4f}  (seed {result.seed_balancedness:.4f}, seed planning "
          f"on the future {result.reference_balancedness:.4f}, per slot {result.slot_balancedness:.4f})")
    low, high = result.speedup_interval or (result.speedup, result.speedup)
    print(f"  time per call  {result.time_ms:.3f} ms  (seed {result.seed_time_ms:.3f} ms at the same pace): "
          f"{result.speedup:.2f}x (95% interval {low:.2f} to {high:.2f}), speed_score {result.speed_score:.4f}")
    print(f"  combined_score {result.combined_score:.4f}")
    print(f"  device         {result.device} ({result.card}), torch {result.software.get('torch')}")
    timing = result.timing
    if timing.get("claims_doubted"):
        print(f"  timing         {timing['claims_doubted']} of {timing['batches']} batches were timed at their round trip: "
              "the worker's clock claimed less than the harness allows")
    if timing.get("scored_work", "agrees") != "agrees":
        print(f"  timing         {timing['scored_work']}")

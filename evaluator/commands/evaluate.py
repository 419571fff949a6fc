"""`evaluate PROGRAM...`: run candidate programs in isolation, validate and score them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from evaluator.commands import (
    MAX_SECONDS,
    CommandError,
    add_device_argument,
    add_store_argument,
    positive_number,
    whole_number,
)
from evaluator.commands.cluster import add_backend_arguments, on_cluster, open_cluster
from evaluator.commands.inputs import path_is
from evaluator.commands.reuse import REUSED, add_force_argument, may_reuse, stored_result
from evaluator.commands.stored import SCORE_COLUMNS, SCORE_HEADERS, scores_of
from evaluator.commands.terminal import Activity, show, table
from evaluator.commands.workload import add_workload_arguments, problem_from, trace_from
from evaluator.eplb.problem import Problem
from evaluator.eplb.trace import Trace
from evaluator.evaluation.result import Result, workload_summary
from evaluator.evaluation.settings import Settings
from evaluator.exitcodes import ExitCode
from evaluator.sandbox import Limits
from evaluator.software import software
from evaluator.store import CandidateStore, StoredCandidate, StoreError
from evaluator.untrusted import TEXT_CHARS, quoted
from evaluator.status import Status

if TYPE_CHECKING:
    from rich.console import RenderableType

    from evaluator.evaluation.backend import CandidateEvaluator

NAME = "evaluate"
HELP = ("Run candidate programs (files, or stored candidates by id, whose results are kept with them) in isolated "
        "workers, validate every output and score them.")
_MAX_CLUSTER_THREADS = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("programs", nargs="+", metavar="PROGRAM",
                        help="a program file, or a stored candidate's id (or a unique prefix of at least 4 "
                             "characters), whose result is kept with it; a file of that name wins")
    parser.add_argument("--json", action="store_true", help="print one JSON object per program instead of text")
    add_store_argument(parser)
    add_force_argument(parser)
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
    add_backend_arguments(parser)
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


def open_evaluator(args: argparse.Namespace, problem: Problem, trace: Trace, programs: int = 1,
                   announce: Callable[[str], AbstractContextManager[object]] | None = None) -> CandidateEvaluator:
    """An evaluator of `trace`, configured from the command's options (on a Ray cluster with `--backend ray`), for
    `programs` evaluations (for one, no spare starts beside the candidate being timed); `announce` as for
    `Evaluator`."""
    if on_cluster(args):
        return open_cluster(args, trace, settings_from(args, problem), announce=announce)
    from evaluator.evaluation.evaluate import Evaluator  # imports torch: not at the top, which --help runs
    try:
        return Evaluator(trace, settings_from(args, problem), device=args.device,
                         gpus=args.gpu_ids, retime_seed=args.retime_seed, replenish=programs > 1, announce=announce)
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


@dataclass(frozen=True)
class _Program:
    path: Path
    label: str  # as reports name it
    stored: StoredCandidate | None  # whose results it is kept with


def run(args: argparse.Namespace) -> int:
    programs = _programs(args.programs, args.store)
    problem, trace = evaluation_inputs(args)
    workload = workload_summary(trace, problem)
    here = measured_here(args) if may_reuse(args) and any(program.stored for program in programs) else None
    results: dict[int, Result] = {}
    total = len(programs)
    with Activity(f"evaluating {total} programs" if total > 1 else f"evaluating {programs[0].label}",
                  total if total > 1 else None) as activity:
        for number, program in enumerate(programs):
            reused = None if here is None or program.stored is None else stored_result(program.stored, workload, here)
            if reused is not None:
                results[number] = _finish(program, reused, True, args, activity, total)
        pending = [number for number in range(total) if number not in results]
        if pending:
            with open_evaluator(args, problem, trace, programs=len(pending), announce=activity.doing) as evaluator:
                with ThreadPoolExecutor(_threads(args, evaluator, len(pending))) as threads:
                    futures = {threads.submit(evaluator.evaluate, programs[number].path): number for number in pending}
                    for done, future in enumerate(as_completed(futures)):
                        number = futures[future]
                        note_cpu_fallback(future.result(), args.device, first=done == 0)
                        results[number] = _finish(programs[number], future.result(), False, args, activity, total)
    if total > 1 and not args.json:
        show("", _summary([(program.label, results[number]) for number, program in enumerate(programs)]))
    return max(exit_code_of(result) for result in results.values())


def _threads(args: argparse.Namespace, evaluator: CandidateEvaluator, programs: int) -> int:
    """Locally one more thread than devices: a candidate is launched and scored while others are timed. On a cluster
    one per program (at most `_MAX_CLUSTER_THREADS`): a thread waits for a lane on its driver, and nodes that join
    the cluster meanwhile add lanes."""
    if on_cluster(args):
        return max(1, min(programs, _MAX_CLUSTER_THREADS))
    return evaluator.lane_count + 1 if programs > 1 else 1


def _programs(specs: list[str], store_root: Path) -> list[_Program]:
    """Each spec as a program file if there is one, else as a stored candidate; a CommandError naming every spec that
    is neither."""
    programs, folders, unknown = [], [], []
    for spec in specs:
        path = Path(spec)
        if path_is(path, Path.is_dir):
            folders.append(spec)
        elif path_is(path, Path.is_file):
            programs.append(_Program(path, str(path), None))
        else:
            try:
                stored = CandidateStore(store_root).get(spec)
            except StoreError as error:
                unknown.append(f"{spec}: no such program file, and {error}")
                continue
            programs.append(_Program(stored.program_path, f"candidate {stored.id}", stored))
    if folders:
        raise CommandError(f"a folder, not a program file: {', '.join(folders)}")
    if unknown:
        raise CommandError("; ".join(unknown))
    return programs


def _finish(program: _Program, result: Result, reused: bool, args: argparse.Namespace, activity: Activity,
            total: int) -> Result:
    """Keep a new result with its stored candidate, and report it."""
    if program.stored is not None and not reused:
        program.stored.add_result(result.to_json())
    if total > 1:
        activity.done(f"{program.label}: {result.status}" + (" (reused)" if reused else ""))
    about = {} if program.stored is None else {"candidate": program.stored.id, "reused": reused}
    report(result, str(program.path) if args.json else program.label, args.json, about)
    if reused and not args.json:
        print(f"  {REUSED}")
    return result


def _summary(results: list[tuple[str, Result]]) -> RenderableType:
    """One row per program: its status and scores."""
    rows = [[label, *scores_of(result.to_json()).cells()] for label, result in results]
    return table(["program", *SCORE_HEADERS], rows, right=SCORE_COLUMNS)


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


def report(result: Result, label: str, as_json: bool, about: Mapping[str, Any] | None = None) -> None:
    """Print one result: a JSON object (with the fields of `about` after the program's label), or a short text for
    people."""
    if as_json:
        print(json.dumps({"program": label, **(about or {}), **result.to_json()}))
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
    node = f", node {result.node['host']} ({result.node['address']})" if result.node else ""
    print(f"  device         {result.device} ({result.card}), torch {result.software.get('torch')}{node}")
    timing = result.timing
    if timing.get("claims_doubted"):
        print(f"  timing         {timing['claims_doubted']} of {timing['batches']} batches were timed at their round trip: "
              "the worker's clock claimed less than the harness allows")
    if timing.get("scored_work", "agrees") != "agrees":
        print(f"  timing         {timing['scored_work']}")

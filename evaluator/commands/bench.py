"""`bench BENCHMARK`: measure the evaluator's own performance on this machine."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# the benchmarks that run evaluators import torch, so each is imported where it runs: `--help` does not need it
from evaluator.bench import trace_load
from evaluator.commands import MAX_SECONDS, CommandError, add_device_argument, positive_number, whole_number
from evaluator.commands.cluster import add_backend_arguments, on_cluster, open_cluster
from evaluator.eplb.trace import STEPS_PER_WINDOW
from evaluator.evaluation.settings import Settings
from evaluator.exitcodes import ExitCode
from evaluator.sandbox import START_METHODS, SandboxFailure
from evaluator.untrusted import TEXT_CHARS, one_line

if TYPE_CHECKING:
    from evaluator.bench.cluster import ClusterBenchResult

NAME = "bench"
HELP = "Measure the evaluator's own performance on this machine."


@dataclass(frozen=True)
class _Benchmark:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_trace_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size-mb", type=positive_number(2**20), default=trace_load.DEFAULT_SIZE_BYTES / 1e6, metavar="MB",
        help="size of the trace file to write and load, in megabytes (default: %(default)s)",
    )
    parser.add_argument("--window", type=whole_number(1), default=STEPS_PER_WINDOW, metavar="N",
                        help="steps per window (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _run_trace_load(args: argparse.Namespace) -> int:
    try:
        result = trace_load.measure(round(args.size_mb * 1e6), args.window)
    except RuntimeError as error:
        raise CommandError(str(error), ExitCode.INFRA_ERROR) from None
    except OSError as error:
        raise CommandError(f"cannot write the trace file: {error}", ExitCode.INFRA_ERROR) from None
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        print(
            f"loaded {result.file_bytes / 1e6:.0f} MB ({result.steps} steps, {result.windows} windows of "
            f"{result.window}) in {result.seconds:.1f} s; peak memory {result.peak_rss_bytes / 2**20:.0f} MiB "
            f"({result.imports_rss_bytes / 2**20:.0f} MiB before loading); {result.cpus} CPUs, {result.machine}"
        )
    return ExitCode.OK


def _add_evaluator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=whole_number(1, 10**4), default=10, metavar="N",
                        help="A/A runs of the same candidate (default: %(default)s)")
    parser.add_argument("--candidates", type=whole_number(1, 10**4), default=60, metavar="N",
                        help="candidates evaluated back to back for the throughput (default: %(default)s)")
    parser.add_argument("--threads", type=whole_number(1, 10**4), default=2, metavar="N",
                        help="threads submitting candidates for the throughput (default: %(default)s)")
    parser.add_argument("--spares", type=whole_number(1, 10**4), default=8, metavar="N",
                        help="workers kept started ahead (default: %(default)s)")
    parser.add_argument("--rechecks", type=whole_number(0, 10**4), default=Settings().rechecks, metavar="N",
                        help="calls repeated in a second fresh process per candidate; 0 for none (default: %(default)s)")
    parser.add_argument("--start-method", choices=START_METHODS, default=Settings().start_method,
                        help="how workers start: forked from a zygote, or each a new interpreter (default: %(default)s)")
    add_device_argument(parser)
    add_backend_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _run_evaluator(args: argparse.Namespace) -> int:
    settings = Settings(rechecks=args.rechecks, start_method=args.start_method)
    cluster = on_cluster(args)
    try:
        if cluster:
            result = _measure_cluster(args, settings)
        else:
            from evaluator.bench import evaluation

            result = evaluation.measure(args.repeats, args.candidates, args.threads, args.spares, args.device,
                                        settings)
    except RuntimeError as error:
        raise CommandError(str(error), ExitCode.INFRA_ERROR) from None
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
        return ExitCode.OK
    if cluster:
        _print_cluster(result)
        return ExitCode.OK
    print(f"device              {result.device} ({result.card}), torch {result.torch_version}, {result.cpus} CPUs")
    print(f"candidate           seed patch, {result.candidate_time_ms:.3f} ms per call; seed {result.seed_time_ms:.1f} ms")
    print(f"overhead            {result.overhead_s_median:.3f} s per candidate (median; max {result.overhead_s_max:.3f} s), "
          f"evaluation {result.evaluation_s_median:.3f} s")
    print(f"throughput          {result.candidates_per_minute:.1f} candidates per minute ({result.throughput_candidates} "
          f"candidates, {result.threads} threads, {result.spares} spare workers)")
    print(f"lanes               busy {100 * result.lanes_busy:.0f}% of the throughput run, held "
          f"{result.lane_s_per_candidate:.3f} s per candidate (median)")
    print(f"A/A speedup         mean {result.aa_speedup_mean:.2f}x, coefficient of variation "
          f"{100 * result.aa_speedup_cv:.2f}% over {result.aa_runs} runs; calls per batch {result.calls_per_batch[0]}, "
          f"precision {100 * statistics.median(result.precision):.1f}% (median); lane "
          f"{'on a core of its own' if result.isolated else 'sharing the cores'}")
    runs = result.runs
    print(f"runs                batches {runs.batches:g}, yardstick rounds {runs.yardstick_rounds:g}, unsteady "
          f"batches {runs.unsteady_batches:g}, claims doubted {runs.claims_doubted:g} (medians); a batch's harness "
          f"{runs.harness_ms_per_batch:.2f} ms (expected {runs.expected_ms_per_batch:.2f} ms)")
    phases = ", ".join(f"{name.removesuffix('_ms')} {value:.0f}" for name, value in result.phases_ms_median.items())
    print(f"phases (ms)         {phases}")
    overheads = ", ".join(f"{name.removesuffix('_ms')} {value:.0f}"
                          for name, value in result.phase_overhead_ms_median.items())
    print(f"  less compute      {overheads}")
    harness = result.harness
    print(f"harness             {harness['fixed_ms']:.3f} ms a batch, {harness['per_call_ms']:.3f} ms a call, "
          f"{harness['per_mb_ms']:.3f} ms a MB of outputs")
    print(f"scoring a trace     {result.scoring_ms:.2f} ms")
    print(f"worker start        {result.worker_start_s:.2f} s ({result.start_method}), warmed up and ready")
    return ExitCode.OK


def _measure_cluster(args: argparse.Namespace, settings: Settings) -> ClusterBenchResult:
    """Candidates per minute against the number of the cluster's lanes kept busy."""
    from evaluator.bench import cluster
    from evaluator.eplb.default_trace import default_trace

    with open_cluster(args, default_trace(), settings, spares=args.spares) as evaluator:
        return cluster.measure(evaluator, args.candidates)


def _print_cluster(result: ClusterBenchResult) -> None:
    print(f"cluster             {len(result.nodes)} nodes, {result.lanes} lanes")
    for node in result.nodes:
        why = f": {one_line(node['why'], TEXT_CHARS)}" if node.get("why") else ""
        print(f"  {node.get('host', '?')} ({node['address']}, node {node['id'][:12]})  {node['state']}, "
              f"{node['lanes']} x {node['device']} ({node['card']}){why}")
    print(f"{'lanes':>5} {'candidates':>10} {'seconds':>8} {'per minute':>10} {'per lane':>8}")
    for row in result.throughput:
        print(f"{row.lanes:5} {row.candidates:10} {row.seconds:8.1f} {row.candidates_per_minute:10.1f} "
              f"{row.candidates_per_minute / row.lanes:8.1f}")


def _add_aa_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--copies", type=whole_number(2, 10**4), default=6, metavar="N",
                        help="evaluations of each speed class, shuffled in one run (default: %(default)s)")
    parser.add_argument("--processes", type=whole_number(2, 10**4), default=6, metavar="N",
                        help="fresh processes timing each class without the harness (default: %(default)s)")
    parser.add_argument("--spares", type=whole_number(1, 10**4), default=4, metavar="N",
                        help="workers kept started ahead (default: %(default)s)")
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _measured(measure: Callable[[], Any], as_json: bool) -> Any:
    """What `measure` returns, or None once it is printed as JSON (`as_json`). A RuntimeError, a benchmark that could
    not measure, is an infra error."""
    try:
        result = measure()
    except RuntimeError as error:
        raise CommandError(str(error), ExitCode.INFRA_ERROR) from None
    if as_json:
        print(json.dumps(dataclasses.asdict(result)))
        return None
    return result


def _run_aa(args: argparse.Namespace) -> int:
    from evaluator.bench import aa

    result = _measured(lambda: aa.measure(args.copies, args.processes, args.device, args.spares), args.json)
    if result is None:
        return ExitCode.OK
    print(f"device {result.device} ({result.card}), torch {result.torch_version}, {result.cpus} CPUs; "
          f"{result.copies} copies of each class, {result.processes} processes in-process; lane CPUs "
          f"{result.lane_cpus or 'shared'}; {result.seconds:.0f} s")
    print(f"{'class':24} {'time ms':>9} {'A/A CV':>7} {'max/min':>7} {'precision':>9} {'in-process ms':>13} "
          f"{'floor CV':>8} {'floor max/min':>13} {'bias':>7}  targets")
    for row in result.classes:
        verdicts = ", ".join(f"{name} {verdict}" for name, verdict in row.targets().items())
        print(f"{row.name:24} {row.time_ms:9.3f} {100 * row.speedup_cv:6.1f}% {row.speedup_max_over_min:7.3f} "
              f"{100 * row.precision:8.1f}% {row.in_process_ms:13.3f} {100 * row.in_process_cv:7.1f}% "
              f"{row.in_process_max_over_min:13.3f} {100 * row.bias:6.1f}%  {verdicts}"
              + (f"  ({row.failed} failed)" if row.failed else ""))
    if any(row.against for row in result.classes):
        print("the speedups' CV (max/min) read against each yardstick alone:")
        for row in result.classes:
            print(f"  {row.name:24} " + ", ".join(f"{name} {100 * cv:.1f}% ({spread:.3f})"
                                                 for name, (cv, spread) in row.against.items()))
    return ExitCode.OK


def _add_clock_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--copies", type=whole_number(1, 10**4), default=3, metavar="N",
                        help="evaluations of each speed class's program, honest and lying, shuffled in one run "
                             "(default: %(default)s)")
    parser.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                        help="a speed class to measure, by the name `bench aa` prints it; again for more "
                             "(default: all four)")
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _run_clock(args: argparse.Namespace) -> int:
    from evaluator.bench import clock
    from evaluator.bench.speed_classes import SPEED_CLASSES

    names = [speed.name for speed in SPEED_CLASSES]
    unknown = [name for name in args.classes if name not in names]
    if unknown:
        raise CommandError(f"argument --class: {one_line(unknown[0], TEXT_CHARS)!r} is not a speed class; expected one "
                           f"of {', '.join(names)}")
    result = _measured(lambda: clock.measure(args.copies, args.device, args.classes), args.json)
    if result is None:
        return ExitCode.OK
    print(f"device {result.device} ({result.card}), torch {result.torch_version}; {result.copies} copies of each "
          f"program, honest and with a clock that claims a microsecond a batch; {result.seconds:.0f} s")
    print(f"{'class':24} {'honest':>9} {'lying':>9} {'gain':>6} {'doubted':>7}  harness ms a call, measured "
          "(expected); the honest copies' largest excess")
    for row in result.classes:
        print(f"{row.name:24} {row.honest_speedup:9.3f} {row.lying_speedup:9.3f} {row.gain:6.3f} "
              f"{100 * row.doubted:6.0f}%  {row.harness_ms:.4f} ({row.expected_ms:.4f}); {row.honest_excess:.2f}"
              + (f"  ({row.failed} failed)" if row.failed else ""))
    return ExitCode.OK


def _seconds_arguments(minimum: float, default: float, what: str) -> Callable[[argparse.ArgumentParser], None]:
    """The arguments of a benchmark that runs for `--seconds` (at least `minimum`): what runs that long, `what`."""
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seconds", type=positive_number(MAX_SECONDS, minimum=minimum), default=default,
                            metavar="S", help=f"how long {what} (default: %(default)s)")
        add_device_argument(parser)
        parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return add_arguments


def _run_pace(args: argparse.Namespace) -> int:
    try:
        from evaluator.bench import pace

        result = pace.measure(args.seconds, device=args.device)
    except SandboxFailure as error:
        raise CommandError(f"a worker failed: {error.failure.message}", ExitCode.INFRA_ERROR) from None
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
        return ExitCode.OK
    print(f"device              {result.device} ({result.card}), {result.cpus} CPUs, {result.rounds} rounds of 1 s")
    print(f"seed patch program  {result.program_ms:.3f} ms per call; drift between rounds (CV) "
          f"{100 * result.drift_cv:.2f}%")
    print(f"two workers         the ratio of their round medians varies by {100 * result.pair_ratio_cv:.2f}% (CV)")
    print(f"python loop         {result.python_loop_ms:.3f} ms; drift between rounds (CV) "
          f"{100 * result.python_loop_cv:.2f}%")
    print(f"round trip          {result.round_trip_overhead_ms:.3f} ms per call beyond the program's compute")
    print(f"first call          {result.first_call_cold_ms:.1f} ms in a cold worker, "
          f"{result.first_call_warm_ms:.1f} ms after the warm-up")
    beside = "-" if result.beside_teardown_ms is None else f"{result.beside_teardown_ms:.3f} ms"
    where = ("on a lane's core, the exiting processes moved off it" if result.teardown_on_a_lane
             else "no core of its own: too few CPUs for a lane's")
    print(f"beside a teardown   {beside} per call while another worker's processes exit "
          f"({result.teardown_ms:.0f} ms each), {result.quiet_ms:.3f} ms alone ({where})")
    return ExitCode.OK


def _run_tracking(args: argparse.Namespace) -> int:
    from evaluator.bench import tracking

    result = _measured(lambda: tracking.measure(args.seconds, args.device), args.json)
    if result is None:
        return ExitCode.OK
    print(f"device {result.device} ({result.card}), torch {result.torch_version}, {result.cpus} CPUs; lane CPUs "
          f"{result.lane_cpus or 'shared'}; {result.seconds_per_class:g} s a class, {result.seconds:.0f} s in all")
    print(f"slowed batches: {tracking.EVALUATORS} around them over {tracking.SLOWED:g} times its usual time; each "
          "figure a median time in slowed batches over usual ones")
    print("(1.00: the yardstick follows the class; -: too few slowed or usual batches)")
    columns = list(result.classes[0].slowed_over_usual)
    width = max(map(len, columns))
    print(f"{'class':24} {'batches':>7} {'slowed':>6} {'time ms':>9}  "
          + "  ".join(f"{name:>{width}}" for name in columns))
    for row in result.classes:
        print(f"{row.name:24} {row.batches:7} {row.slowed_batches:6} {row.time_ms:9.3f}  "
              + "  ".join(f"{_ratio(value):>{width}}" for value in row.slowed_over_usual.values()))
    print("the yardsticks themselves in each class's run, slowed over usual (their median time per call):")
    for row in result.classes:
        print(f"  {row.name:22} " + ", ".join(
            f"{name} {_ratio(value)} ({row.yardsticks_ms[name]:.3f} ms)"
            for name, value in row.yardsticks_slowed_over_usual.items()))
    return ExitCode.OK


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("evaluations", type=whole_number(1, 10**6), metavar="N",
                        help="evaluations in all, at least one of each program")
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _run_soak(args: argparse.Namespace) -> int:
    from evaluator.bench import soak

    if args.evaluations < len(soak.PROGRAMS):
        raise CommandError(f"argument N: expected at least {len(soak.PROGRAMS)} evaluations, one of each program, got "
                           f"{args.evaluations}")
    result = soak.measure(args.evaluations, args.device)
    if args.json:
        print(json.dumps({**dataclasses.asdict(result), "rss_growth_mb": result.rss_growth_mb,
                          "left_nothing": result.left_nothing}))
    else:
        print(f"{result.evaluations} evaluations in {result.seconds:.0f} s on {result.device}")
        for name, counts in result.statuses.items():
            print(f"  {name:12} " + ", ".join(f"{status} {count}" for status, count in sorted(counts.items())))
        print(f"left behind         {len(result.processes_left)} processes, {result.children_left} children, "
              f"{len(result.scratch_left)} scratch folders; descriptors {result.descriptors[0]} -> "
              f"{result.descriptors[1]}, /dev/shm files {result.shm_files[0]} -> {result.shm_files[1]}")
        print(f"evaluator memory    {result.rss_mb[0]:.0f} MiB after the first tenth, {result.rss_mb[-1]:.0f} MiB at "
              f"the end ({result.rss_growth_mb:+.1f} MiB)")
        print(f"honest results      {'all identical to their first' if not result.honest_mismatches else ''}")
        for mismatch in result.honest_mismatches:
            print(f"  {one_line(mismatch, TEXT_CHARS)}")
    return ExitCode.OK if result.left_nothing else ExitCode.REGRESSION


BENCHMARKS = (
    _Benchmark(
        "evaluator",
        "Overhead per candidate, candidates per minute and A/A noise, on the seed patch's program.",
        _add_evaluator_arguments,
        _run_evaluator,
    ),
    _Benchmark(
        "aa",
        "A/A noise of the speedup at four speeds (0.5 to 60 ms per call), against the host's in-process floor.",
        _add_aa_arguments,
        _run_aa,
    ),
    _Benchmark(
        "clock",
        "What a program whose clock lies gains at each speed: each speed class's program, honest and lying.",
        _add_clock_arguments,
        _run_clock,
    ),
    _Benchmark(
        "pace",
        "How still this machine's pace holds: the A/A noise any evaluator would see here.",
        _seconds_arguments(2.0, 30.0, "the two workers take turns"),
        _run_pace,
    ),
    _Benchmark(
        "tracking",
        "How each speed class's time follows the host's pace, against the evaluator's yardstick and programs of the "
        "candidates' kind on the device.",
        _seconds_arguments(1.0, 10.0, "each class's batches take turns with the yardsticks"),
        _run_tracking,
    ),
    _Benchmark(
        "soak",
        "N evaluations of honest and hostile programs in one evaluator; what it leaves behind (exit 1 if anything).",
        _add_soak_arguments,
        _run_soak,
    ),
    _Benchmark(
        "trace-load",
        "Write a synthetic trace in the published JSON format and time loading it in a fresh process.",
        _add_trace_load_arguments,
        _run_trace_load,
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for benchmark in BENCHMARKS:
        sub = benchmarks.add_parser(benchmark.name, help=benchmark.help, description=benchmark.help)
        benchmark.add_arguments(sub)
        sub.set_defaults(run_benchmark=benchmark.run)


def run(args: argparse.Namespace) -> int:
    return args.run_benchmark(args)

"""`init openevolve|shinka DIR`: write a ready-to-run set-up of a loop framework into a new folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluator.commands import CommandError, whole_number
from evaluator.commands.cluster import on_cluster
from evaluator.commands.evaluate import add_evaluation_arguments, evaluation_inputs, evaluation_parser, settings_from
from evaluator.loops.setup import DEFAULT_API_BASE, NAMES, OUTPUTS, LoopSetup, setup_files, write_setup

NAME = "init"
HELP = "Write a ready-to-run OpenEvolve or ShinkaEvolve set-up into a new folder."
EPILOG = """\
The folder gets the seed program, the framework's evaluation file and configuration (the task the LLM reads,
rendered from the evaluator's settings, and limits that agree with them) and run.sh, which runs the framework with
its outputs inside the folder. Candidates score on a held-out trace unless told otherwise (--default-trace,
--workload): run.sh makes the key of its run and keeps it in the run's environment only. The evaluation options
below go into the set-up as given.

  python -m evaluator init openevolve eplb-openevolve --model my-model --api-base http://localhost:8000/v1
  eplb-openevolve/run.sh"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("framework", choices=sorted(NAMES), help="the loop framework")
    parser.add_argument("folder", type=Path, metavar="DIR", help="the set-up's folder: new, or empty")
    parser.add_argument("--model", default="gpt-4.1",
                        help="the LLM's name, as its server knows it (default: %(default)s)")
    parser.add_argument("--api-base", metavar="URL",
                        help=f"an OpenAI-compatible server (default: OpenAI's, {DEFAULT_API_BASE})")
    parser.add_argument("--iterations", type=whole_number(1), default=100, metavar="N",
                        help="OpenEvolve's iterations, ShinkaEvolve's generations (default: %(default)s)")
    parser.add_argument("--parallel", type=whole_number(1, 256), default=2, metavar="N",
                        help="evaluations at once; evaluators take turns on each GPU (default: %(default)s)")
    add_evaluation_arguments(parser, held_out_by_default=True)


def run(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    try:
        occupied = folder.exists() and (not folder.is_dir() or any(folder.iterdir()))
    except OSError as error:  # a name too long, a folder it may not read
        raise CommandError(f"cannot write a set-up into {folder}: {error}") from None
    if occupied:
        raise CommandError(f"{folder} is not an empty folder: init writes a new set-up, and overwrites nothing")
    problem, _ = evaluation_inputs(args)  # a bad trace or shape is an error now, not in the loop's first job
    on_cluster(args)  # and so are cluster options that do not go together
    setup = LoopSetup(framework=args.framework, options=tuple(evaluation_options(args)),
                      settings=settings_from(args, problem), held_out=args.holdout and args.workload is None,
                      model=args.model, api_base=args.api_base, iterations=args.iterations, parallel=args.parallel)
    files = setup_files(setup)
    try:
        write_setup(folder, files)
    except OSError as error:
        raise CommandError(f"cannot write the set-up into {folder}: {error}") from None
    print(f"wrote {NAMES[args.framework]}'s set-up into {folder}: {', '.join(files)}")
    print(f"run it with {folder / 'run.sh'}; its outputs go to {folder / OUTPUTS[args.framework]}")
    return 0


def evaluation_options(args: argparse.Namespace) -> list[str]:
    """The evaluation options `args` holds that differ from their defaults, as a command line (a workload's path
    made absolute: the framework runs the evaluator from other folders)."""
    parser = evaluation_parser()
    defaults = parser.parse_args([])
    options: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest)
        if value == getattr(defaults, action.dest) or not action.option_strings:
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:  # a flag: given when the value is the one it sets
            if value == action.const:
                options.append(flag)
        elif action.dest == "workload":
            options += [flag, str(Path(value).absolute())]
        elif action.dest == "gpu_ids":
            options += [flag, ",".join(str(gpu) for gpu in value)]
        else:
            options += [flag, str(value)]
    return options

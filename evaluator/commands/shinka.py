"""`shinka --program_path P --results_dir D`: evaluate one program as ShinkaEvolve's evaluation script.

ShinkaEvolve runs `[python, EVALUATE_PY, --program_path P, --results_dir D, --KEY VALUE ...]` for every
candidate, ignores the exit code and reads `D/metrics.json` and `D/correct.json` (evaluator.loops.shinka_results
writes them). `shinka_run` copies the text of EVALUATE_PY into its own results folder before running it, so
that file must import nothing from beside it: `SHIM` is all it needs, with this package installed in the
Python that runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from evaluator.commands import CommandError
from evaluator.commands.evaluate import (
    add_evaluation_arguments,
    evaluation_inputs,
    exit_code_of,
    note_cpu_fallback,
    open_evaluator,
)
from evaluator.eplb.holdout import KEY_VARIABLE
from evaluator.exitcodes import ExitCode
from evaluator.loops.shinka_results import prepare_results_dir, shinka_feedback, write_results
from evaluator.store import HOLDOUT_SOURCE

NAME = "shinka"
HELP = "Evaluate one program for ShinkaEvolve: write the metrics.json and correct.json it reads back."

SHIM = """\
import sys
from evaluator.cli import main
sys.exit(main(["shinka", *sys.argv[1:]]))
"""

EPILOG = f"""\
ShinkaEvolve runs an evaluate.py (job_config.eval_program_path) as
  PYTHON evaluate.py --program_path P --results_dir D [--KEY VALUE for each job_config.extra_cmd_args entry]
Make that file these three lines; they import nothing from beside the file, so they keep working where
shinka_run copies its text:

{textwrap.indent(SHIM, "    ")}
PYTHON (job_config.python_executable, by default the Python running ShinkaEvolve) must have this package
installed. Options with a value can come through extra_cmd_args, e.g. {{device: cuda, workload:
/data/trace.json, timeout: 60}}; a flag without one (--retime-seed) goes into the shim's list:
main(["shinka", "--retime-seed", *sys.argv[1:]]). Candidates are scored on a held-out trace unless told
otherwise (--default-trace, --workload). Every job is a new process, so without a key each job draws a trace of
its own: set EPLB_EVALUATOR_HOLDOUT_KEY (32 characters or more, e.g. from secrets.token_hex(16)) in
ShinkaEvolve's environment, and every job scores on the same secret trace (`python -m evaluator init shinka DIR`
writes a run script that does).

Exit codes: 0 ok; {ExitCode.CANDIDATE_FAILED.value} the program failed and {ExitCode.INFRA_ERROR.value} the \
evaluator failed (both still write the files, with correct=false;
ShinkaEvolve ignores exit codes); {ExitCode.BAD_INPUT.value} a bad invocation (no files written)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the shim's lines in the epilog
    parser.epilog = EPILOG
    parser.add_argument("--program_path", type=Path, required=True, metavar="P", help="the candidate program file")
    parser.add_argument("--results_dir", type=Path, required=True, metavar="D",
                        help="the folder to write metrics.json and correct.json into (created if missing)")
    add_evaluation_arguments(parser, held_out_by_default=True)


def run(args: argparse.Namespace) -> int:
    try:
        is_file = args.program_path.is_file()
    except OSError as error:  # a name too long, say: is_file answers only for paths that can exist
        raise CommandError(f"cannot read --program_path {args.program_path}: {error.strerror}") from None
    if not is_file:
        raise CommandError(f"no such program file: --program_path {args.program_path}")
    problem, trace = evaluation_inputs(args)
    if trace.source == HOLDOUT_SOURCE and not os.environ.get(KEY_VARIABLE):
        print(f"note: {KEY_VARIABLE} is not set, so this job scores on a held-out trace of its own; set it in "
              "ShinkaEvolve's environment and every job scores on the same one", file=sys.stderr)
    results_dir: Path = args.results_dir
    try:
        if results_dir.exists() and not results_dir.is_dir():
            raise CommandError(f"--results_dir {results_dir} is a file, not a folder")
        prepare_results_dir(results_dir)
    except OSError as error:
        raise CommandError(f"cannot write results into --results_dir {results_dir}: {error}") from None
    with open_evaluator(args, problem, trace) as evaluator:
        result = evaluator.evaluate(args.program_path)
    note_cpu_fallback(result, args.device, first=True)
    try:
        write_results(results_dir, result)
    except OSError as error:
        raise CommandError(f"the program was evaluated ({result.status}) but its results could not be written "
                           f"into {results_dir}: {error}", ExitCode.INFRA_ERROR) from None
    # ShinkaEvolve shows this process's output to the LLM when it asks for a fix of an incorrect program.
    print(shinka_feedback(result))
    return exit_code_of(result)

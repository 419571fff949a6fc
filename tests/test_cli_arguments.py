"""Every command's options against values a user might mistype: a clear error and exit 2, never a traceback.

The commands run in-process through `evaluator.cli.main`. Each is given what stops it before its real work (a patch
or program file that does not exist, a candidate id the store lacks), so that what is tried is how it reads its
options; `bench`, which has no such stop, is given only values that must be refused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from evaluator.cli import build_parser, main
from evaluator.exitcodes import ExitCode

REFUSED = ["nan", "inf", "-inf", "-1", "0", "1e999", "99999999999999999999999", "", " ", "x", "0x10", "--json", "-5e-3"]
HOSTILE = [*REFUSED, "1", "7", "0.5", "1e300", "é", "-", "/", "/dev/null", "../..", "\x1b[2J", "a" * 300]
STOPPED_EARLY = {  # the command, and what ends it before it evaluates anything
    "apply": ["apply", "missing.diff"],
    "evaluate": ["evaluate", "missing.py"],
    "accept": ["accept", "abcd"],
    "list": ["list"],
    "show": ["show", "abcd"],
    "diff": ["diff", "abcd"],
    "lineage": ["lineage", "abcd"],
    "report": ["report", "--store", "missing"],
    "export": ["export", "--store", "missing"],
    "prompt": ["prompt", "abcd"],
    "check": ["check"],
    "trace": ["trace"],
    "shinka": ["shinka", "--program_path", "missing.py", "--results_dir", "results"],
    "init": ["init", "openevolve", "/dev/null"],
}
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return dict(found.choices)


def valued_options(parser: argparse.ArgumentParser) -> list[str]:
    """The long options of `parser` that take a value."""
    return sorted(action.option_strings[-1] for action in parser._actions
                  if action.option_strings and action.nargs != 0 and action.option_strings[-1] != "--help")


def accepts(parser: argparse.ArgumentParser, option: str, value: str) -> bool:
    """Whether `parser` takes `value` for `option` (its type and choices, not what the command checks later)."""
    action = next(action for action in parser._actions if option in action.option_strings)
    try:
        parsed = action.type(value) if action.type else value
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return not value.startswith("-") and (action.choices is None or parsed in action.choices)


COMMANDS = subparsers(build_parser())
BENCHMARKS = subparsers(COMMANDS["bench"])


def run(argv: list[str]) -> tuple[int, str]:
    """The exit code and standard error of `python -m evaluator *argv`, in-process."""
    error = io.StringIO()
    with contextlib.redirect_stderr(error), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as leaving:  # argparse refusing an option
            code = leaving.code if isinstance(leaving.code, int) else 2
    return code, error.getvalue()


def assert_answered(code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert code in {int(exit_code) for exit_code in ExitCode} - {ExitCode.INFRA_ERROR}, (code, stderr)
    if code == ExitCode.BAD_INPUT:
        assert "error: " in stderr, stderr


HELP_WITHOUT_TORCH = """
import contextlib, io, sys
from evaluator.cli import main
for argv in ARGVS:
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        try:
            main([*argv, "--help"])
        except SystemExit:
            pass
    assert "usage:" in printed.getvalue(), argv
print(sorted(name for name in sys.modules if name == "torch" or name.startswith("torch.")))
"""


def test_help_answers_without_importing_torch():
    argvs = [[], *([name] for name in COMMANDS), *(["bench", name] for name in BENCHMARKS)]
    run = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH.replace("ARGVS", repr(argvs))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_every_command_is_tried():
    assert sorted(STOPPED_EARLY) == sorted(set(COMMANDS) - {"bench"})
    assert all(valued_options(parser) for parser in COMMANDS.values() if parser is not COMMANDS["bench"])


@pytest.mark.parametrize("command", sorted(STOPPED_EARLY))
@EXAMPLES
@given(data=st.data())
def test_any_value_of_any_option_is_answered_without_a_traceback(tmp_path, monkeypatch, command, data):
    monkeypatch.chdir(tmp_path)
    options = data.draw(st.lists(st.sampled_from(valued_options(COMMANDS[command])), min_size=1, max_size=3,
                                 unique=True))
    values = data.draw(st.lists(st.sampled_from(HOSTILE) | st.text(max_size=6), min_size=len(options),
                                max_size=len(options)))
    argv = [*STOPPED_EARLY[command], *(part for pair in zip(options, values) for part in pair)]
    assert_answered(*run(argv))
    assert not Path("candidates").exists()


@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
@EXAMPLES
@given(data=st.data())
def test_a_benchmark_refuses_any_bad_value_before_it_runs(tmp_path, monkeypatch, benchmark, data):
    monkeypatch.chdir(tmp_path)
    option = data.draw(st.sampled_from(valued_options(BENCHMARKS[benchmark])))
    value = data.draw(st.sampled_from(REFUSED))
    assume(not accepts(BENCHMARKS[benchmark], option, value))  # "0" is a count of rechecks
    code, stderr = run(["bench", benchmark, option, value])
    assert code == ExitCode.BAD_INPUT and f"error: argument {option}" in stderr, stderr


@pytest.mark.parametrize(
    "argv, said",
    [(["evaluate", "missing.py", "--timeout", "nan"], "argument --timeout: expected a number above 0"),
     (["evaluate", "missing.py", "--memory-mb", "0"], "argument --memory-mb: expected a whole number from 1"),
     (["trace", "--layers", "60000", "--replicas", "60000", "--experts", "60000"],
      "num_layers x num_replicas (60000 x 60000) must be at most"),
     (["evaluate", "."], "a folder, not a program file: ."),
     (["list", "--store", "."], "is not a candidate store: besides candidate folders it holds stray.txt"),
     (["list", "--store", "stray.txt"], "stray.txt is a file, not a candidate store")],
)
def test_bad_values_are_named_with_what_was_expected(tmp_path, monkeypatch, argv, said):
    monkeypatch.chdir(tmp_path)
    Path("stray.txt").write_text("not a candidate\n")
    code, stderr = run(argv)
    assert code == ExitCode.BAD_INPUT and said in stderr, stderr


def test_a_missing_store_is_an_empty_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(["list", "--store", "not-yet"]) == (ExitCode.OK, "")
    assert not Path("not-yet").exists()

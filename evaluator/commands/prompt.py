"""`prompt ID|FILE`: a program's whole next-step prompt, for a loop of shell commands
(`prompt ID | llm | apply - --parent ID`), or `--task` alone, a loop's system message."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jinja2

from evaluator.commands import CommandError, add_store_argument
from evaluator.commands.inputs import path_is
from evaluator.evaluation import Settings
from evaluator.exitcodes import ExitCode
from evaluator.prompt import FORMATS, Subject, render_prompt, render_task, stored_subject
from evaluator.store import CandidateStore, StoreError

NAME = "prompt"
HELP = ("Print a program's next-step prompt: the task (the contract, every rule, how it is scored, the limits, the "
        "answer's form), the program, its latest result and its ancestors' scores.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("program", metavar="ID|FILE", nargs="?",
                        help="a stored candidate's id (or a unique prefix of at least 4 characters), or a program file")
    parser.add_argument("--task", action="store_true", help="print the task alone (a loop's system message)")
    parser.add_argument("--format", choices=FORMATS, default="plain",
                        help="how the answer is asked for: SEARCH/REPLACE blocks (plain, openevolve) or ShinkaEvolve's "
                             "NAME / DESCRIPTION / DIFF (shinka)")
    parser.add_argument("--templates", type=Path, metavar="DIR",
                        help="a folder whose task.md.j2 or prompt.md.j2 replace the package's")
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    if args.task == (args.program is not None):
        raise CommandError("give either a candidate's id or a program file, or --task alone")
    if args.templates is not None and not path_is(args.templates, Path.is_dir):
        raise CommandError(f"--templates {args.templates}: not a folder")
    settings = Settings()
    try:
        if args.task:
            text, subject = render_task(settings, args.format, args.templates), None
        else:
            subject = _subject(args.program, args.store)
            text = render_prompt(subject, settings, args.format, args.templates)
    except jinja2.TemplateError as error:
        where = f" ({error.filename}, line {error.lineno})" if isinstance(error, jinja2.TemplateSyntaxError) else ""
        raise CommandError(f"a template could not be rendered{where}: {error}") from None
    if args.json:
        print(json.dumps({"prompt": text, "format": args.format,
                          "program": None if subject is None else subject.label}))
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return ExitCode.OK


def _subject(spec: str, store_root: Path) -> Subject:
    """A stored candidate (by id or prefix), else a program file."""
    path = Path(spec)
    if path_is(path, Path.is_file):
        try:
            return Subject(str(path), path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"cannot read the program {path}: {error}") from None
    store = CandidateStore(store_root)
    try:
        return stored_subject(store, store.get(spec))
    except StoreError as error:
        raise CommandError(f"{spec!r} is neither a program file nor a stored candidate: {error}") from None

"""`export`: every stored result, one CSV row or JSON line each, with its candidate's id, name and parent."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluator.commands import CommandError, add_store_argument
from evaluator.commands.stored import parent_label, result_entries
from evaluator.commands.traces import add_trace_argument, on_trace
from evaluator.exitcodes import ExitCode
from evaluator.files import write_atomically
from evaluator.store import CandidateStore, StoreError
from evaluator.untrusted import visible

NAME = "export"
HELP = ("Export every stored result with its candidate's id, name and parent: CSV (nested fields as dotted columns) "
        "or JSON lines.")
FORMATS = ("jsonl", "csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="jsonl",
                        help="jsonl: one JSON object per result, the result exactly as stored under 'result'; csv: "
                             "one row per result, nested fields as dotted columns (default: %(default)s)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write FILE, whole or not at all (default: standard "
                                                                  "output)")
    add_trace_argument(parser)
    add_store_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        _check_writable(args.out)
    where = on_trace(args.trace)
    try:
        records = [{"candidate_id": candidate.id, "name": candidate.meta.get("name"),
                    "parent": parent_label(candidate.meta), **entry}
                   for candidate in CandidateStore(args.store).candidates() for entry in result_entries(candidate)
                   if where is None or where(entry["result"])]
    except StoreError as error:
        raise CommandError(str(error)) from None
    text = as_csv(records) if args.format == "csv" else "".join(json.dumps(record) + "\n" for record in records)
    if args.out is None:
        sys.stdout.write(text)
        return ExitCode.OK
    try:
        write_atomically(args.out, text)
    except OSError as error:
        raise CommandError(f"--out {args.out}: cannot write it: {error.strerror or error}") from None
    return ExitCode.OK


def as_csv(records: list[dict[str, Any]]) -> str:
    """One row per record, its `result` spread into columns beside the others: nested objects as dotted names
    (`workload.problem.num_layers`), lists as JSON, numbers and booleans as JSON, None as an empty cell, text with
    its control characters as escapes (`evaluator.untrusted.visible`). Columns in the order they first appear."""
    rows = [_flat({key: value for key, value in record.items() if key != "result"} | record["result"])
            for record in records]
    columns = list(dict.fromkeys(column for row in rows for column in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="")
    writer.writeheader()
    writer.writerows({column: _cell(value) for column, value in row.items()} for row in rows)
    return buffer.getvalue()


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(value: object) -> str:
    if value is None:
        return ""
    return visible(value) if isinstance(value, str) else json.dumps(value)


def _check_writable(path: Path) -> None:
    """Refuse, before anything is read, a FILE that is something other than a file (a folder, a device: replacing
    /dev/null would remove it) or whose folder is missing."""
    try:
        if path.exists() and not path.is_file():
            raise CommandError(f"--out {path}: not a regular file")
        if not path.parent.is_dir():
            raise CommandError(f"--out {path}: no folder {path.parent}")
    except OSError as error:
        raise CommandError(f"--out {path}: {error.strerror or error}") from None

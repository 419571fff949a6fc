"""`list`: the stored candidates with their status and scores, best first."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

from evaluator.commands import CommandError, add_store_argument
from evaluator.exitcodes import ExitCode
from evaluator.status import Status
from evaluator.store import CandidateStore, StoredCandidate, StoreError
from evaluator.untrusted import NAME_CHARS, one_line

NAME = "list"
HELP = "List the stored candidates with status and scores of their latest result, best first."

UNEVALUATED = "unevaluated"
SEED = "seed"


@dataclass(frozen=True)
class Row:
    id: str
    name: str | None
    status: str  # of the latest result that is not an infra_error, or "unevaluated"
    combined_score: float | None
    balancedness_score: float | None
    speedup: float | None
    parent: str  # "seed", a candidate id, or "file PATH"
    accepted: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--accepted", action="store_true", help="only accepted candidates")
    which.add_argument("--failed", action="store_true", help="only candidates whose latest result is a failure")
    parser.add_argument("--parent", metavar="ID", help=f"only the children of this candidate (or of the {SEED})")
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of a table")


def run(args: argparse.Namespace) -> int:
    store = CandidateStore(args.store)
    try:
        parent = _parent_filter(args.parent, store)
        rows = [row_of(candidate) for candidate in store.candidates()]
    except StoreError as error:
        raise CommandError(str(error)) from None
    rows = [row for row in rows if _wanted(row, args, parent)]
    rows.sort(key=_best_first)
    if args.json:
        print(json.dumps([asdict(row) for row in rows]))
    else:
        print(render_table(rows))
    return ExitCode.OK


def row_of(candidate: StoredCandidate) -> Row:
    """One candidate's line: its latest result's status and scores, its parent and whether it is accepted."""
    latest = candidate.latest_result()
    ok = latest is not None and latest.get("status") == Status.OK
    return Row(
        id=candidate.id,
        name=candidate.meta.get("name"),
        status=UNEVALUATED if latest is None else str(latest.get("status")),
        combined_score=latest.get("combined_score") if ok else None,
        balancedness_score=latest.get("balancedness_score") if ok else None,
        speedup=latest.get("speedup") if ok else None,
        parent=_parent_label(candidate.meta.get("parent") or {}),
        accepted=candidate.accepted,
    )


def render_table(rows: list[Row]) -> str:
    """The rows as an aligned text table; `*` marks accepted candidates."""
    header = ("", "id", "name", "status", "combined", "balanced", "speedup", "parent")
    lines = [
        (
            "*" if row.accepted else "",
            row.id,
            one_line(row.name, NAME_CHARS) if row.name else "(unnamed)",
            row.status,
            _number(row.combined_score, "{:.4f}"),
            _number(row.balancedness_score, "{:.4f}"),
            _number(row.speedup, "{:.2f}x"),
            row.parent,
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in [header, *lines]]
    if not rows:
        text.append("(no candidates)")
    return "\n".join(text)


def _parent_filter(spec: str | None, store: CandidateStore) -> str | None:
    """The parent label rows must have: "seed", or the full id of the candidate `spec` names."""
    if spec is None or spec == SEED:
        return spec
    return store.get(spec).id


def _wanted(row: Row, args: argparse.Namespace, parent: str | None) -> bool:
    if args.accepted and not row.accepted:
        return False
    if args.failed and row.status in (Status.OK, UNEVALUATED):
        return False
    return parent is None or row.parent == parent


def _best_first(row: Row) -> tuple[int, float, str]:
    """Ok results by combined score, best first; then failures; then candidates never evaluated."""
    if row.combined_score is not None:
        return (0, -float(row.combined_score), row.id)
    return (1 if row.status != UNEVALUATED else 2, 0.0, row.id)


def _parent_label(parent: dict[str, Any]) -> str:
    kind = parent.get("kind")
    if kind == "candidate":
        return str(parent.get("id"))
    if kind == "file":
        return f"file {parent.get('path')}"
    return SEED if kind == "seed" else "?"


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)

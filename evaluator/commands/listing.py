"""`list`: the stored candidates with their status and scores, best first among results on one trace."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from evaluator.commands import CommandError, add_store_argument
from evaluator.commands.stored import (
    SCORE_COLUMNS,
    SCORE_HEADERS,
    SEED,
    UNEVALUATED,
    Scores,
    find,
    parent_label,
    scores_of,
    shown_name,
)
from evaluator.commands.terminal import show, table
from evaluator.commands.traces import OnTrace, add_trace_argument, on_trace
from evaluator.exitcodes import ExitCode
from evaluator.status import Status
from evaluator.store import DEFAULT_SOURCE, HOLDOUT_SOURCE, CandidateStore, StoredCandidate, StoreError
from evaluator.untrusted import one_line

if TYPE_CHECKING:
    from rich.console import RenderableType

NAME = "list"
HELP = ("List the stored candidates with status, scores and trace of their latest result, best first among results "
        "on the same trace.")
PATH_CHARS = 100  # of a trace's or a parent's label: a file's path may be long


@dataclass(frozen=True)
class Row:
    id: str
    name: str | None
    scores: Scores  # of the latest result that is not an infra_error (on the trace asked for)
    parent: str  # "seed", a candidate id, or "file PATH"
    accepted: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, **asdict(self.scores), "parent": self.parent,
                "accepted": self.accepted}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--accepted", action="store_true", help="only accepted candidates")
    which.add_argument("--failed", action="store_true", help="only candidates whose latest result is a failure")
    parser.add_argument("--parent", metavar="ID", help=f"only the children of this candidate (or of the {SEED})")
    add_trace_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of a table")


def run(args: argparse.Namespace) -> int:
    store = CandidateStore(args.store)
    where = on_trace(args.trace)
    parent = args.parent if args.parent in (None, SEED) else find(store, args.parent).id
    try:
        rows = [row_of(candidate, where) for candidate in store.candidates()]
    except StoreError as error:
        raise CommandError(str(error)) from None
    rows = [row for row in rows if _wanted(row, args, parent)]
    rows.sort(key=_best_first)
    if args.json:
        print(json.dumps([row.to_json() for row in rows]))
    else:
        show(render_table(rows))
    return ExitCode.OK


def row_of(candidate: StoredCandidate, where: OnTrace | None = None) -> Row:
    """One candidate's line: its latest result's status, scores and trace (on the trace `where` keeps), its parent and
    whether it is accepted."""
    return Row(candidate.id, candidate.meta.get("name"), scores_of(candidate.latest_result(where=where)),
               parent_label(candidate.meta), candidate.accepted)


def render_table(rows: list[Row]) -> RenderableType:
    """The rows as a table; `*` marks accepted candidates."""
    if not rows:
        return "(no candidates)"
    cells = [["*" if row.accepted else "", row.id, shown_name({"name": row.name}), *row.scores.cells(),
              one_line(row.scores.trace or "-", PATH_CHARS), one_line(row.parent, PATH_CHARS)] for row in rows]
    return table(["", "id", "name", *SCORE_HEADERS, "trace", "parent"], cells, right=SCORE_COLUMNS)


def _wanted(row: Row, args: argparse.Namespace, parent: str | None) -> bool:
    if args.accepted and not row.accepted:
        return False
    if args.failed and row.scores.status in (Status.OK, UNEVALUATED):
        return False
    return parent is None or row.parent == parent


def _best_first(row: Row) -> tuple[int, int, str, float, str]:
    """Ok results grouped by trace (the default, held-out ones, then the others by name), best combined score first
    in each; then failures; then candidates never evaluated (there)."""
    scores = row.scores
    if scores.combined_score is not None:
        trace = scores.trace or ""
        return (0, {DEFAULT_SOURCE: 0, HOLDOUT_SOURCE: 1}.get(trace, 2), trace, -float(scores.combined_score), row.id)
    return (1 if scores.status != UNEVALUATED else 2, 0, "", 0.0, row.id)

"""Stored candidates and their results as the store's commands name and summarise them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evaluator.commands import CommandError
from evaluator.commands.terminal import number
from evaluator.commands.traces import trace_label
from evaluator.status import Status
from evaluator.store import CandidateStore, StoredCandidate, StoreError, measured_at, score_in
from evaluator.untrusted import NAME_CHARS, one_line

ID_HELP = "a candidate id (or a unique prefix of at least 4 characters)"
UNEVALUATED = "unevaluated"
SEED = "seed"
SCORE_HEADERS = ("status", "combined", "balanced", "speedup")
SCORE_COLUMNS = SCORE_HEADERS[1:]  # aligned right


def find(store: CandidateStore, spec: str) -> StoredCandidate:
    """The candidate whose id is `spec` or starts with it (`CandidateStore.get`); a CommandError naming `spec`."""
    try:
        return store.get(spec)
    except StoreError as error:
        raise CommandError(str(error)) from None


def shown_name(meta: Mapping[str, Any]) -> str:
    """A candidate's name as a table shows it: one visible line."""
    return one_line(str(meta.get("name") or "(unnamed)"), NAME_CHARS)


def parent_label(meta: Mapping[str, Any]) -> str:
    """"seed", the parent candidate's id, or "file PATH"."""
    parent = meta.get("parent") or {}
    kind = parent.get("kind")
    if kind == "candidate":
        return str(parent.get("id"))
    if kind == "file":
        return f"file {parent.get('path')}"
    return SEED if kind == "seed" else "?"


@dataclass(frozen=True)
class Scores:
    """What a table says of one result: its status, its scores when it is ok, and its trace."""

    status: str | None  # "unevaluated" where there is no result; None for no candidate (a lineage's root)
    combined_score: float | None
    balancedness_score: float | None
    speedup: float | None
    trace: str | None

    def cells(self) -> list[str]:
        """The cells under `SCORE_HEADERS`."""
        return [self.status or "-", number(self.combined_score, "{:.4f}"), number(self.balancedness_score, "{:.4f}"),
                number(self.speedup, "{:.2f}x")]


def scores_of(result: Mapping[str, Any] | None) -> Scores:
    if result is None:
        return Scores(UNEVALUATED, None, None, None, None)
    ok = result.get("status") == Status.OK
    return Scores(str(result.get("status")), score_in(result, "combined_score") if ok else None,
                  score_in(result, "balancedness_score") if ok else None, score_in(result, "speedup") if ok else None,
                  trace_label(result))


def result_entries(candidate: StoredCandidate) -> list[dict[str, Any]]:
    """The candidate's results, oldest first, each with its file's name, when it was stored and its trace."""
    entries = []
    for path, result in candidate.result_files():
        when = measured_at(path)
        entries.append({"file": path.name, "measured_at": when and when.isoformat(timespec="seconds"),
                        "trace": trace_label(result), "result": result})
    return entries

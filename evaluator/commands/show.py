"""`show ID`: one stored candidate: what it is, where it came from, each of its results and its baseline."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from evaluator.commands import CommandError, add_store_argument
from evaluator.commands.stored import (
    SCORE_COLUMNS,
    SCORE_HEADERS,
    ID_HELP,
    find,
    parent_label,
    result_entries,
    scores_of,
    shown_name,
)
from evaluator.commands.terminal import number, show, table
from evaluator.exitcodes import ExitCode
from evaluator.status import Status
from evaluator.store import CandidateStore, StoredCandidate, StoreError
from evaluator.untrusted import TEXT_CHARS, quoted

if TYPE_CHECKING:
    from rich.console import RenderableType

NAME = "show"
HELP = ("Show a stored candidate: name, description, parent, when it was made, each result (when, trace, status, "
        "scores, speedup and its interval, device) and its baseline if accepted.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("candidate", metavar="ID", help=ID_HELP)
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    candidate = find(CandidateStore(args.store), args.candidate)
    try:
        entries = result_entries(candidate)
        acceptance = candidate.acceptance()
    except StoreError as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps({"candidate": {"id": candidate.id, "path": str(candidate.path), **candidate.meta},
                          "acceptance": acceptance, "results": entries}))
        return ExitCode.OK
    baseline = None if acceptance is None else acceptance.get("result")
    show(_about(candidate, acceptance))
    description = str(candidate.meta.get("description") or "").strip()
    if description:
        show("description:", quoted(description, TEXT_CHARS, indent="  "))
    if not entries:
        show("", f"no results yet: `python -m evaluator evaluate {candidate.id}` evaluates it")
        return ExitCode.OK
    show("", _results(entries, baseline))
    latest = entries[-1]["result"]
    for name in ("error", "stdout", "stderr"):
        text = str(latest.get(name) or "")
        if text.strip():
            show(f"latest result's {name}:", quoted(text, TEXT_CHARS, indent="  "))
    return ExitCode.OK


def _about(candidate: StoredCandidate, acceptance: Mapping[str, Any] | None) -> RenderableType:
    meta = candidate.meta
    lines = [["candidate", candidate.id], ["name", shown_name(meta)], ["parent", parent_label(meta)],
             ["created", str(meta.get("created_at") or "-")], ["program", str(candidate.program_path)]]
    if acceptance is not None:
        baseline = acceptance.get("result") or {}
        lines.append(["baseline", f"accepted {acceptance.get('accepted_at')}: combined "
                                  f"{number(baseline.get('combined_score'), '{:.4f}')}, speedup {_speedup(baseline)}, "
                                  f"on {_device(baseline)}"])
    return table(["", ""], lines, header=False)


def _results(entries: list[dict[str, Any]], baseline: Mapping[str, Any] | None) -> RenderableType:
    """One row per result, oldest first; `*` marks the baseline."""
    rows = []
    for entry in entries:
        result = entry["result"]
        scores = scores_of(result).cells()
        when = entry["file"] if entry["measured_at"] is None else _utc(entry["measured_at"])
        rows.append(["*" if result == baseline else "", when, entry["trace"], *scores[:-1], _speedup(result),
                     _device(result)])
    return table(["", "measured (UTC)", "trace", *SCORE_HEADERS[:-1], "speedup (95% interval)", "device"], rows,
                 right=SCORE_COLUMNS[:-1])


def _speedup(result: Mapping[str, Any]) -> str:
    """"6.30x (5.90 to 6.70)": an ok result's speedup and its 95% interval."""
    speedup, interval = result.get("speedup"), result.get("speedup_interval")
    if result.get("status") != Status.OK or not _is_number(speedup):
        return "-"
    bounds = (f" ({interval[0]:.2f} to {interval[1]:.2f})" if isinstance(interval, list) and len(interval) == 2
              and all(map(_is_number, interval)) else "")
    return f"{speedup:.2f}x{bounds}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _utc(iso: str) -> str:
    """"2026-11-26 10:15:00" of "2026-11-26T10:15:00+00:00"."""
    return iso.replace("T", " ").removesuffix("+00:00")


def _device(result: Mapping[str, Any]) -> str:
    card = result.get("card")
    return f"{result.get('device') or '-'}" + (f" ({card})" if card else "")

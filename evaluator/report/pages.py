"""The report's pages, rendered from jinja2 templates with autoescaping (whatever a candidate wrote is only ever text)
and written into a hidden folder that then takes the old report's place whole."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from evaluator.evaluation.result import Result
from evaluator.files import remove_tree
from evaluator.loops.feedback import feedback_text
from evaluator.report.data import (
    HOLDOUT_SOURCE,
    Candidate,
    ReportData,
    StoredResult,
    diff_lines,
    parent_program,
    root_label,
)
from evaluator.report.figures import (
    CANDIDATE_DIR,
    best_over_time,
    candidate_page,
    gpu_loads,
    speed_against_balancedness,
    times,
)
from evaluator.untrusted import NAME_CHARS, one_line, visible

TEMPLATES = Path(__file__).resolve().parent / "templates"
INDEX = "index.html"
STYLE = "style.css"
MARKER = ".eplb-evaluator-report"  # a folder holding it is a report, which a new report may replace
# No script, no request anywhere: the pages and their style sheet are all there is.
CSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'"
TREE_INDENT_LEVELS = 24  # the style sheet indents this many levels of the family tree; deeper rows say their depth


class ReportError(Exception):
    """The report cannot be written where it was asked for."""


def write_report(data: ReportData, out: Path) -> Path:
    """Render every page into a hidden folder beside `out`, then put it in `out`'s place; returns index.html's path.
    Raises ReportError where `out` is anything but missing, empty or an earlier report, OSError where writing fails
    (`out` is then as it was)."""
    require_report_folder(out)
    target = Path(os.path.abspath(out))  # a name to put beside: `.` and `..` have none
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.incoming-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a report is as readable as its folder
        _render(data, staging)
        _replace(target, staging)
    finally:
        if staging.exists():
            remove_tree(staging)
    return out / INDEX


def require_report_folder(out: Path) -> None:
    """Raise ReportError unless `out` is missing, an empty folder or an earlier report: nothing else is replaced."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ReportError(f"{out} is not a folder; name a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ReportError(f"{out} holds files that are not an earlier report; name a new or empty folder")


def _replace(out: Path, staging: Path) -> None:
    """Put `staging` where `out` is, the old report removed once the new one is in place."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)
        raise
    remove_tree(old)


def _render(data: ReportData, folder: Path) -> None:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(visible=visible, name=_name, number=_number, times=times)
    environment.globals.update(csp=CSP, style=STYLE, data=data, candidate_page=candidate_page,
                               tree_indent_levels=TREE_INDENT_LEVELS)
    (folder / STYLE).write_text(environment.get_template("style.css.j2").render(), encoding="utf-8")
    main_results = {row.candidate.id: row.result for row in data.main.rows} if data.main else {}
    (folder / INDEX).write_text(environment.get_template("index.html.j2").render(root="", main_results=main_results),
                                encoding="utf-8")
    trace_page = environment.get_template("trace.html.j2")
    for board in data.leaderboards:
        (folder / board.trace.page).write_text(trace_page.render(
            root="", board=board, scatter=speed_against_balancedness(board), progress=best_over_time(board)),
            encoding="utf-8")
    (folder / CANDIDATE_DIR).mkdir()
    page = environment.get_template("candidate.html.j2")
    for candidate in data.candidates.values():
        (folder / candidate_page(candidate.id)).write_text(page.render(root="../", **_candidate_view(data, candidate)),
                                                           encoding="utf-8")
    (folder / MARKER).write_text("a report of a candidate store, made by `python -m evaluator report`; the next "
                                 "report replaces this folder whole\n", encoding="utf-8")


def _candidate_view(data: ReportData, candidate: Candidate) -> dict[str, Any]:
    """What a candidate's page shows beside the candidate itself."""
    parent, parent_label = parent_program(data, candidate)
    ancestry = data.ancestry(candidate)
    picture = candidate.load_picture()
    load = _load_view(picture.data["gpu_load"]) if picture else None
    return {
        "candidate": candidate,
        "ancestry": ancestry,
        "origin": root_label((ancestry or [candidate])[0]),
        "children": [data.candidates[child] for child in candidate.children],
        "parent_label": parent_label,
        "diff": None if parent is None else diff_lines(parent, candidate.program, (parent_label, candidate.id)),
        "results": [(result, _feedback(result)) for result in reversed(candidate.results)],
        "picture": picture,
        "load": load,
        "load_missing": None if load else _why_no_load(candidate, picture),
    }


def _why_no_load(candidate: Candidate, picture: StoredResult | None) -> str:
    if picture is not None:
        return "The load its result keeps cannot be read."
    scored = [result for result in candidate.results if result.scored]
    if any(result.trace.key[0] != HOLDOUT_SOURCE for result in scored):
        return ("Its ok results were stored before results kept the load of a plan on each GPU: evaluate it again to "
                "see it.")
    if scored:
        return "Its ok results are on held-out traces, whose loads stay secret: results there keep none."
    return "It has no ok result, whose plan would be drawn here."


def _load_view(load: object) -> dict[str, Any] | None:
    """A result's `gpu_load`, its charts and the balancedness it makes; None where it cannot be read."""
    if not isinstance(load, Mapping) or not all(_numbers(load.get(key)) for key in ("per_gpu", "layer_max",
                                                                                      "layer_mean")):
        return None
    peak = sum(load["layer_max"])
    return {"planned_on": load.get("planned_on"), "window": load.get("window"), "charts": gpu_loads(load),
            "balancedness": sum(load["layer_mean"]) / peak if peak else 1.0}


def _numbers(values: object) -> bool:
    """Whether `values` is a list of numbers, not empty."""
    return isinstance(values, list) and bool(values) and all(isinstance(value, (int, float)) for value in values)


def _feedback(result: StoredResult) -> str | None:
    """What a loop's LLM reads of the result; None for a result this evaluator cannot read back."""
    try:
        return feedback_text(Result.from_json(result.data))
    except (TypeError, ValueError):
        return None


def _name(candidate: Candidate) -> str:
    return one_line(candidate.name, NAME_CHARS) or "(unnamed)"


def _number(value: object, form: str = "{:.4f}") -> str:
    return form.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"

"""The task and a candidate's next-step prompt, rendered from jinja2 templates (package data, or a folder of the
user's own that overrides them by name) with the evaluator's real settings.

Every number the LLM reads (the problem's shape, the limits, the tolerances, how speed is scored) and every rule
(the contract's invariants, the names the fixed code uses) comes from the settings and modules that enforce them,
so the prompt cannot drift from what is scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2

from evaluator.eplb.contract import INVARIANTS
from evaluator.evaluation import Result, Settings
from evaluator.loops.feedback import feedback_text
from evaluator.patch.protected_names import protected_names
from evaluator.paths import SEED_PROGRAM
from evaluator.sandbox import DEFAULT_ENTRY_POINT
from evaluator.status import Status
from evaluator.store import CandidateStore, StoredCandidate, StoreError
from evaluator.untrusted import NAME_CHARS, one_line

FORMATS = ("plain", "openevolve", "shinka")  # how the answer is asked for: SEARCH/REPLACE blocks, alone or in
# ShinkaEvolve's NAME / DESCRIPTION / DIFF (OpenEvolve's diff format is the plain blocks)
TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_LINEAGE = 20  # ancestors shown, the nearest kept


def task_context(settings: Settings, answer_format: str = "plain") -> dict[str, Any]:
    """What the task template is rendered with: the evaluator's settings and rules."""
    from evaluator.eplb.scoring import SPEED_SCORE_PER_DECADE  # imports torch: not at the top, which --help runs

    if answer_format not in FORMATS:
        raise ValueError(f"the answer format must be one of {', '.join(FORMATS)}, got {answer_format!r}")
    timing, problem = settings.timing, settings.problem
    return {
        "format": answer_format,
        "entry_point": DEFAULT_ENTRY_POINT,
        "problem": asdict(problem),
        "max_replicas_per_expert": problem.max_replicas_per_expert,
        "invariants": INVARIANTS,
        "rechecks": settings.rechecks,
        "freshness_tolerance": settings.freshness_tolerance,
        "protected_names": protected_names(SEED_PROGRAM.read_text(encoding="utf-8")),
        "speed_score_per_decade": SPEED_SCORE_PER_DECADE,
        "call_limit_factor": timing.call_limit_factor,
        "min_call_limit_s": timing.min_call_limit_s,
        "first_call_limit_s": timing.first_call_limit_s,
        "timeout_s": settings.timeout_s,
        "memory_mb": settings.limits.memory_mb,
        "gpu_memory_mb": settings.limits.gpu_memory_mb,
    }


def render_task(settings: Settings, answer_format: str = "plain", templates: Path | None = None) -> str:
    """The task alone: the system message of a loop."""
    return _environment(templates).get_template("task.md.j2").render(task_context(settings, answer_format))


@dataclass(frozen=True)
class Subject:
    """What a prompt is about: a program, what names it (a candidate's id and name, or a file), its latest result,
    and its ancestors' names and latest results, root first."""

    label: str
    program: str
    result: Mapping[str, Any] | None = None
    lineage: tuple[tuple[str, Mapping[str, Any] | None], ...] = ()


def render_prompt(subject: Subject, settings: Settings, answer_format: str = "plain",
                  templates: Path | None = None) -> str:
    """A program's next-step prompt: the task, the program, its latest result's feedback and its lineage."""
    context = {
        **task_context(settings, answer_format),
        "label": subject.label,
        "program": subject.program.rstrip("\n"),
        "feedback": None if subject.result is None else feedback_text(Result.from_json(subject.result)),
        "lineage": [{"label": label, "summary": _summary(result)} for label, result in subject.lineage],
    }
    return _environment(templates).get_template("prompt.md.j2").render(context)


def stored_subject(store: CandidateStore, candidate: StoredCandidate) -> Subject:
    """A stored candidate as a prompt's subject, its lineage followed through its parents in the store."""
    lineage = []
    parent = candidate.meta.get("parent")
    while isinstance(parent, dict) and parent.get("kind") == "candidate" and len(lineage) < MAX_LINEAGE:
        try:
            ancestor = store.get(str(parent.get("id")))
        except StoreError:
            break
        lineage.append((_label(ancestor), ancestor.latest_result()))
        parent = ancestor.meta.get("parent")
    return Subject(_label(candidate), candidate.program(), candidate.latest_result(), tuple(reversed(lineage)))


def _label(candidate: StoredCandidate) -> str:
    name = one_line(str(candidate.meta.get("name") or ""), NAME_CHARS)
    return f"{candidate.id} {name}".rstrip()


def _environment(templates: Path | None) -> jinja2.Environment:
    """Templates from `templates` first (a user's overrides, by file name), then the package's."""
    folders = ([str(templates)] if templates is not None else []) + [str(TEMPLATES)]
    return jinja2.Environment(loader=jinja2.FileSystemLoader(folders), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def _summary(result: Mapping[str, Any] | None) -> str:
    if result is None:
        return "not evaluated"
    if result.get("status") != Status.OK:
        return str(result.get("status"))
    return (f"combined_score {result['combined_score']:.4f} (balancedness {result['balancedness_score']:.4f}, "
            f"speedup {result['speedup']:.2f}x)")

"""OpenEvolve's evaluation functions: `evaluate`, and `evaluate_stage1` / `evaluate_stage2` for its cascade.

Give OpenEvolve this file as its evaluation file; it uses the shared evaluator of `evaluator.api` with its
defaults (a held-out trace, the best device there is). `python -m evaluator init openevolve DIR` writes an
evaluation file that configures that evaluator from the evaluation commands' options and re-exports these:

    from evaluator.loops.configured import configure_from_options
    configure_from_options(["--device", "cuda", "--timeout", "60"])
    from evaluator.loops.openevolve_evaluator import *  # evaluate, evaluate_stage1, evaluate_stage2

OpenEvolve executes the evaluation file again for every program in cascade mode; configuring again with the same
options keeps the warm evaluator and its trace. Its worker processes, forked or spawned, each start their own
evaluator (with `EPLB_EVALUATOR_HOLDOUT_KEY` set, all on the same held-out trace), and evaluators in separate
processes still take turns on each GPU, so `parallel_evaluations` above 1 overlaps launching, validation and scoring
but never two timed candidates.

What OpenEvolve gets back (an `EvaluationResult`, or the metrics dict alone when openevolve is not importable):

- metrics: the numeric scores and times of the `Result` (`feedback.numeric_metrics`); `combined_score` is
  always there, 0.0 for any failure. `evaluate_stage1` returns `combined_score` 1.0 when the cheap check
  passes and 0.0 when it fails, so a cascade threshold such as 0.5 lets exactly the passing programs through;
  `evaluate_stage2`'s full scores then replace it.
- artifacts, which OpenEvolve shows the LLM when it next patches this program: `status` and `feedback`
  (`feedback.feedback_text`, at most `ARTIFACT_CHARS` characters: the error, the violations and the end of
  stderr, each once). OpenEvolve's prompt filter replaces any run of 32 or more letters and
  digits with `<REDACTED_TOKEN>`, so nothing here relies on a hash or an id.

The evaluator's own failures (`infra_error`) are not the program's, so they are never scored as the program's:

- `evaluate` and `evaluate_stage1` raise `EvaluatorFault` (a RuntimeError) with the evaluator's message. In
  direct mode OpenEvolve retries `evaluator.max_retries` times and then records `{"error": 0.0}`; in cascade
  mode a raising stage 1 is recorded as `{"stage1_passed": 0.0, "error": 0.0}` with the message in the
  artifacts. OpenEvolve never retries a cascade stage, so the stages try `CASCADE_ATTEMPTS` times first.
- `evaluate_stage2` never raises and never outlasts OpenEvolve's timeout: for a stage 2 that raises or times
  out, OpenEvolve keeps stage 1's `combined_score` of 1.0, the best score there is, for a program that was
  never measured. After `CASCADE_ATTEMPTS` evaluator failures, on any exception, and when no result has come
  within `STAGE2_DEADLINE_S` (waiting for a busy GPU included), it returns `combined_score` 0.0 and
  `stage2_passed` 0.0 (OpenEvolve's own mark of a failed stage), with `status` `infra_error` in the
  artifacts so the LLM is not told its program broke. `STAGE2_DEADLINE_S` must stay below OpenEvolve's
  `evaluator.timeout`: with a longer timeout, set `EPLB_EVALUATOR_STAGE2_DEADLINE_S` (seconds) in the
  environment of the OpenEvolve run, e.g. 570 for a timeout of 600. A stage 2 given up on while it waited
  for a device ends then; one already running ends within the candidate's own time limit.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from evaluator.api import check_program, evaluate_program, shared_evaluator
from evaluator.evaluation import Result
from evaluator.loops.feedback import feedback_text, numeric_metrics
from evaluator.status import Status

__all__ = ["evaluate", "evaluate_stage1", "evaluate_stage2"]

# Each artifact's limit. OpenEvolve shows a parent's artifacts in full up to `prompt.max_artifact_bytes`
# (20480 by default) each; five of 2000 characters keep one program's feedback to a few thousand tokens.
ARTIFACT_CHARS = 2000
# Evaluations per cascade stage when the evaluator itself fails: OpenEvolve never retries a cascade stage.
CASCADE_ATTEMPTS = 2


def _stage2_deadline_s() -> float:
    text = os.environ.get("EPLB_EVALUATOR_STAGE2_DEADLINE_S", "270")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"EPLB_EVALUATOR_STAGE2_DEADLINE_S must be a positive number of seconds, got {text!r}")
    return seconds


# When stage 2 gives up (score 0.0): before OpenEvolve's `evaluator.timeout` (300 s by default), which would
# keep stage 1's score instead.
STAGE2_DEADLINE_S = _stage2_deadline_s()


class EvaluatorFault(RuntimeError):
    """The evaluator failed (`infra_error`), not the program: OpenEvolve should retry, never score it."""


def evaluate(program_path: str) -> Any:
    """The full evaluation: scores as metrics, diagnostics as artifacts. Raises `EvaluatorFault` on an
    `infra_error`."""
    result = evaluate_program(program_path)
    _raise_if_infra(result)
    return _shaped(numeric_metrics(result), artifacts(result))


def evaluate_stage1(program_path: str) -> Any:
    """Cascade stage 1, cheap: the program imports and returns a valid plan for one window. `combined_score`
    is 1.0 if so, else 0.0 with the failure in the artifacts. Raises `EvaluatorFault` on an `infra_error`."""
    result = _attempt(check_program, program_path)
    _raise_if_infra(result)
    return _shaped({"combined_score": 1.0 if result.ok else 0.0}, artifacts(result))


def evaluate_stage2(program_path: str) -> Any:
    """Cascade stage 2: the full evaluation, as `evaluate`; an `infra_error`, an exception or running out of
    time score 0.0 with `stage2_passed` 0.0 instead of raising (see the module's docstring)."""
    give_up_at = time.monotonic() + STAGE2_DEADLINE_S

    def evaluation(path: str) -> Result:
        return shared_evaluator().evaluate(path, give_up_at)

    result = _within(STAGE2_DEADLINE_S, lambda: _attempt(evaluation, program_path))
    if result.status == Status.INFRA_ERROR:
        return _shaped({"combined_score": 0.0, "stage2_passed": 0.0}, artifacts(result))
    return _shaped(numeric_metrics(result), artifacts(result))


def artifacts(result: Result) -> dict[str, str]:
    """What the LLM sees about `result`: its `status`, and the `feedback` (`feedback.feedback_text`, at most
    `ARTIFACT_CHARS` characters), which holds the error, the violations and the end of stderr once each."""
    return {"status": result.status, "feedback": feedback_text(result, ARTIFACT_CHARS)}


def _attempt(evaluation: Callable[[str], Result], program_path: str) -> Result:
    """`evaluation` of the program, run again while the evaluator itself fails, at most `CASCADE_ATTEMPTS`
    times in all."""
    result = evaluation(program_path)
    for _ in range(CASCADE_ATTEMPTS - 1):
        if result.status != Status.INFRA_ERROR:
            break
        result = evaluation(program_path)
    return result


def _within(seconds: float, evaluation: Callable[[], Result]) -> Result:
    """`evaluation()`'s result if it comes within `seconds`, else (or if it raises) an `infra_error` Result. An
    evaluation given up on still ends on its own, within its timeout."""
    outcome: list[Result] = []

    def run() -> None:
        try:
            outcome.append(evaluation())
        except Exception:  # noqa: BLE001 - whatever it was, the program was not measured
            outcome.append(Result(Status.INFRA_ERROR, f"the evaluation raised:\n{traceback.format_exc()}"))

    thread = threading.Thread(target=run, name="openevolve-stage2", daemon=True)
    thread.start()
    thread.join(seconds)
    if outcome:
        return outcome[0]
    return Result(Status.INFRA_ERROR, f"the evaluation gave no result within {seconds:g} s (STAGE2_DEADLINE_S); the "
                                 "GPU may be busy with other evaluations")


def _raise_if_infra(result: Result) -> None:
    if result.status == Status.INFRA_ERROR:
        raise EvaluatorFault(f"the evaluator failed, not the program (infra_error): {result.error}")


def _shaped(metrics: dict[str, float], texts: dict[str, str]) -> Any:
    """OpenEvolve's EvaluationResult, or the metrics alone where openevolve is not installed."""
    try:
        from openevolve.evaluation_result import EvaluationResult
    except ImportError:
        return metrics
    return EvaluationResult(metrics=metrics, artifacts=texts)

"""What a loop shows its LLM about an evaluation: numeric metrics, and a short text that says what to fix."""

from __future__ import annotations

from evaluator.evaluation import Result
from evaluator.untrusted import clip, one_line, quoted

FEEDBACK_CHARS = 4000  # fits any loop's prompt budget for one program's feedback
MAX_VIOLATIONS = 5
VIOLATION_CHARS = 400
METRICS = ("combined_score", "balancedness_score", "speed_score", "speedup", "time_ms", "seed_time_ms",
           "slot_balancedness", "reference_balancedness", "seed_balancedness", "gpus_with_duplicate_expert")


def numeric_metrics(result: Result) -> dict[str, float]:
    """The result's scores and times as floats; those a failure does not have are left out."""
    values = {name: getattr(result, name) for name in METRICS}
    return {name: float(value) for name, value in values.items() if value is not None}


def feedback_text(result: Result, limit: int = FEEDBACK_CHARS) -> str:
    """For a failure: its kind, its message (which begins with what to change first), the first violations and the
    end of stderr, each once; for a success, the scores against the seed. At most `limit` characters, the start
    kept (it says what went wrong)."""
    if result.ok and result.time_ms is None:  # a first-stage check: nothing was scored
        lines = [f"status: ok on {result.device} ({result.card}): the program imports and returns a valid plan"]
    elif result.ok:
        low, high = result.speedup_interval or (result.speedup, result.speedup)
        lines = [
            f"status: ok on {result.device} ({result.card})",
            f"balancedness_score {result.balancedness_score:.4f} (the seed: {result.seed_balancedness:.4f})",
            f"time per call {result.time_ms:.3f} ms (the seed: {result.seed_time_ms:.3f} ms), speedup "
            f"{result.speedup:.2f}x (95% interval {low:.2f} to {high:.2f}), speed_score {result.speed_score:.4f}",
            f"combined_score {result.combined_score:.4f}",
        ]
        if result.timing.get("scored_work", "agrees") != "agrees":
            lines.append(f"timing: {result.timing['scored_work']}")
    else:
        lines = [f"status: {result.status}", "error (after each bar, as reported; it may quote the program):",
                 quoted(result.error or "", limit // 2)]
        for violation in result.violations[:MAX_VIOLATIONS]:
            lines.append(f"violation {one_line(str(violation.get('invariant')), 80)}: "
                         f"{one_line(str(violation.get('message')), VIOLATION_CHARS)}")
        if len(result.violations) > MAX_VIOLATIONS:
            lines.append(f"... and {len(result.violations) - MAX_VIOLATIONS} more violations")
        if result.stderr.strip():
            lines.append("stderr (last lines, as the program wrote them):\n"
                         + quoted("\n".join(result.stderr.strip().splitlines()[-20:]), limit // 4))
    return clip("\n".join(lines), limit)



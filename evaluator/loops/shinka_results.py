"""ShinkaEvolve's view of a Result: the `metrics.json` and `correct.json` it reads back from a results folder.

ShinkaEvolve runs one evaluation script per candidate and reads the folder with `shinka.utils.load_results`:
`correct.json` decides whether the program may become a parent (only correct programs are sampled), and
`metrics.json` gives `combined_score` (what it maximises), `public` (shown in the prompt, key by key),
`private` (stored only) and `text_feedback` (shown when `use_text_feedback` is on).

An `infra_error` is the evaluator's fault, yet ShinkaEvolve has no way to be told so: it ignores the script's
exit code, never retries a job, and stores every job as a program. Marking the program correct would let an
unmeasured program breed with a score of 0, and writing nothing reads as incorrect anyway, so the result is
written as incorrect, but every text a person or the LLM sees (`error`, `text_feedback`, the printed
feedback) says that the evaluator failed and not the program, `private.infra_error` marks it for whoever
filters the database, and the command exits with INFRA_ERROR for logs and wrappers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evaluator.evaluation import Result
from evaluator.files import write_atomically
from evaluator.loops.feedback import FEEDBACK_CHARS, feedback_text, numeric_metrics
from evaluator.untrusted import clip, visible
from evaluator.status import Status

METRICS_FILE = "metrics.json"
CORRECT_FILE = "correct.json"
INFRA_NOTE = ("The evaluator failed, not the program: the program was not measured, and this result says "
              "nothing about it. Do not change the program because of it.")


def metrics_json(result: Result) -> dict[str, Any]:
    """The content of `metrics.json` for `result`."""
    public = {name: value for name, value in numeric_metrics(result).items() if name != "combined_score"}
    private = {"status": result.status, "infra_error": result.status == Status.INFRA_ERROR, "device": result.device,
               "card": result.card, "software": result.software, "workload": result.workload}
    return {"combined_score": result.combined_score, "public": public, "private": private,
            "text_feedback": shinka_feedback(result)}


def correct_json(result: Result) -> dict[str, Any]:
    """The content of `correct.json` for `result`: correct only when ok; the error starts with the status."""
    if result.ok:
        return {"correct": True, "error": None}
    if result.status == Status.INFRA_ERROR:
        return {"correct": False,
                "error": f"infra_error: {INFRA_NOTE} The evaluator's error: {visible(result.error or '')}"}
    return {"correct": False, "error": clip(f"{result.status}: {visible(result.error or '')}", FEEDBACK_CHARS)}


def shinka_feedback(result: Result) -> str:
    """`feedback_text`, led by a plain statement that the evaluator failed when it did."""
    if result.status == Status.INFRA_ERROR:
        return clip(f"{INFRA_NOTE}\n{feedback_text(result)}", FEEDBACK_CHARS)
    return feedback_text(result)


def prepare_results_dir(results_dir: Path) -> None:
    """Create `results_dir` if missing, prove it writable and remove the result files of an earlier run, so
    that whatever result files it holds afterwards are this run's. Raises OSError."""
    results_dir.mkdir(parents=True, exist_ok=True)
    probe = results_dir / f".{METRICS_FILE}.{os.getpid()}.probe"
    probe.touch()
    probe.unlink()
    for name in (METRICS_FILE, CORRECT_FILE):
        (results_dir / name).unlink(missing_ok=True)


def write_results(results_dir: Path, result: Result) -> None:
    """Write `metrics.json`, then `correct.json`, each whole or not at all. Raises OSError.

    `correct.json` comes last: were the process killed in between, the missing file reads as incorrect.
    """
    write_atomically(results_dir / METRICS_FILE, json.dumps(metrics_json(result), indent=2) + "\n")
    write_atomically(results_dir / CORRECT_FILE, json.dumps(correct_json(result), indent=2) + "\n")

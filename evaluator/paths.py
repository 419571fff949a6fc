"""Where the project's files live."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SEED_PROGRAM = PROJECT_ROOT / "seeds" / "eplb.py"
# Run in a worker as candidates are, for the harness's time per call (see the file).
HARNESS_PROGRAM = PROJECT_ROOT / "evaluator" / "evaluation" / "timing" / "narrowest_plan.py"
DEFAULT_STORE = Path("candidates")  # relative to the working directory, like a repository's own folders

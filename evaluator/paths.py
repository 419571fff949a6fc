"""Where the project's files live."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE.parent  # the repository, where the package is not installed from a wheel
# The seed program and the seed patch ship with the package (the repository's seeds/eplb.py and patches/ link here).
SEED_PROGRAM = PACKAGE / "seed" / "eplb.py"
SEED_PATCH = PACKAGE / "seed" / "vectorized_packing_and_replication.diff"
SEED_PATH_RECORDED = "seeds/eplb.py"  # how a candidate's metadata names the seed, its parent
# Run in a worker as candidates are, for the harness's time per call (see the file).
HARNESS_PROGRAM = PACKAGE / "evaluation" / "timing" / "narrowest_plan.py"
DEFAULT_STORE = Path("candidates")  # relative to the working directory, like a repository's own folders

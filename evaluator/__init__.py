"""eplb-evaluator: turn an LLM's patch into a candidate EPLB program, run it in isolation and score it."""

from evaluator.patch import Patch, PatchError, apply_patch, parse_patch

__version__ = "0.1.0"

__all__ = ["Patch", "PatchError", "__version__", "apply_patch", "parse_patch"]

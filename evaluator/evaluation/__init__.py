"""From a candidate program to scores a loop can trust: schedule, isolated run, validation, scores."""

from evaluator.evaluation.evaluate import Evaluator, Settings
from evaluator.evaluation.result import CANDIDATE_FAILURES, STATUSES, Result

__all__ = ["CANDIDATE_FAILURES", "STATUSES", "Evaluator", "Result", "Settings"]

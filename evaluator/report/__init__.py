"""A static HTML report of a candidate store: leaderboards, charts, the family tree and a page per candidate, readable
offline. It reads the store only: no candidate code runs."""

from evaluator.report.data import gather
from evaluator.report.pages import ReportError, write_report

__all__ = ["ReportError", "gather", "write_report"]

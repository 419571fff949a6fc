"""One list of statuses: the enum, what a result accepts, what the sandbox may fail with, and the docs' table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evaluator.evaluation import CANDIDATE_FAILURES, STATUSES, Result
from evaluator.sandbox import Failure
from evaluator.status import SANDBOX_FAILURES, Status

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_a_result_takes_every_status_and_keeps_it_as_its_string():
    for status in Status:
        result = Result(status)
        assert type(result.status) is str and result.status == status.value == status
        assert json.loads(json.dumps(result.to_json()))["status"] == status.value
    assert STATUSES == tuple(status.value for status in Status)
    assert set(CANDIDATE_FAILURES) == set(STATUSES) - {"ok", "infra_error"}


def test_an_unknown_status_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match="unknown status 'okay'; expected one of ok, apply_error"):
        Result("okay")


def test_the_sandbox_fails_only_in_its_own_kinds():
    assert Failure(Status.TIMEOUT, "slow").kind is Status.TIMEOUT
    for status in set(Status) - SANDBOX_FAILURES:
        with pytest.raises(ValueError, match="not a way a worker's run can fail"):
            Failure(status, "no")
    assert Status.OK not in SANDBOX_FAILURES and Status.INVALID_OUTPUT not in SANDBOX_FAILURES


def test_the_docs_table_lists_every_status_in_order():
    section = (DOCS / "evaluation.md").read_text().split("## Statuses", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert documented == [status.value for status in Status]

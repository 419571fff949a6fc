"""The store as plain data for the report: candidates, their results grouped by the trace they were measured on,
a leaderboard per trace with its Pareto front, and the family tree. Every file is read once."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from evaluator.eplb.problem import Problem
from evaluator.lineage import LineageError, root_program
from evaluator.status import Status
from evaluator.store import (
    BASELINE_WORKLOAD,
    DEFAULT_SOURCE,
    HOLDOUT_SOURCE,
    CandidateStore,
    StoredCandidate,
    measured_at,
    score_in,
    trace_source,
)

STATUS_ORDER = tuple(status.value for status in Status)
_DEFAULT_PROBLEM = json.dumps(BASELINE_WORKLOAD["problem"], sort_keys=True)


@dataclass(frozen=True)
class TraceGroup:
    """Results that one leaderboard compares: the same trace and problem shape (held-out traces all together, each
    a fresh draw with the same statistics)."""

    key: tuple[Any, ...]
    label: str

    @property
    def page(self) -> str:
        """Its page's file name, the same in every report of the store."""
        return f"trace-{hashlib.sha256(repr(self.key).encode()).hexdigest()[:10]}.html"

    @property
    def baseline(self) -> bool:
        """Whether it is the default trace with the default problem shape, which baselines are measured on."""
        return self.key == (DEFAULT_SOURCE, _DEFAULT_PROBLEM)


@dataclass(frozen=True)
class StoredResult:
    data: dict[str, Any]  # the result as stored
    trace: TraceGroup
    measured_at: datetime | None  # when it was stored; None for a baseline kept only in accepted.json

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def scored(self) -> bool:
        """An ok result with its scores (the ok of a first-stage check has none)."""
        return self.ok and number_in(self.data, "speedup") > 0


@dataclass
class Candidate:
    id: str
    name: str
    description: str
    parent: dict[str, Any]  # the metadata's `parent`: kind, id or path, sha256
    created_at: str
    baseline: dict[str, Any] | None  # the accepted result, where the candidate is accepted
    program: str
    results: list[StoredResult]  # oldest first
    children: list[str] = field(default_factory=list)  # ids, oldest first

    @property
    def accepted(self) -> bool:
        return self.baseline is not None

    @property
    def parent_id(self) -> str | None:
        """The parent candidate's id, when the parent is a candidate."""
        return str(self.parent.get("id")) if self.parent.get("kind") == "candidate" else None

    def latest(self, trace: TraceGroup) -> StoredResult | None:
        """The newest result on `trace` that is not an infra_error, else the newest infra_error there."""
        here = [result for result in self.results if result.trace == trace]
        measured = [result for result in here if result.status != Status.INFRA_ERROR]
        return (measured or here or [None])[-1]

    def load_picture(self) -> StoredResult | None:
        """The result whose plan's load on each GPU is drawn: the newest that keeps it, on the default trace (of the
        default shape) where one does."""
        kept = [(result.trace.baseline, order, result)
                for order, result in enumerate(self.results)
                if result.scored and isinstance(result.data.get("gpu_load"), Mapping)]
        return max(kept, key=lambda item: item[:2])[2] if kept else None


@dataclass(frozen=True)
class Row:
    candidate: Candidate
    result: StoredResult


@dataclass(frozen=True)
class Leaderboard:
    trace: TraceGroup
    rows: list[Row]  # one per candidate with a result on the trace: ok by combined score, best first; then failures
    counts: list[tuple[str, int]]  # candidates by the status of their latest result there
    front: frozenset[str]  # ids of the ok candidates no other beats on both balancedness and speedup
    seed_balancedness: float | None  # the seed's on this trace (the median over held-out draws), speedup 1
    by_creation: list[Row]  # the rows in the order their candidates were made

    @property
    def scored_rows(self) -> list[Row]:
        return [row for row in self.rows if row.result.scored]


@dataclass(frozen=True)
class TreeRow:
    depth: int
    candidate: Candidate | None  # None for a root: the seed, a program file, a parent the store lacks
    label: str


@dataclass(frozen=True)
class ReportData:
    store: str
    candidates: dict[str, Candidate]  # by id, in id order
    leaderboards: list[Leaderboard]  # the default trace first
    main: Leaderboard | None  # whose scores the family tree shows
    tree: list[TreeRow]

    def ancestry(self, candidate: Candidate) -> list[Candidate]:
        """The candidate's ancestors in the store, nearest last."""
        chain, seen = [], {candidate.id}
        while (parent := self.candidates.get(candidate.parent_id or "")) is not None and parent.id not in seen:
            chain.append(parent)
            seen.add(parent.id)
            candidate = parent
        return chain[::-1]


def gather(store: CandidateStore) -> ReportData:
    """Read every candidate, its results and its acceptance once, and arrange them for the report."""
    groups: dict[tuple[Any, ...], TraceGroup] = {}
    candidates = {stored.id: _candidate(stored, groups) for stored in store.candidates()}
    for candidate in sorted(candidates.values(), key=_creation):
        if candidate.parent_id in candidates:
            candidates[candidate.parent_id].children.append(candidate.id)
    boards = [_leaderboard(trace, candidates.values()) for trace in sorted(groups.values(), key=_trace_order)]
    main = next((board for board in boards if board.trace.baseline), None)
    main = main or max(boards, key=lambda board: len(board.rows), default=None)
    return ReportData(str(store.root), candidates, boards, main, _tree(candidates))


def pareto_front(points: Iterable[tuple[str, float, float]]) -> frozenset[str]:
    """The ids of the (id, x, y) points that no other point matches or beats on both x and y while beating it on
    one: the best trade-offs, both higher being better. Points alike are all on the front."""
    front, best_y = set(), float("-inf")  # best_y: the highest y among points of a higher x
    ordered = sorted(points, key=lambda point: (-point[1], -point[2]))
    for _, same_x in itertools.groupby(ordered, key=lambda point: point[1]):
        group = list(same_x)
        top = group[0][2]
        if top > best_y:
            front.update(point[0] for point in group if point[2] == top)
        best_y = max(best_y, top)
    return frozenset(front)


def parent_program(data: ReportData, candidate: Candidate) -> tuple[str | None, str]:
    """The program the candidate's patch was applied to, and what to call it; None with the reason where it cannot
    be found as it was (a parent the store lacks, a seed or program file changed since)."""
    parent_id = candidate.parent_id
    if parent_id is not None:
        parent = data.candidates.get(parent_id)
        return (parent.program, f"candidate {parent_id}") if parent else (None, f"candidate {parent_id} is not stored")
    label = "the seed" if candidate.parent.get("kind") == "seed" else f"file {candidate.parent.get('path')}"
    try:
        return root_program(candidate.parent, f"candidate {candidate.id}'s"), label
    except LineageError as error:
        return None, str(error)


def diff_lines(before: str, after: str, names: tuple[str, str]) -> list[tuple[str, str]]:
    """The unified diff from `before` to `after`, each line with its kind: `add`, `del`, `hunk`, `file` or `same`."""
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), *names, lineterm="")
    return [(_diff_kind(line), line) for line in lines]


def _diff_kind(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "file"
    return {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")


def _candidate(stored: StoredCandidate, groups: dict[tuple[Any, ...], TraceGroup]) -> Candidate:
    meta = stored.meta
    results = [StoredResult(result, _group(result, groups), measured_at(path))
               for path, result in stored.result_files()]
    baseline = stored.baseline() if stored.accepted else None
    if baseline is not None and all(result.data != baseline for result in results):
        results.insert(0, StoredResult(baseline, _group(baseline, groups), None))  # a clone has no results/
    parent = meta.get("parent")
    return Candidate(stored.id, str(meta.get("name") or ""), str(meta.get("description") or ""),
                     parent if isinstance(parent, dict) else {}, str(meta.get("created_at") or ""), baseline,
                     stored.program(), results)


_FILE_TRACE = "file"


def _trace_key(workload: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the results compared on one leaderboard share, from a result's `workload`."""
    problem = json.dumps(workload.get("problem"), sort_keys=True)
    source = trace_source(workload)
    if source in (DEFAULT_SOURCE, HOLDOUT_SOURCE):  # one fixed default trace per shape; held-out draws together
        return (source, problem)
    # a trace file by its data, wherever it was read from (as `list --trace FILE` does)
    return (_FILE_TRACE, workload.get("digest"), workload.get("windows"), workload.get("steps_per_window"), problem)


def _group(result: Mapping[str, Any], groups: dict[tuple[Any, ...], TraceGroup]) -> TraceGroup:
    workload = result.get("workload")
    workload = workload if isinstance(workload, Mapping) else {}
    key = _trace_key(workload)
    if key not in groups:
        groups[key] = TraceGroup(key, _trace_label(key, workload))
    return groups[key]


def _trace_label(key: tuple[Any, ...], workload: Mapping[str, Any]) -> str:
    source = key[0]
    if source == DEFAULT_SOURCE:
        label = "default trace"
    elif source == HOLDOUT_SOURCE:
        label = "held-out traces"
    else:
        label = f"trace {workload.get('source')} (digest {workload.get('digest')})"
    if key[-1] == _DEFAULT_PROBLEM:
        return label
    shape = workload.get("problem") if isinstance(workload.get("problem"), Mapping) else {}
    try:
        problem = Problem(**shape)
    except (TypeError, ValueError):
        return f"{label}, problem {key[-1]}"
    return (f"{label}, {problem.num_layers} layers x {problem.num_experts} experts, {problem.num_replicas} replicas "
            f"on {problem.num_gpus} GPUs")


def _trace_order(trace: TraceGroup) -> tuple[int, bool, str]:
    source = trace.key[0]
    rank = 0 if source == DEFAULT_SOURCE else 1 if source == HOLDOUT_SOURCE else 2
    return (rank, trace.key[-1] != _DEFAULT_PROBLEM, trace.label)


def _leaderboard(trace: TraceGroup, candidates: Iterable[Candidate]) -> Leaderboard:
    rows = [Row(candidate, latest) for candidate in candidates if (latest := candidate.latest(trace)) is not None]
    rows.sort(key=_best_first)
    counts = Counter(row.result.status for row in rows)
    scored = [row.result.data for row in rows if row.result.scored]
    front = pareto_front((row.candidate.id, number_in(row.result.data, "balancedness_score"),
                          number_in(row.result.data, "speedup")) for row in rows if row.result.scored)
    seeds = sorted(value for result in scored if isinstance(value := result.get("seed_balancedness"), (int, float)))
    return Leaderboard(
        trace=trace,
        rows=rows,
        counts=sorted(counts.items(), key=lambda item: _status_rank(item[0])),
        front=front,
        seed_balancedness=seeds[len(seeds) // 2] if seeds else None,
        by_creation=sorted(rows, key=lambda row: _creation(row.candidate)),
    )


def _best_first(row: Row) -> tuple[int, float, str]:
    if row.result.scored:
        return (0, -number_in(row.result.data, "combined_score"), row.candidate.id)
    return (1, float(_status_rank(row.result.status)), row.candidate.id)


def _status_rank(status: str) -> int:
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER)


def number_in(result: Mapping[str, Any], key: str) -> float:
    """`result[key]` as a number; 0 where a result file (edited by hand, say) holds anything else."""
    return score_in(result, key) or 0.0


def _creation(candidate: Candidate) -> tuple[str, str]:
    return (candidate.created_at, candidate.id)


def _tree(candidates: dict[str, Candidate]) -> list[TreeRow]:
    """The family tree, depth first: each root (the seed, a program file, a parent the store lacks) with its
    descendants, children oldest first. Candidates whose parents form a cycle come last, under a root of their own."""
    roots: dict[str, list[Candidate]] = {}
    for candidate in sorted(candidates.values(), key=_creation):
        if candidate.parent_id not in candidates:
            roots.setdefault(root_label(candidate), []).append(candidate)
    rows: list[TreeRow] = []
    seen: set[str] = set()
    for label, tops in roots.items():
        rows.append(TreeRow(0, None, label))
        rows += _descendants(tops, candidates, seen)
    cycle = [candidate for candidate in candidates.values() if candidate.id not in seen]
    if cycle:
        rows.append(TreeRow(0, None, "candidates whose parents form a cycle"))
        rows += [TreeRow(1, candidate, candidate.id) for candidate in cycle]
    return rows


def _descendants(tops: list[Candidate], candidates: dict[str, Candidate], seen: set[str]) -> list[TreeRow]:
    """`tops` and their descendants at depth 1 and below, depth first, without recursion (a chain may be long)."""
    rows = []
    stack = [(1, candidate) for candidate in reversed(tops)]
    while stack:
        depth, candidate = stack.pop()
        if candidate.id in seen:
            continue
        seen.add(candidate.id)
        rows.append(TreeRow(depth, candidate, candidate.id))
        stack += [(depth + 1, candidates[child]) for child in reversed(candidate.children)]
    return rows


def root_label(candidate: Candidate) -> str:
    """What a candidate whose parent is no candidate of the store descends from."""
    kind = candidate.parent.get("kind")
    if kind == "seed":
        return "seed"
    if kind == "file":
        return f"program file {candidate.parent.get('path')}"
    if kind == "candidate":
        return f"candidate {candidate.parent.get('id')} (not in the store)"
    return "unknown parent"

"""`apply PATCH`: turn an LLM's patch into a stored candidate program."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from evaluator import __version__
from evaluator.commands import CommandError, add_store_argument
from evaluator.commands.evaluate import (
    add_evaluation_arguments,
    evaluation_inputs,
    exit_code_of,
    measured_here,
    note_cpu_fallback,
    open_evaluator,
    report,
)
from evaluator.commands.diff import unified_diff
from evaluator.commands.inputs import read_bytes_argument
from evaluator.commands.reuse import REUSED, add_force_argument, may_reuse, stored_result
from evaluator.commands.terminal import Activity
from evaluator.evaluation.result import Result, workload_summary
from evaluator.lineage import LineageError, record
from evaluator.exitcodes import ExitCode
from evaluator.parent import ParentError, ParentProgram, resolve_parent
from evaluator.patch import Application, Patch, PatchError, apply_parsed, decode_patch, parse_patch
from evaluator.untrusted import NAME_CHARS, one_line, visible
from evaluator.status import Status
from evaluator.store import (
    BASELINE_WORKLOAD,
    DEFAULT_SOURCE,
    CandidateStore,
    StoreError,
    StoredCandidate,
    same_workload,
    sha256_text,
)

NAME = "apply"
HELP = "Apply a patch to the seed (or to --parent), store the candidate program and evaluate it."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patch", metavar="PATCH", help="the patch file, or - to read it from standard input")
    parser.add_argument(
        "--parent", metavar="FILE_OR_ID", help="the program to patch: a file or a stored candidate id (default: the seed)"
    )
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="the patch is a whole new program (a ```python block, or the text itself), not SEARCH/REPLACE blocks",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the unified diff and write nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_store_argument(parser)
    parser.add_argument("--no-evaluate", action="store_true", help="store the candidate without evaluating it")
    add_force_argument(parser)
    parser.add_argument(
        "--accept",
        action="store_true",
        help="accept the candidate if its result is ok on the default trace: the result becomes its regression baseline",
    )
    add_evaluation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.accept and (args.no_evaluate or args.dry_run):
        raise CommandError("--accept needs a result: it cannot be combined with --no-evaluate or --dry-run")
    patch_bytes = read_bytes_argument(args.patch, "patch")
    store = CandidateStore(args.store)
    try:
        parent = resolve_parent(args.parent, store)
    except ParentError as error:
        raise CommandError(str(error)) from None
    try:
        patch_text = decode_patch(patch_bytes)
        patch = parse_patch(patch_text, rewrite=args.rewrite)
        applied = apply_parsed(parent.source, patch)
    except PatchError as error:
        return _report_patch_error(error, parent, args.json)
    if args.dry_run:
        diff = unified_diff(parent.source, applied.program, parent.label, "candidate")
        if args.json:
            print(json.dumps({"status": Status.OK.value, "dry_run": True, "diff": diff}))
        else:
            sys.stdout.write(diff)
        return ExitCode.OK
    problem, trace = (None, None) if args.no_evaluate else evaluation_inputs(args)
    workload = None if trace is None else workload_summary(trace, problem)
    if args.accept and not same_workload({"workload": workload}, BASELINE_WORKLOAD):
        raise CommandError(
            f"--accept needs a result on the {DEFAULT_SOURCE!r} trace with the default problem shape (no --workload, "
            f"--holdout or shape option); this run would measure on {workload['source']!r} with {workload['problem']}"
        )
    try:
        stored, created = store.add(applied.program, patch_text, _metadata(patch, applied, parent))
    except OSError as error:
        raise CommandError(f"cannot write the candidate under {store.root}: {error}", ExitCode.INFRA_ERROR) from None
    try:
        record(store.root, stored, parent.source)
    except (LineageError, OSError) as error:
        raise CommandError(f"cannot record candidate {stored.id} in the lineage: {error}", ExitCode.INFRA_ERROR) from None
    if args.no_evaluate:
        _report_stored(stored, created, applied, parent, args.json, None)
        return ExitCode.OK
    reusable = stored_result(stored, workload, measured_here(args)) if may_reuse(args) else None
    if reusable is None:
        with (Activity(f"evaluating candidate {stored.id}") as activity,
              open_evaluator(args, problem, trace, announce=activity.doing) as evaluator):
            result = evaluator.evaluate(stored.program_path)
        stored.add_result(result.to_json())
        note_cpu_fallback(result, args.device, first=True)
    else:
        result = reusable
    refusal = _accept(store, stored, result) if args.accept else None
    _report_stored(stored, created, applied, parent, args.json, result, reused=reusable is not None,
                   accepted=args.accept and refusal is None)
    if refusal is not None:
        raise CommandError(refusal)
    return exit_code_of(result)


def _accept(store: CandidateStore, stored: StoredCandidate, result: Result) -> str | None:
    """Accept the candidate with `result` as its baseline; the reason it was refused, or None."""
    try:
        store.accept(stored, result.to_json())
    except StoreError as error:
        return str(error)
    return None


def _metadata(patch: Patch, applied: Application, parent: ParentProgram) -> dict[str, object]:
    return {
        "name": patch.name,
        "description": patch.description,
        "parent": parent.ref,
        "program_sha256": sha256_text(applied.program),
        "patch_format": patch.format,
        "blocks": [
            {"number": b.number, "lines": [b.first_line, b.last_line], "match": b.tolerance} for b in applied.blocks
        ],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "evaluator_version": __version__,
    }


def _report_patch_error(error: PatchError, parent: ParentProgram, as_json: bool) -> int:
    if as_json:
        block = error.block.number if error.block else None
        print(json.dumps({"status": Status.APPLY_ERROR.value, "error_kind": error.kind, "block": block,
                          "error": str(error)}))
    else:
        print(f"error: the patch does not apply to {parent.label}: {visible(str(error))}", file=sys.stderr)
    return ExitCode.PATCH_ERROR


def _report_stored(
    stored: StoredCandidate,
    created: bool,
    applied: Application,
    parent: ParentProgram,
    as_json: bool,
    result: Result | None,
    reused: bool = False,
    accepted: bool = False,
) -> None:
    if as_json:
        candidate = {"id": stored.id, "path": str(stored.path), **stored.meta}
        reply = {"status": Status.OK.value if result is None else result.status, "candidate": candidate,
                 "created": created}
        if result is not None:
            reply.update(result=result.to_json(), reused=reused, accepted=accepted)
        print(json.dumps(reply))
        return
    name = one_line(stored.meta.get("name") or "(unnamed)", NAME_CHARS)
    state = "stored in" if created else "already stored (same program) in"
    print(f"candidate {stored.id} {state} {stored.path}")
    print(f"  name:   {name}")
    print(f"  parent: {parent.label}")
    if applied.blocks:
        exact = sum(block.tolerance == "exact" for block in applied.blocks)
        print(f"  blocks: {len(applied.blocks)} applied, {exact} exactly")
        for block in applied.blocks:
            if block.tolerance != "exact":
                print(f"    block {block.number} matched lines {block.first_line}-{block.last_line} ({block.tolerance} forgiven)")
    else:
        print("  rewrite of the EVOLVE-BLOCK" if "EVOLVE-BLOCK" in parent.source else "  rewrite of the whole program")
    if result is None:
        return
    if reused:
        print(f"  {REUSED}")
    report(result, f"candidate {stored.id}", as_json=False)
    if accepted:
        print(f"candidate {stored.id} accepted: this result is its regression baseline")

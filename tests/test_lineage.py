"""The lineage repository: a family seed -> A -> B -> C made through the real CLI, browsed with real git."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evaluator.lineage import (
    LineageError,
    lineage_path,
    path_from_seed,
    record,
    record_stored,
)
from evaluator.paths import SEED_PROGRAM
from evaluator.store import CandidateStore

TIMEOUT = 300


def drop_line(name: str, line: str) -> str:
    """A patch named `name` that deletes one line of the seed (each patch of the family deletes a different one)."""
    context = "    num_redundant = num_phy - num_log\n" if "num_redundant >=" in line else ""
    return (
        f"<NAME>\n{name}\n</NAME>\n<DESCRIPTION>\nRemove `{line.strip()}`.\nIt never fails.\n</DESCRIPTION>\n"
        f"<DIFF>\n<<<<<<< SEARCH\n{context}{line}\n=======\n{context.rstrip()}\n>>>>>>> REPLACE\n</DIFF>\n"
    ).replace("=======\n\n>>>>>>>", "=======\n>>>>>>>")


DROPPED = {
    "drop_redundant_check": "    assert num_redundant >= 0",
    "drop_pack_check": "    assert num_groups % num_packs == 0",
    "drop_group_check": "    assert num_logical_experts % num_groups == 0",
    "drop_node_check": "    assert num_groups % num_nodes == 0",
}


def clean_git_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}


def evaluator(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evaluator", *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def run_git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=False,
        env=clean_git_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def apply(cwd: Path, name: str, parent: str | None = None) -> str:
    """Store a candidate through `python -m evaluator apply`; returns its id."""
    patch = cwd / f"{name}.diff"
    patch.write_text(drop_line(name, DROPPED[name]))
    args = ["apply", str(patch), "--no-evaluate", "--json"] + (["--parent", parent] if parent else [])
    result = evaluator(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["candidate"]["id"]


def record_candidate(store: Path, candidate_id: str, parent_program: str) -> str:
    return record(store, CandidateStore(store).get(candidate_id), parent_program)


def program_of(store: Path, candidate_id: str) -> str:
    return CandidateStore(store).get(candidate_id).program()


@pytest.fixture(scope="module")
def built_family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """seed -> A -> B -> C, each applied with the CLI (which records it) and recorded again right after; built once
    for the module (each `apply` is a process of its own, seconds on a small machine)."""
    root = tmp_path_factory.mktemp("family")
    store = root / "candidates"
    a = apply(root, "drop_redundant_check")
    record_candidate(store, a, SEED_PROGRAM.read_text())
    b = apply(root, "drop_pack_check", parent=a)
    record_candidate(store, b, program_of(store, a))
    c = apply(root, "drop_group_check", parent=b)
    record_candidate(store, c, program_of(store, b))
    return root, {"A": a, "B": b, "C": c}


@pytest.fixture
def family(tmp_path: Path, built_family: tuple[Path, dict[str, str]]) -> dict[str, str]:
    """A copy of the family (store and lineage repository) in the test's own folder, which the test may change."""
    root, ids = built_family
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    return ids


def test_git_log_walks_from_the_candidate_back_to_the_seed(tmp_path, family):
    repo = lineage_path(tmp_path / "candidates")
    log = run_git(repo, "log", "--format=%s|%(trailers:key=Candidate,valueonly,separator=)", f"candidate/{family['C']}")
    assert log.splitlines() == [
        f"drop_group_check|{family['C']}",
        f"drop_pack_check|{family['B']}",
        f"drop_redundant_check|{family['A']}",
        "seed: seeds/eplb.py|",
    ]
    assert run_git(repo, "rev-list", "--max-parents=0", "--all").split() == [
        run_git(repo, "rev-list", "--max-parents=0", f"candidate/{family['A']}").strip()
    ]
    assert run_git(repo, "show", f"candidate/{family['C']}:program.py") == program_of(
        tmp_path / "candidates", family["C"]
    )
    assert run_git(repo, "ls-tree", "--name-only", f"candidate/{family['C']}").split() == ["program.py"]


def test_git_diff_between_parent_and_child_is_the_childs_patch(tmp_path, family):
    diff = run_git(
        lineage_path(tmp_path / "candidates"), "diff", f"candidate/{family['A']}", f"candidate/{family['B']}"
    )
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["-    assert num_groups % num_packs == 0"]


def test_commit_message_is_the_patch_name_and_description_with_the_candidate_trailer(tmp_path, family):
    message = run_git(lineage_path(tmp_path / "candidates"), "log", "-1", "--format=%B", f"candidate/{family['B']}")
    assert message.strip() == (
        f"drop_pack_check\n\nRemove `assert num_groups % num_packs == 0`.\nIt never fails.\n\nCandidate: {family['B']}"
    )
    author = run_git(
        lineage_path(tmp_path / "candidates"), "log", "-1", "--format=%an <%ae>", f"candidate/{family['B']}"
    )
    assert author.strip() == "eplb-evaluator <eplb-evaluator@localhost>"


def test_lineage_command_prints_the_path_root_first(tmp_path, family):
    result = evaluator("lineage", family["C"][:6], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, *lines = [line.split() for line in result.stdout.splitlines()]
    assert header[:3] == ["id", "commit", "name"]
    assert [line[0] for line in lines] == ["root", family["A"], family["B"], family["C"]]
    assert [line[2] for line in lines] == ["seed:", "drop_redundant_check", "drop_pack_check", "drop_group_check"]
    commits = run_git(lineage_path(tmp_path / "candidates"), "rev-list", f"candidate/{family['C']}").split()[::-1]
    assert [line[1] for line in lines] == [commit[:12] for commit in commits]

    as_json = json.loads(evaluator("lineage", family["C"], "--json", cwd=tmp_path).stdout)["lineage"]
    assert [step["commit"] for step in as_json] == commits
    assert [step["candidate_id"] for step in as_json] == [None, family["A"], family["B"], family["C"]]


def test_recording_again_changes_nothing(tmp_path, family):
    store, repo = tmp_path / "candidates", lineage_path(tmp_path / "candidates")
    before = run_git(repo, "show-ref"), run_git(repo, "count-objects", "-v")
    commit = record_candidate(store, family["B"], program_of(store, family["A"]))
    assert commit == run_git(repo, "rev-parse", f"candidate/{family['B']}").strip()
    assert (run_git(repo, "show-ref"), run_git(repo, "count-objects", "-v")) == before


def test_children_of_the_seed_share_one_root_commit(tmp_path, family):
    store = tmp_path / "candidates"
    sibling = apply(tmp_path, "drop_node_check")
    record_candidate(store, sibling, SEED_PROGRAM.read_text())
    assert path_from_seed(store, sibling)[0] == path_from_seed(store, family["C"])[0]
    assert len(run_git(lineage_path(store), "rev-list", "--max-parents=0", "--all").split()) == 1
    assert len(run_git(lineage_path(store), "tag", "--list", "root/*").split()) == 1


def test_the_enclosing_repository_gets_no_commit_ref_or_file(tmp_path):
    run_git(tmp_path, "init", "--quiet")
    (tmp_path / "README").write_text("project\n")
    run_git(tmp_path, "add", "README")
    run_git(tmp_path, "-c", "user.name=p", "-c", "user.email=p@p", "commit", "--quiet", "-m", "project")
    before = run_git(tmp_path, "show-ref"), run_git(tmp_path, "rev-list", "--all"), run_git(tmp_path, "ls-files")
    candidate = apply(tmp_path, "drop_redundant_check")
    # A caller's GIT_DIR naming the project's repository must not redirect the lineage there.
    script = "import sys; from evaluator.lineage import record_stored; print(record_stored(sys.argv[1], sys.argv[2]))"
    env = {**os.environ, "GIT_DIR": str(tmp_path / ".git"), "GIT_WORK_TREE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script, "candidates", candidate],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert (
        run_git(tmp_path, "show-ref"),
        run_git(tmp_path, "rev-list", "--all"),
        run_git(tmp_path, "ls-files"),
    ) == before
    added = run_git(tmp_path, "add", "--all", "--dry-run").splitlines()
    assert f"add 'candidates/{candidate}/program.py'" in added
    assert not [line for line in added if ".lineage" in line]
    assert (
        run_git(lineage_path(tmp_path / "candidates"), "rev-parse", f"candidate/{candidate}").strip()
        == done.stdout.strip()
    )


def test_two_processes_recording_siblings_at_once_both_land(tmp_path):
    store = tmp_path / "candidates"
    parent = apply(tmp_path, "drop_redundant_check")
    children = [
        apply(tmp_path, name, parent=parent) for name in ("drop_pack_check", "drop_group_check", "drop_node_check")
    ]
    # Each process records the shared parent too, so all of them race for the same parent commit as well.
    script = "import sys; from evaluator.lineage import record_stored; print(record_stored(sys.argv[1], sys.argv[2]))"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(store), child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for child in children
    ]
    outputs = [process.communicate(timeout=TIMEOUT) for process in processes]
    assert [process.returncode for process in processes] == [0] * len(children), outputs
    repo = lineage_path(store)
    parent_commit = run_git(repo, "rev-parse", f"candidate/{parent}").strip()
    for child, (stdout, _) in zip(children, outputs):
        assert run_git(repo, "rev-parse", f"candidate/{child}").strip() == stdout.strip()
        assert run_git(repo, "rev-parse", f"candidate/{child}^").strip() == parent_commit
    assert len(run_git(repo, "rev-list", "--all").split()) == 1 + 1 + len(children)
    run_git(repo, "fsck", "--strict")


def test_unknown_id_is_a_clear_error(tmp_path, family):
    result = evaluator("lineage", "ffffff", cwd=tmp_path)
    assert result.returncode == 2
    assert "no candidate 'ffffff'" in result.stderr and "--record" not in result.stderr
    result = evaluator("lineage", "not-an-id", cwd=tmp_path)
    assert result.returncode == 2 and "not a candidate id" in result.stderr


def test_a_store_without_lineage_is_a_clear_error_until_recorded(tmp_path, family):
    a, b = family["A"], family["B"]
    shutil.rmtree(lineage_path(tmp_path / "candidates"))  # as in a clone of a store committed without it
    result = evaluator("lineage", b, cwd=tmp_path)
    assert result.returncode == 2
    assert "no lineage at candidates/.lineage" in result.stderr and "--record" in result.stderr
    assert not lineage_path(tmp_path / "candidates").exists()
    # --record rebuilds the missing ancestors from the store, as for a store committed without its lineage.
    result = evaluator("lineage", b, "--record", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["root", a, b]


def test_a_parent_program_that_does_not_match_the_metadata_is_refused(tmp_path, family):
    store, a = tmp_path / "candidates", family["A"]
    shutil.rmtree(lineage_path(store))
    with pytest.raises(LineageError, match=rf"candidate {a}.*{a}/meta.json"):
        record_candidate(store, a, SEED_PROGRAM.read_text() + "# changed\n")
    assert run_git(lineage_path(store), "tag", "--list") == ""


def test_parents_forming_a_cycle_are_refused(tmp_path, family):
    store, a, b = tmp_path / "candidates", family["A"], family["B"]
    meta_a = store / a / "meta.json"
    meta = json.loads(meta_a.read_text())
    meta["parent"] = json.loads((store / b / "meta.json").read_text())["parent"] | {"id": b}
    meta["parent"]["sha256"] = CandidateStore(store).get(b).meta["program_sha256"]
    meta_a.write_text(json.dumps(meta))
    shutil.rmtree(lineage_path(store))  # recorded by apply before the tampering; rebuild from the store
    with pytest.raises(LineageError, match="form a cycle"):
        record_stored(store, b)


def test_apply_records_the_candidate(tmp_path):
    a = apply(tmp_path, "drop_redundant_check")
    result = evaluator("lineage", a, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

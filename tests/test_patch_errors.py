"""Malformed patches: each fails with its own error, a message that says what and where, and leaves nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from patch_texts import SEED, block

from evaluator.patch import (
    AmbiguousSearchError,
    CandidateSyntaxError,
    IndentationShiftError,
    NoChangeError,
    PatchError,
    PatchFormatError,
    ProtectedRegionError,
    SearchNotFoundError,
    apply_patch,
    decode_patch,
)
from evaluator.paths import SEED_PROGRAM

CORPUS_DIR = Path(__file__).parent / "fixtures" / "malformed_patches"


@dataclass(frozen=True)
class Expected:
    error: type[PatchError]
    # (number, total, first SEARCH line) of the block the message names; total is None for a block that never
    # ends, since the patch was not read to its end
    block: tuple[int, int | None, str] | None
    fragments: tuple[str, ...]  # what the message must say


CORPUS = {
    "search_not_found.diff": Expected(
        SearchNotFoundError,
        (1, 1, "n, num_log = weight.shape"),
        (
            "the SEARCH text was not found in the program",
            "The closest region is program lines 81-84",
            "81 |     n, num_log = weight.shape\n82 |     num_redundant = num_phy - num_log\n"
            "83 |     assert num_redundant >= 0\n84 |     device = weight.device\n",
            "--- your SEARCH text\n+++ program lines 81-84\n",
            "\n-    assert num_redundant > 0\n+    assert num_redundant >= 0\n",
        ),
    ),
    "search_only_before_earlier_block.diff": Expected(
        SearchNotFoundError,
        (2, 2, "assert num_redundant >= 0"),
        (
            # the closest region is looked for in the program as block 1 left it
            "The closest region is program lines 83-83",
            "83 |     assert extra_slots >= 0\n",
            "\n-    assert num_redundant >= 0\n+    assert extra_slots >= 0\n",
        ),
    ),
    "search_ambiguous.diff": Expected(
        AmbiguousSearchError,
        (2, 2, "device = weight.device"),
        ("matches 2 places", "program lines 84, 133"),
    ),
    "edit_outside_evolve_block.diff": Expected(
        ProtectedRegionError,
        (1, 1, "return rebalance_experts(weight, num_replicas, num_groups, num_nodes,"),
        ("program lines 245-246", "outside the EVOLVE-BLOCK"),
    ),
    "edit_touches_marker.diff": Expected(
        ProtectedRegionError,
        (1, 1, "return phy2log, log2phy, logcnt"),
        ("program lines 230-233", "include its marker lines"),
    ),
    "replace_adds_marker.diff": Expected(
        ProtectedRegionError,
        (1, 1, "maxlogcnt = num_replicas - num_logical_experts + 1"),
        ("the REPLACE text adds an EVOLVE-BLOCK marker line ('# EVOLVE-BLOCK-END')",),
    ),
    "renames_entry_point.diff": Expected(
        ProtectedRegionError,
        None,
        ("the patch takes away `rebalance_experts` (line 245, `__all__`), which the code outside the EVOLVE-BLOCK "
         "names", "Keep defining it at the top level of the program under the same name"),
    ),
    "import_under_another_name.diff": Expected(
        ProtectedRegionError, None, ("the patch takes away `torch` (line 237, line 242)",)
    ),
    "indentation_cannot_shift.diff": Expected(
        IndentationShiftError,
        (1, 1, "def replicate_experts("),
        ("matched with 4 fewer leading characters of indentation", "REPLACE line 'def replicate_experts('"),
    ),
    "empty_search.diff": Expected(PatchFormatError, (1, 1, ""), ("block 1 of 1 (patch line 10)", "SEARCH text is empty")),
    "no_blocks.diff": Expected(PatchFormatError, None, ("no SEARCH/REPLACE blocks found",)),
    "no_change.diff": Expected(NoChangeError, None, ("leaves the program exactly as it was",)),
    "does_not_compile.diff": Expected(
        CandidateSyntaxError,
        None,
        ("does not compile", "'(' was never closed at line 82", "num_redundant = (num_phy - num_log"),
    ),
    "unterminated_missing_divider.diff": Expected(
        PatchFormatError,
        (1, None, "num_redundant = num_phy - num_log"),
        ("the block has no '=======' line before '>>>>>>> REPLACE' on patch line 4",),
    ),
    "unterminated_missing_replace_marker.diff": Expected(
        PatchFormatError,
        (1, None, "num_redundant = num_phy - num_log"),
        ("the block is not closed with '>>>>>>> REPLACE' before '<<<<<<< SEARCH' on patch line 6",),
    ),
    "answer_cut_off_mid_block.diff": Expected(
        PatchFormatError,
        (1, None, "for i in range(num_log, num_phy):"),
        ("(patch line 10, ", "the block is unterminated", "ends before its '>>>>>>> REPLACE' line", "cut off"),
    ),
    "orphan_replace_marker.diff": Expected(PatchFormatError, None, ("patch line 4: '>>>>>>> REPLACE' with no block open",)),
    "unclosed_diff_section.diff": Expected(
        PatchFormatError, None, ("the <DIFF> section opened on patch line 9 is never closed with </DIFF>",)
    ),
    "empty_file.diff": Expected(PatchFormatError, None, ("the patch is empty",)),
    "whitespace_only.diff": Expected(PatchFormatError, None, ("the patch is empty",)),
    "binary_nul_bytes.diff": Expected(PatchFormatError, None, ("NUL byte at offset 1", "binary file")),
    "invalid_utf8.diff": Expected(PatchFormatError, None, ("not UTF-8 text (byte 0xe9 at offset 73)", "binary file")),
}


def failure(patch: str | bytes, parent: str = SEED, *, rewrite: bool = False) -> PatchError:
    """The error applying `patch` (bytes are decoded as the command line decodes a file) raises."""
    with pytest.raises(PatchError) as caught:
        apply_patch(parent, decode_patch(patch) if isinstance(patch, bytes) else patch, rewrite=rewrite)
    return caught.value


def corpus_failure(name: str) -> PatchError:
    return failure((CORPUS_DIR / name).read_bytes())


def test_every_corpus_file_has_its_expectation():
    assert sorted(path.name for path in CORPUS_DIR.iterdir()) == sorted(CORPUS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_patch_fails_with_its_own_error_and_message(name):
    expected = CORPUS[name]
    error = corpus_failure(name)
    assert type(error) is expected.error
    assert error.kind == expected.error.kind
    message = str(error)
    for fragment in expected.fragments:
        assert fragment in message
    if expected.block is None:
        assert error.block is None
    else:
        number, total, first_line = expected.block
        assert (error.block.number, error.block.total, error.block.first_line) == expected.block
        of = "" if total is None else f" of {total}"
        assert message.startswith(f"block {number}{of} (patch line ")
        assert f'SEARCH begins "{first_line}"' in message or not first_line


def test_error_kinds_are_distinct_per_class():
    classes = {expected.error for expected in CORPUS.values()}
    assert len({cls.kind for cls in classes}) == len(classes) == 7


def test_failures_leave_nothing_behind(tmp_path, monkeypatch):
    parent_file = tmp_path / "parent.py"
    parent_file.write_bytes(SEED_PROGRAM.read_bytes())
    monkeypatch.chdir(tmp_path)
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    for name in CORPUS:
        failure((CORPUS_DIR / name).read_bytes(), parent_file.read_text(encoding="utf-8"))
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before
    assert parent_file.read_bytes() == SEED_PROGRAM.read_bytes()
    assert os.listdir(tmp_path) == ["parent.py"]


def test_ambiguous_search_reports_every_place_and_applies_nothing():
    error = failure(block("    device = weight.device\n", "    device = weight.device  # here\n"))
    assert isinstance(error, AmbiguousSearchError) and error.lines == (84, 133)


def test_ambiguous_once_whitespace_is_forgiven():
    # no exact match, but two once the indentation may shift: guessing would be wrong half the time
    parent = "# EVOLVE-BLOCK-START\nif a:\n    x = 1\nif b:\n        x = 1\n# EVOLVE-BLOCK-END\n"
    error = failure(block("  x = 1\n", "  x = 2\n"), parent)
    assert isinstance(error, AmbiguousSearchError) and error.lines == (3, 5)
    assert "matches 2 places once whitespace is forgiven (starting on program lines 3, 5)" in str(error)


def test_search_found_nowhere_for_a_typo_in_one_line_shows_the_line_it_meant():
    error = failure(block("    logcnt = torch.ones(n, num_log, dtype=torch.int32, device=device)\n", "    pass\n"))
    assert isinstance(error, SearchNotFoundError)
    assert "The closest region is program lines 88-88" in str(error)
    assert "88 |     logcnt = torch.ones(n, num_log, dtype=torch.int64, device=device)" in str(error)


def test_answer_cut_off_inside_the_search_text():
    error = failure("<<<<<<< SEARCH\n    num_redundant = num_phy - num_log\n    assert num_red")
    assert isinstance(error, PatchFormatError)
    assert str(error).startswith('block 1 (patch line 1, SEARCH begins "num_redundant = num_phy - num_log"): ')
    assert "the block is unterminated: the patch ends before its '=======' line" in str(error)


def test_replace_adding_an_indented_start_marker_is_refused():
    error = failure(block("    assert num_redundant >= 0\n", "    # EVOLVE-BLOCK-START\n    assert num_redundant >= 0\n"))
    assert isinstance(error, ProtectedRegionError) and "('# EVOLVE-BLOCK-START')" in str(error)


def test_malformed_parent_is_blamed_on_the_parent():
    parent = "# EVOLVE-BLOCK-START\nx = 1\n# EVOLVE-BLOCK-START\ny = 2\n# EVOLVE-BLOCK-END\n"
    error = failure(block("x = 1\n", "x = 2\n"), parent)
    assert type(error) is PatchError
    assert str(error) == "the parent program opens a second EVOLVE-BLOCK on line 3 before closing one"


# Full rewrites: only the EVOLVE-BLOCK may change.
SEED_LINES = SEED.splitlines(keepends=True)
END_LINE = SEED_LINES.index("# EVOLVE-BLOCK-END\n")
BLOCK_BODY = "".join(SEED_LINES[1:END_LINE])
AFTER_BLOCK = "".join(SEED_LINES[END_LINE + 1 :])
NEW_BODY = BLOCK_BODY.replace("assert num_redundant >= 0\n", "assert num_redundant >= 0, 'more experts than slots'\n")
REWRITTEN = SEED.replace(BLOCK_BODY, NEW_BODY)


def fenced(program: str) -> str:
    return f"<NAME>\nrewrite\n</NAME>\n<DESCRIPTION>\nThe whole program.\n</DESCRIPTION>\n```python\n{program}```\n"


def test_rewrite_without_markers_replaces_only_the_block():
    assert apply_patch(SEED, fenced(NEW_BODY), rewrite=True) == REWRITTEN
    # an answer without the wrapper and __all__ keeps them: they lie outside the block
    assert apply_patch(SEED, NEW_BODY, rewrite=True).endswith(AFTER_BLOCK)


def test_rewrite_of_the_whole_program_keeps_the_text_outside_the_block():
    # whitespace at line ends and blank lines at the ends of the outside text are forgiven, and the parent's kept
    drifted = "\n" + REWRITTEN.replace("def run_eplb(\n", "def run_eplb(   \n") + "\n\n"
    assert apply_patch(SEED, fenced(drifted), rewrite=True) == REWRITTEN


@pytest.mark.parametrize(
    "program, where, diff_lines",
    [
        (
            REWRITTEN.replace('__all__ = ["rebalance_experts", "run_eplb"]', '__all__ = ["run_eplb"]'),
            "after",
            ('-__all__ = ["rebalance_experts", "run_eplb"]', '+__all__ = ["run_eplb"]'),
        ),
        (
            REWRITTEN.replace("    return rebalance_experts(", "    return dict(rebalance_experts("),
            "after",
            ("-    return rebalance_experts(", "+    return dict(rebalance_experts("),
        ),
        ("import os\n" + REWRITTEN, "before", ("+import os",)),
    ],
    ids=["changes-all", "changes-wrapper", "adds-import-above"],
)
def test_rewrite_changing_text_outside_the_block_is_refused(program, where, diff_lines):
    error = failure(fenced(program), rewrite=True)
    assert isinstance(error, ProtectedRegionError)
    assert f"the rewrite changes the text {where} the EVOLVE-BLOCK" in str(error)
    for line in diff_lines:
        assert f"\n{line}" in str(error)


@pytest.mark.parametrize(
    "program, message",
    [
        (REWRITTEN.replace("# EVOLVE-BLOCK-END\n", ""), "the rewrite's EVOLVE-BLOCK opened on line 1 is never closed"),
        (
            REWRITTEN.replace("# EVOLVE-BLOCK-START\n", ""),
            f"the rewrite closes an EVOLVE-BLOCK on line {END_LINE} that was never opened",
        ),
        (
            REWRITTEN.replace("# EVOLVE-BLOCK-END\n", "# EVOLVE-BLOCK-END\n# EVOLVE-BLOCK-START\n# EVOLVE-BLOCK-END\n"),
            "the rewrite has several EVOLVE-BLOCKs",
        ),
    ],
    ids=["start-only", "end-only", "two-blocks"],
)
def test_rewrite_with_unpaired_markers_is_refused(program, message):
    error = failure(fenced(program), rewrite=True)
    assert isinstance(error, ProtectedRegionError) and message in str(error)


def test_rewrite_that_changes_nothing_is_refused():
    assert isinstance(failure(fenced(SEED), rewrite=True), NoChangeError)
    assert isinstance(failure(fenced(BLOCK_BODY), rewrite=True), NoChangeError)


def test_rewrite_that_does_not_compile_names_the_line():
    error = failure(fenced(NEW_BODY.replace("    device = weight.device\n", "    device = = weight.device\n", 1)), rewrite=True)
    assert isinstance(error, CandidateSyntaxError)
    assert error.lineno == 84 and "at line 84:\n    device = = weight.device" in str(error)


LLM_ANSWERS = Path(__file__).resolve().parents[2] / "shared" / "llm-answers"
PROMPT_SIZED_CHARS = 4096  # what an apply error may take of the next prompt


@pytest.mark.skipif(not LLM_ANSWERS.is_dir(), reason="needs the recorded LLM answers")
def test_real_answers_that_do_not_apply_get_errors_sized_for_a_prompt():
    """Recorded answers written against other versions of the program: each error says so in a few lines instead
    of quoting the whole program as the closest region."""
    not_found = []
    for answer in sorted(LLM_ANSWERS.glob("*.txt")):
        try:
            apply_patch(SEED, decode_patch(answer.read_bytes()))
        except PatchError as error:
            assert len(str(error)) <= PROMPT_SIZED_CHARS, answer.name
            if isinstance(error, SearchNotFoundError):
                not_found.append((answer.name, str(error)))
    assert len(not_found) >= 5
    for name, message in not_found:
        assert "Nothing in the program resembles it closely" in message, name
        assert "Copy the SEARCH text exactly from the current program." in message


def test_a_long_search_text_with_one_line_changed_shows_that_line_and_little_else():
    """Sixty lines copied from the program, one of them changed: the region is found, the listing starts just before
    the changed line, and the error stays within a prompt's share however long the SEARCH text."""
    lines = SEED.splitlines(keepends=True)
    start = next(number for number, line in enumerate(lines) if "EVOLVE-BLOCK-START" in line) + 20
    copied = lines[start:start + 60]
    changed = next(k for k in range(30, 60) if copied[k].strip())
    search = "".join(copied[:changed] + ["    this_line_is_not_in_the_program = 1\n"] + copied[changed + 1:])
    error = failure(f"<<<<<<< SEARCH\n{search}=======\n{search}>>>>>>> REPLACE\n")
    assert isinstance(error, SearchNotFoundError)
    message = str(error)
    assert f"The closest region is program lines {start + 1}-{start + 60}" in message
    assert f"{start + changed + 1} | {copied[changed].rstrip()[:60]}" in message
    assert "-    this_line_is_not_in_the_program = 1" in message
    assert len(message) <= PROMPT_SIZED_CHARS
    assert f"{start + 1} | " not in message  # the region's first lines, far from the change, are left out

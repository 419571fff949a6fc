"""Parsing an LLM's answer into a `Patch`: ShinkaEvolve answers, bare SEARCH/REPLACE blocks, full rewrites."""

from __future__ import annotations

import pytest
from patch_texts import block

from evaluator.patch import Edit, Patch, PatchFormatError, decode_patch, parse_patch


def texts(patch: Patch) -> list[tuple[str, str]]:
    return [(edit.search, edit.replace) for edit in patch.edits]


SHINKA_ANSWER = (
    "Sure! Here is my proposal.\n"
    "<NAME>\nfaster_replication\n</NAME>\n"
    "\n"
    "<DESCRIPTION>\nKeep the scores between steps.\n\nThis avoids a division per step.\n</DESCRIPTION>\n"
    "\n"
    "<DIFF>\n"
    + block("    a = 1\n", "    a = 2\n")
    + "</DIFF>\n"
    "I hope this helps.\n"
)


def test_shinka_answer_keeps_name_and_description_and_ignores_the_text_around():
    patch = parse_patch(SHINKA_ANSWER)
    assert patch.name == "faster_replication"
    assert patch.description == "Keep the scores between steps.\n\nThis avoids a division per step."
    assert patch.format == "edits" and patch.rewrite is None
    assert texts(patch) == [("    a = 1\n", "    a = 2\n")]


def test_block_reference_gives_number_total_patch_line_and_first_search_line():
    [edit] = parse_patch(SHINKA_ANSWER).edits
    assert isinstance(edit, Edit)
    assert (edit.ref.number, edit.ref.total) == (1, 1)
    assert SHINKA_ANSWER.splitlines()[edit.ref.patch_line - 1] == "<<<<<<< SEARCH"
    assert edit.ref.first_line == "a = 1"
    assert str(edit.ref) == f'block 1 of 1 (patch line {edit.ref.patch_line}, SEARCH begins "a = 1")'


def test_several_diff_sections_give_their_blocks_in_order():
    answer = (
        "<NAME>two_sections</NAME>\n<DESCRIPTION>d</DESCRIPTION>\n"
        "<DIFF>\n" + block("a\n", "b\n") + block("\n  c\n", "d\n") + "</DIFF>\n"
        "between the sections\n"
        "<DIFF>\n" + block("e\n", "f\n") + "</DIFF>\n"
    )
    patch = parse_patch(answer)
    assert texts(patch) == [("a\n", "b\n"), ("\n  c\n", "d\n"), ("e\n", "f\n")]
    assert [(e.ref.number, e.ref.total) for e in patch.edits] == [(1, 3), (2, 3), (3, 3)]
    lines = answer.splitlines()
    assert all(lines[e.ref.patch_line - 1] == "<<<<<<< SEARCH" for e in patch.edits)
    # the first non-blank SEARCH line names the block, stripped
    assert [e.ref.first_line for e in patch.edits] == ["a", "c", "e"]


def test_blocks_outside_diff_sections_are_ignored_when_there_are_diff_sections():
    answer = (
        "An example of the format, not an edit:\n"
        + block("example\n", "ignored\n")
        + "<DIFF>\n" + block("real\n", "edit\n") + "</DIFF>\n"
        + block("after\n", "ignored too\n")
    )
    assert texts(parse_patch(answer)) == [("real\n", "edit\n")]


def test_bare_openevolve_blocks_have_no_name_or_description():
    answer = "I will change two lines.\n\n" + block("x = 1\n", "x = 2\n") + "\nand\n\n" + block("y\n", "")
    patch = parse_patch(answer)
    assert patch.name is None and patch.description is None
    assert texts(patch) == [("x = 1\n", "x = 2\n"), ("y\n", "")]


def test_search_and_replace_keep_indentation_blank_lines_and_trailing_spaces():
    search = "    if x:  \n\n        return 1\n"
    replace = "\n    if y:\n        return 2\n\n"
    [edit] = parse_patch(block(search, replace)).edits
    assert (edit.search, edit.replace) == (search, replace)


def test_markers_count_only_on_lines_of_their_own():
    # Marker strings inside prose or code are text; markers with spaces around them on their own line count.
    answer = (
        "Write `<<<<<<< SEARCH` then `=======` then `>>>>>>> REPLACE`, each alone on a line.\n"
        "=======\n"
        "  <<<<<<< SEARCH  \n"
        "banner = '<<<<<<< SEARCH'\n"
        "x = 1  # ======= not a divider\n"
        "\t=======\n"
        "print('>>>>>>> REPLACE')\n"
        " >>>>>>> REPLACE\n"
    )
    [edit] = parse_patch(answer).edits
    assert edit.search == "banner = '<<<<<<< SEARCH'\nx = 1  # ======= not a divider\n"
    assert edit.replace == "print('>>>>>>> REPLACE')\n"
    assert edit.ref.patch_line == 3


def test_marker_strings_inside_lines_alone_are_not_blocks():
    answer = "Use <<<<<<< SEARCH, ======= and >>>>>>> REPLACE.\nx = '<<<<<<< SEARCH' ======= '>>>>>>> REPLACE'\n"
    with pytest.raises(PatchFormatError, match="no SEARCH/REPLACE blocks found"):
        parse_patch(answer)


def test_divider_outside_a_block_is_ordinary_text():
    answer = "Notes\n=======\n" + block("a\n", "b\n")
    assert texts(parse_patch(answer)) == [("a\n", "b\n")]


def test_crlf_patch_parses_like_lf():
    lf = SHINKA_ANSWER.replace("a = 1", "a = 1  ")
    crlf = parse_patch(lf.replace("\n", "\r\n"))
    assert crlf == parse_patch(lf)
    assert all("\r" not in e.search + e.replace for e in crlf.edits)


def test_byte_order_mark_is_dropped():
    assert parse_patch(decode_patch("\ufeff".encode() + SHINKA_ANSWER.encode())) == parse_patch(SHINKA_ANSWER)


def test_decode_patch_reads_utf8():
    text = "<NAME>naïve_π</NAME>\n" + block("a\n", "b\n")
    assert decode_patch(text.encode("utf-8")) == text


PROGRAM = "import torch\n\n\ndef f(x):\n    return x + 1\n"


@pytest.mark.parametrize(
    "answer",
    [
        f"Here is the program:\n```python\n{PROGRAM}```\nDone.",
        f"```py\n{PROGRAM}```",
        f"```\n{PROGRAM}```",
        f"<NAME>\nrewritten\n</NAME>\n<DESCRIPTION>\nAll new.\n</DESCRIPTION>\n<CODE>\n```python\n{PROGRAM}```\n</CODE>",
        f"<NAME>rewritten</NAME>\n<CODE>{PROGRAM}</CODE>",
        PROGRAM.rstrip("\n"),
        PROGRAM.replace("\n", "\r\n"),
    ],
    ids=["fenced", "fenced-py", "fenced-bare", "code-section-fenced", "code-section", "whole-text", "whole-text-crlf"],
)
def test_rewrite_takes_the_program_from_the_answer(answer):
    patch = parse_patch(answer, rewrite=True)
    assert patch.format == "rewrite" and patch.edits == ()
    assert patch.rewrite.strip("\n") == PROGRAM.strip("\n")
    assert patch.rewrite.endswith("\n") and "\r" not in patch.rewrite


def test_rewrite_keeps_name_and_description():
    answer = f"<NAME>\nrewritten\n</NAME>\n<DESCRIPTION>\nAll new.\n</DESCRIPTION>\n```python\n{PROGRAM}```\n"
    patch = parse_patch(answer, rewrite=True)
    assert (patch.name, patch.description, patch.rewrite) == ("rewritten", "All new.", PROGRAM)


def test_rewrite_with_several_fences_is_refused():
    answer = f"```python\n{PROGRAM}```\nand a test:\n```python\nassert f(1) == 2\n```\n"
    with pytest.raises(PatchFormatError, match="the rewrite has 2 fenced code blocks"):
        parse_patch(answer, rewrite=True)


def test_rewrite_of_a_tagged_answer_without_code_is_refused():
    with pytest.raises(PatchFormatError, match="the rewrite has no program"):
        parse_patch("<NAME>x</NAME>\n<DESCRIPTION>I would rewrite it all.</DESCRIPTION>\n", rewrite=True)


def test_rewrite_with_an_empty_program_is_refused():
    with pytest.raises(PatchFormatError, match="the rewrite's program is empty"):
        parse_patch("<CODE>\n```python\n\n```\n</CODE>", rewrite=True)


def test_blocks_are_not_a_rewrite_unless_asked():
    answer = block("a\n", "b\n")
    assert parse_patch(answer).format == "edits"
    assert parse_patch(answer, rewrite=True).rewrite == answer


def test_a_patch_must_be_text():
    with pytest.raises(TypeError, match="not bytes"):
        parse_patch(b"<<<<<<< SEARCH\n")  # type: ignore[arg-type]

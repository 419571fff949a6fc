"""Applying patches: the seed patch, block order, and the whitespace drift that real LLM answers carry."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from patch_texts import SEED, SEED_PATCH, block, shifted

import evaluator
from evaluator.patch import ProtectedRegionError, apply_parsed, apply_patch, parse_patch

BLOCK = re.compile(r"^<<<<<<< SEARCH\n(.*?)^=======\n(.*?)^>>>>>>> REPLACE\n", re.DOTALL | re.MULTILINE)


def replaced_exactly(program: str, patch: str) -> tuple[str, list[int]]:
    """The patch applied by plain string replacement, and the 1-based line each block starts on."""
    starts = []
    for search, replace in BLOCK.findall(patch):
        assert program.count(search) == 1
        starts.append(program[: program.index(search)].count("\n") + 1)
        program = program.replace(search, replace)
    return program, starts


CLEAN, CLEAN_STARTS = replaced_exactly(SEED, SEED_PATCH)


def drift(patch: str, search: Callable[[str], str], replace: Callable[[str], str] = lambda line: line) -> str:
    """`patch` with every SEARCH line passed through `search` and every REPLACE line through `replace`."""
    out, section = [], None
    for line in patch.split("\n"):
        marker = line.strip()
        if marker in ("<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"):
            section = {"<<<<<<< SEARCH": search, "=======": replace}.get(marker)
            out.append(line)
        else:
            out.append(section(line) if section else line)
    return "\n".join(out)


def indent(by: str) -> Callable[[str], str]:
    return lambda line: by + line if line.strip() else line


def test_seed_patch_applies_with_every_block_exact():
    application = apply_parsed(SEED, parse_patch(SEED_PATCH))
    assert application.program == CLEAN != SEED
    assert [b.number for b in application.blocks] == [1, 2, 3]
    assert [b.tolerance for b in application.blocks] == ["exact"] * 3
    assert [b.first_line for b in application.blocks] == CLEAN_STARTS
    searches = [search for search, _ in BLOCK.findall(SEED_PATCH)]
    assert [b.last_line - b.first_line + 1 for b in application.blocks] == [s.count("\n") for s in searches]


def test_top_level_api_is_the_engine():
    assert evaluator.apply_patch(SEED, SEED_PATCH) == CLEAN
    assert evaluator.parse_patch(SEED_PATCH).name == "vectorized_packing_and_replication"
    assert apply_patch(SEED, parse_patch(SEED_PATCH)) == CLEAN


def test_blocks_apply_in_order_each_to_the_previous_result():
    # Block 2's SEARCH exists only once block 1 has run.
    first = block("    assert num_redundant >= 0\n", "    assert num_redundant >= 0, 'too few slots'\n")
    second = block("    assert num_redundant >= 0, 'too few slots'\n", "    assert num_redundant >= 0, 'more experts than slots'\n")
    expected = SEED.replace("assert num_redundant >= 0\n", "assert num_redundant >= 0, 'more experts than slots'\n")
    application = apply_parsed(SEED, parse_patch(first + second))
    assert application.program == expected
    assert application.blocks[0].first_line == application.blocks[1].first_line == 83


def test_later_blocks_match_at_lines_shifted_by_earlier_ones():
    first = block("    n, num_log = weight.shape\n", "    n, num_log = weight.shape\n    assert n > 0\n    assert num_log > 0\n")
    second = block("        logcnt[arangen, redundant_indices] += 1\n", "        logcnt[arangen, redundant_indices] += 1  # one more\n")
    application = apply_parsed(SEED, parse_patch(first + second))
    assert [b.first_line for b in application.blocks] == [81, 94 + 2]
    assert application.program.splitlines()[95] == "        logcnt[arangen, redundant_indices] += 1  # one more"


# A small program with nested indentation, for the tolerant matcher.
PARENT = """\
# EVOLVE-BLOCK-START
def step(values):
    total = 0
    for value in values:
        if value > 0:
            total += value
    return total
# EVOLVE-BLOCK-END
"""
EDITED = PARENT.replace(
    "        if value > 0:\n            total += value\n",
    "        if value > 0:\n            total += 2 * value\n        else:\n            total -= 1\n",
)
SEARCH = "        if value > 0:\n            total += value\n"
REPLACE = "        if value > 0:\n            total += 2 * value\n        else:\n            total -= 1\n"


@pytest.mark.parametrize(
    "search, replace, tolerance",
    [
        (SEARCH, REPLACE, "exact"),
        (SEARCH.replace("\n", "   \n"), REPLACE, "whitespace"),
        (SEARCH.replace("\n", " \t\n", 1), REPLACE, "whitespace"),
        (shifted(SEARCH, -8), shifted(REPLACE, -8), "indentation shifted right by 8"),
        (shifted(SEARCH, -4), shifted(REPLACE, -4), "indentation shifted right by 4"),
        (shifted(SEARCH, 4), shifted(REPLACE, 4), "indentation shifted left by 4"),
        (shifted(SEARCH, 2).replace("\n", "  \n"), shifted(REPLACE, 2), "indentation shifted left by 2"),
        ("\n" + SEARCH + "\n\n", "\n" + REPLACE + "\n\n", "whitespace"),
        ("\n\n" + shifted(SEARCH, -4), "\n\n" + shifted(REPLACE, -4), "indentation shifted right by 4"),
    ],
    ids=[
        "exact",
        "trailing-spaces",
        "trailing-tab",
        "dedented-8",
        "dedented-4",
        "indented-4",
        "indented-2-and-trailing",
        "blank-ends",
        "blank-start-and-dedented",
    ],
)
def test_tolerant_match_forgives_whitespace_and_reindents_the_replace_text(search, replace, tolerance):
    application = apply_parsed(PARENT, parse_patch(block(search, replace)))
    assert application.program == EDITED
    [applied] = application.blocks
    assert (applied.first_line, applied.last_line, applied.tolerance) == (5, 6, tolerance)


def test_trailing_whitespace_in_the_parent_is_forgiven():
    parent = PARENT.replace("total += value\n", "total += value  \n").replace("if value > 0:\n", "if value > 0:\t\n")
    application = apply_parsed(parent, parse_patch(block(SEARCH, REPLACE)))
    assert application.program == EDITED  # the matched lines are replaced, their trailing whitespace with them
    assert application.blocks[0].tolerance == "whitespace"


def test_blank_lines_at_the_ends_of_search_drop_as_many_from_replace():
    # The SEARCH's blank ends are not in the program there; REPLACE's matching blank ends go with them,
    # its own extra blank line stays.
    search = "\n\n    total = 0\n\n"
    replace = "\n    total = 0\n    count = 0\n\n\n"
    program = apply_patch(PARENT, block(search, replace))
    assert program == PARENT.replace("    total = 0\n", "    total = 0\n    count = 0\n\n")


def test_indentation_shift_keeps_the_replace_text_s_relative_structure():
    replace = "if value > 0:\n    total += value\nelif value < 0:\n    total += value * value\n"
    program = apply_patch(PARENT, block(shifted(SEARCH, -8), replace))
    assert program == PARENT.replace(SEARCH, shifted(replace, 8))
    assert "\n        elif value < 0:\n            total += value * value\n" in program


def test_crlf_patch_applies_to_lf_parent():
    assert apply_patch(PARENT, block(SEARCH, REPLACE).replace("\n", "\r\n")) == EDITED


@pytest.mark.parametrize("patch_newline", ["\n", "\r\n"])
def test_crlf_parent_keeps_crlf(patch_newline):
    parent = PARENT.replace("\n", "\r\n")
    program = apply_patch(parent, block(SEARCH, REPLACE).replace("\n", patch_newline))
    assert program == EDITED.replace("\n", "\r\n")
    assert program.count("\n") == program.count("\r\n")


def test_parent_without_final_newline_keeps_it_that_way():
    parent = "x = 1\ny = 2"
    assert apply_patch(parent, block("y = 2\n", "y = 3\n")) == "x = 1\ny = 3"
    assert apply_patch(parent, block("x = 1\n", "x = 0\n")) == "x = 0\ny = 2"


def test_parent_without_markers_is_editable_everywhere():
    parent = "def f():\n    return 1\n\n\n__all__ = ['f']\n"
    assert apply_patch(parent, block("__all__ = ['f']\n", "__all__ = []\n")) == parent.replace("['f']\n", "[]\n")


@pytest.mark.parametrize(
    "replace",
    ["def _rebalance(weight):\n    return weight\n\n\nrebalance_experts = _rebalance\n",
     "try:\n    from fast import rebalance_experts\nexcept ImportError:\n    def rebalance_experts(weight):\n"
     "        return weight\n",
     "from fast import *\n"],
    ids=["assigned", "imported-or-defined", "star-import"],
)
def test_the_fixed_codes_names_may_be_defined_any_way_at_the_top_level(replace):
    parent = ("# EVOLVE-BLOCK-START\ndef rebalance_experts(weight):\n    return weight\n# EVOLVE-BLOCK-END\n\n\n"
              "def run(weight):\n    return rebalance_experts(weight)\n")
    program = apply_patch(parent, block("def rebalance_experts(weight):\n    return weight\n", replace))
    assert replace in program


def test_names_the_fixed_code_never_had_are_not_required():
    parent = "# EVOLVE-BLOCK-START\nx = 1\n# EVOLVE-BLOCK-END\nprint(undefined_anywhere, x)\n"
    with pytest.raises(ProtectedRegionError, match=r"takes away `x` \(line 4\)"):
        apply_patch(parent, block("x = 1\n", "y = 1\n"))
    assert apply_patch(parent, block("x = 1\n", "x = 2\n")).startswith("# EVOLVE-BLOCK-START\nx = 2\n")


def test_exact_match_wins_over_tolerant_matches_elsewhere():
    parent = "# EVOLVE-BLOCK-START\nx = 1\nif True:\n    x = 1\n# EVOLVE-BLOCK-END\n"
    application = apply_parsed(parent, parse_patch(block("    x = 1\n", "    x = 2\n")))
    assert application.program == "# EVOLVE-BLOCK-START\nx = 1\nif True:\n    x = 2\n# EVOLVE-BLOCK-END\n"
    assert application.blocks[0].tolerance == "exact"


def test_empty_replace_deletes_the_lines():
    loop = "    for value in values:\n        if value > 0:\n            total += value\n"
    assert apply_patch(PARENT, block(loop, "")) == PARENT.replace(loop, "")


# The seed patch as LLMs actually send it: each variant must give exactly the clean patch's program.
DRIFTED_SEED_PATCHES = {
    "blocks-indented-4": drift(SEED_PATCH, indent("    "), indent("    ")),
    "blocks-indented-tab": drift(SEED_PATCH, indent("\t"), indent("\t")),
    "search-trailing-spaces": drift(SEED_PATCH, lambda line: line + "  "),
    "search-trailing-tabs": drift(SEED_PATCH, lambda line: line + " \t"),
    "crlf": SEED_PATCH.replace("\n", "\r\n"),
    "diff-fences": SEED_PATCH.replace("<DIFF>\n", "<DIFF>\n```diff\n").replace("</DIFF>", "```\n</DIFF>"),
    "fenced-answer": "Here is my answer:\n\n```\n" + SEED_PATCH + "```\n",
    # three blank lines occur nowhere in the seed, so these blocks can only match tolerantly
    "blank-lines-around-blocks": SEED_PATCH.replace("<<<<<<< SEARCH\n", "<<<<<<< SEARCH\n\n\n\n")
    .replace("=======\n", "\n\n\n=======\n\n\n\n")
    .replace(">>>>>>> REPLACE\n", "\n\n\n>>>>>>> REPLACE\n"),
    "everything-at-once": drift(SEED_PATCH, lambda line: "  " + line + "   " if line.strip() else line, indent("  ")).replace(
        "\n", "\r\n"
    ),
}


@pytest.mark.parametrize("patch", DRIFTED_SEED_PATCHES.values(), ids=DRIFTED_SEED_PATCHES.keys())
def test_seed_patch_with_llm_drift_gives_the_clean_program(patch):
    application = apply_parsed(SEED, parse_patch(patch))
    assert application.program == CLEAN
    assert [b.first_line for b in application.blocks] == CLEAN_STARTS
    assert parse_patch(patch).name == "vectorized_packing_and_replication"


def test_drift_is_reported_per_block():
    application = apply_parsed(SEED, parse_patch(DRIFTED_SEED_PATCHES["blocks-indented-4"]))
    assert [b.tolerance for b in application.blocks] == ["indentation shifted left by 4"] * 3
    application = apply_parsed(SEED, parse_patch(DRIFTED_SEED_PATCHES["search-trailing-spaces"]))
    assert [b.tolerance for b in application.blocks] == ["whitespace"] * 3

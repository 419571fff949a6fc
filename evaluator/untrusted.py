"""Text a candidate wrote, as people and LLMs are shown it: its output, its exceptions and tracebacks, its patch's name.

Such text may hold escape sequences that rewrite a terminal, NUL bytes, bidirectional overrides, or a line made to
look like the evaluator's own (`other.py: ok`). Wherever it is shown as text, its control and invisible characters
are written as escapes, its lines are marked as the program's, and it is capped; JSON output keeps it as it was
(JSON escapes what it must).
"""

from __future__ import annotations

import re

QUOTE = "| "  # leads every line of a candidate's text in text output and feedback
NAME_CHARS = 60  # of a patch's name in a table
TEXT_CHARS = 4000  # of an error or an output's end in a text report: its end, where a traceback ends
# C0 and C1 controls but newline and tab, zero-width and bidirectional marks, separators, a byte-order mark, and the
# lone surrogates that undecodable bytes leave
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def visible(text: str) -> str:
    """`text` with each control or invisible character written as its escape (`\\x1b`, `\\u202e`); newlines and
    tabs are kept."""
    return _INVISIBLE.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def one_line(text: str, limit: int) -> str:
    """`text` as one visible line (newlines and tabs escaped too) of at most `limit` characters."""
    line = visible(text).replace("\n", "\\n").replace("\t", "\\t")
    return line if len(line) <= limit else line[: max(0, limit - 3)] + "..."


def quoted(text: str, limit: int, indent: str = "") -> str:
    """`text` made visible, its end kept within `limit` characters (`tail`), each line led by `indent` and `QUOTE`:
    what follows the bar is the program's, however it is worded."""
    shown = tail(visible(text.rstrip("\n")), limit)
    return "\n".join(f"{indent}{QUOTE}{line}" for line in shown.split("\n"))


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying so when it was cut."""
    marker = "\n... (truncated)"
    return text if len(text) <= limit else text[: max(0, limit - len(marker))] + marker


def tail(text: str, limit: int) -> str:
    """The end of `text` (where a traceback ends) in at most `limit` characters, saying so when cut."""
    marker = "... (earlier output cut)\n"
    return text if len(text) <= limit else marker + text[len(text) - max(0, limit - len(marker)):]

"""What commands show people, through rich: tables on standard output, progress on standard error.

A table is plain text where standard output is not a terminal: no colours, no box, never wrapped. Progress is drawn
only where standard error is a terminal; a pipe or a log gets none of it. Nothing is read as rich markup: every cell
and line is `Text`, and a candidate's text is made visible (`evaluator.untrusted`) before it becomes one.
rich is imported where it is used, so that `--help` does not pay for it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from evaluator.untrusted import visible

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress, TaskID

PLAIN_WIDTH = 1000  # a table written to a file or a pipe keeps each row on one line


def console(stderr: bool = False) -> Console:
    """A console of standard output (or error) that reads no markup, emoji codes or highlights into what it prints."""
    from rich.console import Console

    options = {"stderr": stderr, "markup": False, "emoji": False, "highlight": False}
    shown = Console(**options)
    return shown if shown.is_terminal else Console(**options, width=PLAIN_WIDTH)


def show(*renderables: RenderableType | str) -> None:
    """Print each on lines of its own on standard output; a string as it is, never wrapped (a wrapped line of a
    candidate's text would lose the marks that set it apart, `evaluator.untrusted.quoted`)."""
    shown = console()
    for item in renderables:
        if isinstance(item, str):
            sys.stdout.write(item + "\n")
            continue
        if shown.is_terminal:
            shown.print(item)
            continue
        with shown.capture() as captured:  # a file or a pipe gets no blanks padding a table's last column
            shown.print(item)
        sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[str] = (),
          header: bool = True) -> RenderableType:
    """`rows` under `headers` (shown if `header`), columns in `right` aligned right (numbers); each cell is text as it
    is, made visible."""
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, pad_edge=False, show_edge=False, show_header=header, header_style="bold")
    for name in headers:
        grid.add_column(Text(name), justify="right" if name in right else "left", no_wrap=True)
    for row in rows:
        grid.add_row(*(Text(visible(cell)) for cell in row))
    return grid


def number(value: float | None, form: str) -> str:
    """`value` formatted, or "-" where there is none."""
    return "-" if value is None else form.format(value)


class Activity:
    """What a command is doing, on standard error while it is a terminal: a spinner, the step under way and the time
    it took, and with `total` steps a bar. A context manager; `doing` may be entered from any thread.

    Where standard error is not a terminal nothing is drawn, and each `done` step is one line `[n/total] LINE`."""

    def __init__(self, description: str, total: int | None = None) -> None:
        self._description = visible(description)
        self._total = total
        self._done = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Activity:
        shown = console(stderr=True)
        if not shown.is_terminal or shown.is_dumb_terminal:
            return self
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        columns = [SpinnerColumn(), TextColumn("{task.description}", markup=False)]
        if self._total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        # What the command prints on standard output goes above the spinner where both are this terminal; where
        # standard output is a pipe it stays there.
        self._progress = Progress(*columns, TimeElapsedColumn(), console=shown, transient=True,
                                  redirect_stdout=sys.stdout.isatty())
        self._progress.start()
        self._task = self._progress.add_task(self._description, total=self._total)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextmanager
    def doing(self, what: str) -> Iterator[None]:
        """Show `what` as the step under way while the block runs, then what was shown before."""
        if self._progress is None or self._task is None:
            yield
            return
        before = self._progress.tasks[0].description
        self._progress.update(self._task, description=visible(what))
        try:
            yield
        finally:
            self._progress.update(self._task, description=before)

    def done(self, line: str) -> None:
        """One of the `total` steps is done: `line` says which and how it ended."""
        self._done += 1
        if self._progress is None or self._task is None:
            print(f"[{self._done}/{self._total}] {visible(line)}", file=sys.stderr, flush=True)
            return
        from rich.text import Text

        self._progress.console.print(Text(visible(line)))
        self._progress.advance(self._task)

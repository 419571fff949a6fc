"""The API's evaluator configured from the evaluation commands' options (`--device cuda --timeout 60 ...`), as the
OpenEvolve evaluation file that `python -m evaluator init openevolve` writes does: one list of options gives that
file, the ShinkaEvolve command and the task the LLM reads the same settings."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from evaluator import api
from evaluator.commands import CommandError
from evaluator.commands.cluster import on_cluster
from evaluator.commands.evaluate import evaluation_inputs, evaluation_parser, settings_from

_lock = threading.Lock()
_done: list[tuple[str, ...]] = []  # the options this process configured with, once it has


def configure_from_options(options: Sequence[str]) -> None:
    """Configure `evaluator.api`'s shared evaluator as `options` say; with the options it was configured with
    before, do nothing (OpenEvolve runs its evaluation file for every program: a held-out trace without a key is
    drawn once per process, not once per program). Raises ValueError for options that are not valid."""
    with _lock:
        if _done and _done[0] == tuple(options):
            return
        try:
            args = evaluation_parser().parse_args(list(options))
            problem, trace = evaluation_inputs(args)
            backend = "ray" if on_cluster(args) else "local"
        except (ValueError, CommandError) as error:
            raise ValueError(f"invalid evaluation options {list(options)}: {error}") from None
        api.configure(trace=trace, settings=settings_from(args, problem), device=args.device, backend=backend,
                      address=args.address)
        _done[:] = [tuple(options)]

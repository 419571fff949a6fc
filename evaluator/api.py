"""The Python API for optimisation loops: evaluate a program, or an LLM's patch, and get a typed `Result`.

    from evaluator.api import evaluate_patch, evaluate_program

    result = evaluate_program("candidate.py")          # a file, or the program's source text
    result = evaluate_patch(llm_answer)                 # SEARCH/REPLACE blocks against the seed
    if result.ok:
        print(result.combined_score)

Every call is safe from several threads at once, and the `*_async` forms are safe from one asyncio loop: they
share one `Evaluator`, which keeps spare workers warm, validates and scores in parallel and never times two
candidates on one device at once. A candidate's failure is a `Result` with score 0, never an exception;
exceptions mean the caller's own mistake (a missing file, a wrong argument).

Unless `configure` names a trace, candidates are scored on a held-out one, which no candidate can regenerate (the
default trace is public: a program can look its next window up): the key's in `$EPLB_EVALUATOR_HOLDOUT_KEY`, the
same in every process of a loop, else one drawn for this process.

`configure(backend="ray", address=...)` evaluates on the nodes of a Ray cluster instead of this machine's devices
(docs/cluster.md); the held-out trace is made here and sent to the cluster as data.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluator.eplb.holdout import holdout_trace
from evaluator.eplb.trace import Trace
from evaluator.evaluation import Evaluator, Result, Settings
from evaluator.evaluation.backend import BACKENDS, CandidateEvaluator
from evaluator.parent import resolve_parent
from evaluator.patch import PatchError, apply_parsed, parse_patch
from evaluator.paths import DEFAULT_STORE
from evaluator.store import CandidateStore
from evaluator.status import Status

ProgramLike = str | os.PathLike[str]


@dataclass(frozen=True)
class _Configuration:
    trace: Trace | None = None  # None: a held-out trace of the settings' problem
    settings: Settings | None = None
    device: str = "auto"
    spares: int = 2
    backend: str = "local"
    address: str | None = None  # the Ray cluster's, for the ray backend

    def matches(self, other: _Configuration) -> bool:
        """Equal values; traces are compared by content, as a loop re-importing its module builds a new one."""
        same_trace = self.trace is other.trace or (
            self.trace is not None and other.trace is not None and self.trace.source == other.trace.source
            and self.trace.steps_per_window == other.trace.steps_per_window
            and np.array_equal(self.trace.windows, other.trace.windows)
        )
        options = (self.settings, self.device, self.spares, self.backend, self.address)
        return same_trace and options == (other.settings, other.device, other.spares, other.backend, other.address)


_configuration = _Configuration()
_shared: CandidateEvaluator | None = None
_shared_lock = threading.Lock()


def configure(*, trace: Trace | None = None, settings: Settings | None = None, device: str = "auto",
              spares: int = 2, backend: str = "local", address: str | None = None) -> None:
    """Set what the shared evaluator measures on: the trace (default: a held-out one, see the module's note; the
    public one is `default_trace()`), the settings (problem shape, limits), the device ("auto", "cuda" or "cpu"),
    how many spare workers it keeps warm per lane and where: `backend` "local" (this machine's devices)
    or "ray" (a Ray cluster's nodes; `address` its head node's HOST:PORT, default `$RAY_ADDRESS`, else "auto"). With
    "ray", the shared evaluator's first use raises `ClusterUnreachable` (a ConnectionError) when no cluster answers.

    Calling it again with the same values changes nothing, so a loop may call it from a module it re-imports;
    other values close the shared evaluator (evaluations still running on it end with `infra_error`), and the
    next evaluation starts a new one.
    """
    global _configuration, _shared
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    wanted = _Configuration(trace, settings, device, spares, backend, address)
    with _shared_lock:
        if wanted.matches(_configuration):
            return
        _configuration = wanted
        if _shared is not None:
            _shared.close()
            _shared = None


def shared_evaluator() -> CandidateEvaluator:
    """The evaluator the API uses unless given one, as `configure` set it (by default: a held-out trace, the
    default settings, the best device there is, this machine); the seed's references are cached on disk. Created on
    first use, closed at exit. Raises `ValueError` for a held-out key that is too short."""
    global _shared
    with _shared_lock:
        if _shared is None:
            config = _configuration
            settings = config.settings or Settings()
            trace = config.trace or holdout_trace(settings.problem)
            if config.backend == "ray":
                from evaluator.cluster import RayEvaluator  # imports ray: only for this backend

                _shared = RayEvaluator(trace, settings, address=config.address, device=config.device,
                                       spares=config.spares)
            else:
                _shared = Evaluator(trace, settings, device=config.device, spares=config.spares)
        return _shared


@atexit.register
def _close_shared() -> None:
    if _shared is not None:
        _shared.close()


def _forget_shared_after_fork() -> None:
    """A forked child (a loop's process pool) does not own its parent's evaluator, whose threads did not come
    along: it starts its own on first use, and leaves the parent's workers alone."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_shared_after_fork)


def evaluate_program(program: ProgramLike, *, evaluator: CandidateEvaluator | None = None) -> Result:
    """Evaluate a candidate program: a path (a `Path`, or a `str` without newlines) or its source text.

    Raises `FileNotFoundError` for a path that names no file; every failure of the program itself is a
    `Result` whose `status` names it.
    """
    evaluator = evaluator or shared_evaluator()
    with _program_file(program) as path:
        return evaluator.evaluate(path)


def check_program(program: ProgramLike, *, evaluator: CandidateEvaluator | None = None) -> Result:
    """A cheap first stage: the program imports and returns a valid plan for one window. Nothing is timed or
    scored (every score stays 0); `status` and `error` say whether the full evaluation is worth running."""
    evaluator = evaluator or shared_evaluator()
    with _program_file(program) as path:
        return evaluator.check(path)


def evaluate_patch(patch_text: str, parent: ProgramLike | None = None, *, rewrite: bool = False,
                   store: ProgramLike | None = None, evaluator: CandidateEvaluator | None = None) -> Result:
    """Apply an LLM's answer to `parent` and evaluate the program it makes.

    `parent` is the seed (None), a program file, or the id of a candidate in `store` (a candidate folder, by
    default `candidates/`). `rewrite` takes the answer as a whole new program instead of SEARCH/REPLACE
    blocks. A patch that does not apply is a Result with status `apply_error` and a message written to be
    pasted into the next prompt. Nothing is stored: a loop keeps its own database (the `apply` command stores).
    Raises `ParentError` (a `ValueError`) for a parent that names nothing, or whose EVOLVE-BLOCK is broken.
    """
    candidates = CandidateStore(Path(store if store is not None else DEFAULT_STORE))
    source = resolve_parent(None if parent is None else os.fspath(parent), candidates).source
    try:
        program = apply_parsed(source, parse_patch(patch_text, rewrite=rewrite)).program
    except PatchError as error:
        return Result(Status.APPLY_ERROR, f"the patch does not apply: {error}")
    return evaluate_program(program, evaluator=evaluator)


async def evaluate_program_async(program: ProgramLike, *, evaluator: CandidateEvaluator | None = None) -> Result:
    """`evaluate_program` in a worker thread: awaiting it leaves the event loop free."""
    return await asyncio.to_thread(evaluate_program, program, evaluator=evaluator)


async def evaluate_patch_async(patch_text: str, parent: ProgramLike | None = None, *, rewrite: bool = False,
                               store: ProgramLike | None = None, evaluator: CandidateEvaluator | None = None) -> Result:
    """`evaluate_patch` in a worker thread: awaiting it leaves the event loop free."""
    return await asyncio.to_thread(evaluate_patch, patch_text, parent, rewrite=rewrite, store=store,
                                   evaluator=evaluator)


@contextmanager
def _program_file(program: ProgramLike) -> Iterator[Path]:
    """The program as a file: the path given, or its source text written to a private temporary file."""
    if isinstance(program, str) and "\n" in program:
        with tempfile.TemporaryDirectory(prefix="eplb-program-") as folder:
            path = Path(folder) / "program.py"
            path.write_text(program, encoding="utf-8")
            yield path
        return
    path = Path(program)
    if not path.is_file():
        raise FileNotFoundError(f"no program file at {path}; pass a path to a file, or the program's source text")
    yield path

"""A ready-to-run set-up of a loop framework (OpenEvolve, ShinkaEvolve) in a folder of its own, rendered from jinja2
templates (package data) with the evaluator's settings: the task the LLM reads, time limits that agree with the
evaluator's, the framework's outputs inside the folder, and a held-out trace whose key each run makes for itself."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from evaluator.evaluation import Settings
from evaluator.paths import SEED_PROGRAM
from evaluator.prompt.render import render_task

TEMPLATES = Path(__file__).resolve().parent / "templates"
NAMES = {"openevolve": "OpenEvolve", "shinka": "ShinkaEvolve"}  # the frameworks
SEED_FILES = {"openevolve": "initial_program.py", "shinka": "initial.py"}  # the seed program, as each names it
# the files rendered, each from TEMPLATES/FRAMEWORK/NAME.j2
RENDERED = {"openevolve": ("evaluate.py", "config.yaml", "run.sh"), "shinka": ("evaluate.py", "shinka.yaml", "run.sh")}
OUTPUTS = {"openevolve": "output/", "shinka": "results/"}  # where the framework writes, ignored by git
DEFAULT_API_BASE = "https://api.openai.com/v1"
REFERENCE_S = 60  # the evaluator's start and the seed's reference, which the first evaluation on a device measures
PROPOSAL_S = 300  # an LLM's answer, which ShinkaEvolve counts in a job's time
CODE_LENGTH_FACTOR = 4  # a child may grow to this many times the seed program's length
STAGE2_MARGIN_S = 30  # between the evaluator's stage-2 deadline and OpenEvolve's own timeout
MAX_META_INTERVAL = 10  # ShinkaEvolve's reviews: every tenth of the run, at most every ten generations


@dataclass(frozen=True)
class LoopSetup:
    """What a set-up is made of."""

    framework: str  # "openevolve" or "shinka"
    options: tuple[str, ...]  # the evaluation options its evaluator gets, as a command line
    settings: Settings  # what those options give: the task is rendered from them
    held_out: bool  # candidates score on a held-out trace (the run makes its key)
    model: str
    api_base: str | None  # an OpenAI-compatible server; None: the framework's own default for the model
    iterations: int
    parallel: int  # evaluations at once


def setup_files(setup: LoopSetup) -> dict[str, str]:
    """The set-up's files: name -> text."""
    seed = SEED_PROGRAM.read_text(encoding="utf-8")
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES / setup.framework)),
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    timeout_s = round(setup.settings.timeout_s)
    stage2_deadline_s = setup.parallel * (timeout_s + REFERENCE_S)
    context = {
        "options": list(setup.options), "held_out": setup.held_out, "iterations": setup.iterations,
        "parallel": setup.parallel, "python": shlex.quote(sys.executable), "timeout_s": timeout_s,
        "system_message": render_task(setup.settings, setup.framework).rstrip("\n"),
        "seed_chars": len(seed), "max_code_length": CODE_LENGTH_FACTOR * len(seed),
        "model": _model(setup), "api_base": setup.api_base or DEFAULT_API_BASE,
        "stage2_deadline_s": stage2_deadline_s, "evaluator_timeout_s": stage2_deadline_s + STAGE2_MARGIN_S,
        "reference_s": REFERENCE_S, "proposal_s": PROPOSAL_S,
        "job_time": _clock(PROPOSAL_S + REFERENCE_S + timeout_s),
        "meta_interval": max(1, min(MAX_META_INTERVAL, setup.iterations // 10)),
    }
    return {SEED_FILES[setup.framework]: seed,
            **{name: environment.get_template(f"{name}.j2").render(context) for name in RENDERED[setup.framework]},
            ".gitignore": OUTPUTS[setup.framework] + "\n"}


def write_setup(folder: Path, files: dict[str, str]) -> None:
    """Write `files` into `folder`, which must not exist or be empty: all of them or, on an error, none."""
    folder = folder.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.init-", dir=folder.parent))
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / "run.sh").chmod(0o755)
        if folder.exists():
            folder.rmdir()  # empty: checked by the caller; OSError if a file appeared meanwhile
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _model(setup: LoopSetup) -> str:
    """The model as the framework names it: ShinkaEvolve reaches an OpenAI-compatible server as local/MODEL@URL."""
    if setup.framework == "shinka" and setup.api_base:
        return f"local/{setup.model}@{setup.api_base}"
    return setup.model


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

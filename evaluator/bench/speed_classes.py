"""Valid programs of four speeds (about 0.5, 5, 13 and 60 ms per call on an H100), for measuring timing noise at
each: the seed patch's program, a faster one of our own, and the seed patch's made faster or slower by the parts in
`programs/`. Each is a whole program a worker can run, as a candidate's is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evaluator.evaluation.seed_plans import seed_patch_program

PROGRAMS = Path(__file__).with_name("programs")


def _part(name: str) -> str:
    return (PROGRAMS / f"{name}.py").read_text(encoding="utf-8")


def _in_chunks(program: str, layers_per_chunk: int) -> str:
    return f"{program}\n\nLAYERS_PER_CHUNK = {layers_per_chunk}\n{_part('layer_chunks')}"


@dataclass(frozen=True)
class SpeedClass:
    name: str
    about_ms: float  # per call on an H100
    source: Callable[[], str]

    def write(self, path: Path) -> Path:
        path.write_text(self.source(), encoding="utf-8")
        return path


SPEED_CLASSES = (
    SpeedClass("topk-snake", 0.5, lambda: _part("topk_snake")),
    SpeedClass("snake-packing-3-chunks", 5.0,
               lambda: _in_chunks(f"{seed_patch_program()}\n\n{_part('snake_packing')}", 20)),
    SpeedClass("seed-patch", 13.0, seed_patch_program),
    SpeedClass("seed-patch-4-chunks", 60.0, lambda: _in_chunks(seed_patch_program(), 15)),
)

"""The resource limits every candidate runs under."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    """Hard limits on one worker process and everything it starts.

    Timeouts are wall-clock and enforced by the evaluator, never by the worker.
    `timeout_s` and `import_timeout_s` are defaults; `Worker.call` and `Worker.load`
    take an override per call.
    """

    timeout_s: float = 60.0  # one call of the entry point, round trip included
    import_timeout_s: float = 30.0  # importing the candidate program
    start_timeout_s: float = 180.0  # a fresh worker importing torch and initialising its device
    memory_mb: int = 4096  # host memory of the whole process tree
    # GPU memory the tree holds beyond what the worker held when it became ready (its CUDA context, the warm-up's
    # cache), as the driver counts it
    gpu_memory_mb: int = 4096
    output_bytes: int = 128 * 1024  # kept of each of stdout and stderr: half its head, half its tail
    max_processes: int = 64  # processes alive at once in the tree, the worker included
    # the shared memory one call's input and outputs cross in: on a GPU all of it is pinned host memory, on the CPU
    # only what is written is used
    exchange_bytes: int = 64 * 1024 * 1024
    # writes only in the worker's own folder, no capability, no TCP, no signal or tracing outside its tree (see
    # confinement.py); off only to test what holds without it, as on a kernel without Landlock
    confined: bool = True

    def __post_init__(self) -> None:
        problems = [f"{field.name} must be positive, got {getattr(self, field.name)!r}"
                    for field in fields(self) if field.type != "bool" and not getattr(self, field.name) > 0]
        if problems:
            raise ValueError("invalid sandbox limits: " + "; ".join(problems))

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 1024 * 1024

    @property
    def gpu_memory_bytes(self) -> int:
        return self.gpu_memory_mb * 1024 * 1024

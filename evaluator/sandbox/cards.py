"""The name a worker gives its card when it runs on the CPU: the processor's model."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The processor's model name as /proc/cpuinfo gives it, else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

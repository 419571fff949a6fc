"""Set up `.venv` for the evaluator: `python3 install.py [--test] [--venv DIR] [--dry-run]`.

Creates the virtual environment if it is missing and installs the project into it (editable; with `--test`, with the
test extras). torch comes in a range in pyproject.toml so that a machine with a GPU keeps the CUDA build it has; on
Linux with no NVIDIA GPU and no torch in `.venv` yet, pip would take the default build there, several GB of CUDA
libraries, so torch's CPU build is installed first, from PyTorch's CPU index. Everything else is as pip would do it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def has_nvidia_gpu() -> bool:
    """Whether this machine has an NVIDIA driver: its kernel module, or `nvidia-smi` answering."""
    if NVIDIA_DRIVER.exists():
        return True
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def has_torch(python: Path) -> bool:
    return python.exists() and subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0


def steps(venv: Path, test: bool) -> list[tuple[str, list[str]]]:
    """What to run, each with why: the commands that make the virtual environment `venv` and install into it."""
    python = venv_python(venv)
    planned = []
    if not python.exists():
        planned.append(("create the virtual environment", [sys.executable, "-m", "venv", str(venv)]))
    if sys.platform.startswith("linux") and not has_nvidia_gpu() and not has_torch(python):
        planned.append(("no NVIDIA GPU: torch's CPU build, not the multi-GB CUDA build pip would pick",
                        [str(python), "-m", "pip", "install", "torch", "--index-url", CPU_INDEX]))
    target = ".[test]" if test else "."
    planned.append((f"the evaluator{' with the test extras' if test else ''}",
                    [str(python), "-m", "pip", "install", "-e", target]))
    return planned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", action="store_true", help="install the test extras too")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv", help="the virtual environment (default: .venv)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run none")
    args = parser.parse_args(argv)
    for why, command in steps(args.venv.resolve(), args.test):
        print(f"install.py: {why}: {' '.join(command)}", file=sys.stderr, flush=True)
        if not args.dry_run and subprocess.run(command, cwd=ROOT).returncode != 0:
            print(f"install.py: failed: {' '.join(command)}", file=sys.stderr)
            if CPU_INDEX in command:
                print(f"install.py: install a build of torch into {args.venv} another way (a mirror of PyPI, say), "
                      "then run install.py again: it keeps the torch it finds", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

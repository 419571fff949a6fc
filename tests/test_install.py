"""install.py: the CPU build of torch on a machine without a GPU, the default (CUDA) path untouched elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def planned(tmp_path: Path, *options: str, nvidia_smi_exit: int | None = None) -> list[str]:
    """The commands `install.py --dry-run` prints for a new virtual environment, with a fake `nvidia-smi` on PATH
    that exits with `nvidia_smi_exit` (none if None)."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir(exist_ok=True)
    if nvidia_smi_exit is not None:
        smi = bin_folder / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\nexit {nvidia_smi_exit}\n")
        smi.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, str(ROOT / "install.py"), "--dry-run", "--venv", str(tmp_path / "venv"),
                           *options], capture_output=True, text=True, env=environment, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "venv").exists()  # a dry run makes nothing
    return done.stderr.splitlines()


def test_a_machine_with_an_nvidia_gpu_installs_as_pip_would(tmp_path):
    lines = planned(tmp_path, nvidia_smi_exit=0)
    assert len(lines) == 2
    assert lines[0].endswith(f"-m venv {tmp_path / 'venv'}")
    assert lines[1].endswith("-m pip install -e .")
    assert not any(CPU_INDEX in line for line in lines)


@pytest.mark.skipif(not sys.platform.startswith("linux") or Path("/proc/driver/nvidia/version").exists(),
                    reason="needs Linux without an NVIDIA driver")
@pytest.mark.parametrize("nvidia_smi_exit", [None, 9])  # none on PATH, or one that finds no GPU
def test_linux_without_a_gpu_takes_torchs_cpu_build_first(tmp_path, nvidia_smi_exit):
    lines = planned(tmp_path, "--test", nvidia_smi_exit=nvidia_smi_exit)
    assert len(lines) == 3
    assert "no NVIDIA GPU" in lines[1] and lines[1].endswith(f"-m pip install torch --index-url {CPU_INDEX}")
    assert lines[2].endswith("-m pip install -e .[test]")


def test_torch_already_in_the_environment_is_kept(tmp_path):
    """A CUDA build a user brought, or the CPU build installed before, is never replaced."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site_packages = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                                    "'purelib'))"], capture_output=True, text=True, check=True).stdout.strip()
    (Path(site_packages) / "torch").mkdir()
    (Path(site_packages) / "torch" / "__init__.py").write_text("")  # importable: what install.py asks
    done = subprocess.run([sys.executable, str(ROOT / "install.py"), "--dry-run", "--venv", str(venv)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = [line.split(": ")[-1] for line in done.stderr.splitlines()]
    assert commands == [f"{venv / 'bin' / 'python'} -m pip install -e ."]

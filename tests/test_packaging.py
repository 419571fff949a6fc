"""A wheel of the package, installed where no repository is around it, finds everything it ships: the seed program
and the seed patch, the templates of the prompt, of the report and of the loops' set-ups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from evaluator.paths import PROJECT_ROOT


def test_a_wheel_install_finds_the_seed_the_patch_and_the_templates(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "--wheel-dir", str(tmp_path / "dist"), str(PROJECT_ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(site)}

    def evaluator(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "evaluator", *arguments], cwd=work, env=environment,
                              capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import evaluator; print(evaluator.__file__)"], cwd=work,
                           env=environment, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(site))  # the installed package, not the repository's
    applied = evaluator("apply", str(site / "evaluator" / "seed" / "vectorized_packing_and_replication.diff"),
                        "--no-evaluate", "--json")
    assert applied.returncode == 0, applied.stderr
    candidate = json.loads(applied.stdout)["candidate"]["id"]
    lineage = evaluator("lineage", candidate)  # reads the seed, its parent, wherever it is installed
    assert lineage.returncode == 0 and "seeds/eplb.py" in lineage.stdout, lineage.stderr
    report = evaluator("report")  # its templates
    assert report.returncode == 0 and (work / "report" / "index.html").is_file(), report.stderr
    task = evaluator("prompt", "--task")
    assert task.returncode == 0 and "rebalance_experts" in task.stdout, task.stderr
    set_up = evaluator("init", "shinka", "eplb-shinka", "--default-trace")
    assert set_up.returncode == 0, set_up.stderr
    assert (work / "eplb-shinka" / "initial.py").read_text() == (PROJECT_ROOT / "seeds" / "eplb.py").read_text()

"""The software a measurement depends on: torch, its CUDA, Python, and which evaluator (its version and a
digest of its own files).

Results and seed timings are reused only where they were measured by the same software. The evaluator's
version alone does not say that: an edited checkout or an upgrade between releases keeps it, yet may time or
score differently. The digest changes with any file of the package.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path


from evaluator import __version__

PACKAGE_ROOT = Path(__file__).resolve().parent
_DIGEST_LENGTH = 16


@functools.lru_cache(maxsize=4)
def package_digest(root: Path = PACKAGE_ROOT) -> str:
    """A sha256 prefix over the package's files under `root` (code and data; not bytecode caches, nor hidden
    files such as an editor's): their names and contents. Read once per root and process."""
    files = sorted(path for path in root.rglob("*") if path.is_file() and path.suffix != ".pyc" and not any(
        part == "__pycache__" or part.startswith(".") for part in path.relative_to(root).parts))
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix().encode()
        content = path.read_bytes()
        # Each part preceded by its length, so that no two different packages feed the same bytes.
        digest.update(len(name).to_bytes(8, "big") + name + len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()[:_DIGEST_LENGTH]


def software() -> dict[str, str | None]:
    """What a result's `software` records and the seed's timing is kept by: the versions that change timings
    or scores. Workers run this same interpreter, so the evaluator's process reads them for its workers."""
    import torch  # here, not at the top: the commands' --help, which imports this module, does not need it

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "evaluator": __version__, "evaluator_digest": package_digest()}

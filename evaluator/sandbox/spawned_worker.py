"""A spawned worker's entry: `python .../evaluator/sandbox/spawned_worker.py ARGUMENTS`.

It confines itself before Python imports anything more, then runs the worker (`server.main`). Importing the package
would import numpy first, whose BLAS library starts threads as it loads, and a confinement binds only the thread
that applies it and those started after. Run as a file, this module finds `confinement` (which imports nothing of
the package) first on the path, alone.
"""

import os
import sys

import confinement


def _run() -> int:
    confined = None if "--unconfined" in sys.argv else confinement.confine(os.getcwd())
    sys.path[0] = os.getcwd()  # as `python -m` sets it: nothing of this folder is importable by its bare name
    from evaluator.sandbox import server

    return server.main(sys.argv[1:], confined)


if __name__ == "__main__":
    sys.exit(_run())

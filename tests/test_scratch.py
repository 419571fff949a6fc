"""Temporary folders: each process's under a root it holds a lock in; roots whose process died go with the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from evaluator import scratch
from evaluator.scratch import OWNER_FILE, ROOT_PREFIX, UNREADY_GRACE_S, UNREADY_PREFIX

MAKES_A_FOLDER = """
import sys, time
from evaluator.scratch import scratch_folder
folder = scratch_folder("worker-")
(folder / "plan.txt").write_text("left behind")
print(folder, flush=True)
if sys.argv[1] == "wait":
    time.sleep(60)
"""


def start(temporary: Path, then: str) -> tuple[subprocess.Popen, Path]:
    """A process of its own with `temporary` as its temporary folder, and the folder it made there."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(MAKES_A_FOLDER), then], stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "TMPDIR": str(temporary)})
    return process, Path(process.stdout.readline().strip())


def roots(temporary: Path) -> set[Path]:
    return set(temporary.glob(f"{ROOT_PREFIX}*"))


@pytest.fixture
def temporary(tmp_path):
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def test_a_process_that_exits_leaves_nothing(temporary):
    process, folder = start(temporary, "exit")
    assert process.wait(30) == 0
    assert folder.parent.parent == temporary and not folder.exists()
    assert roots(temporary) == set()


def test_a_killed_processes_folders_go_with_the_next_process_and_a_live_ones_stay(temporary):
    killed, left = start(temporary, "wait")
    living, kept = start(temporary, "wait")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        assert left.exists()  # nothing ran in the killed process
        following, _ = start(temporary, "exit")
        assert following.wait(30) == 0
        assert not left.parent.exists()
        assert (kept / "plan.txt").read_text() == "left behind"
        assert roots(temporary) == {kept.parent}
    finally:
        living.kill()
        living.wait(30)


def test_an_unready_root_goes_only_once_it_is_old_and_a_root_without_its_owner_file_at_once(temporary, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    being_made = temporary / f"{UNREADY_PREFIX}1-new"
    died_making = temporary / f"{UNREADY_PREFIX}2-old"
    without_owner = temporary / f"{ROOT_PREFIX}3-bare"
    for root in (being_made, died_making, without_owner):
        (root / "worker-x").mkdir(parents=True)
    past = time.time() - UNREADY_GRACE_S - 1
    os.utime(died_making, (past, past))
    assert sorted(scratch.remove_abandoned_roots()) == [without_owner, died_making]
    assert being_made.exists()


LOCKS_SLOWLY = """
import fcntl, time
from evaluator.scratch import scratch_folder
locking = fcntl.flock

def slowly(fd, operation):
    print("locking", flush=True)
    time.sleep(2)
    return locking(fd, operation)

fcntl.flock = slowly
print(scratch_folder("worker-"), flush=True)
"""


def test_a_root_being_made_survives_a_sweep_before_its_lock_is_held(temporary, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    making = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOCKS_SLOWLY)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temporary)})
    try:
        assert making.stdout.readline().strip() == "locking"
        assert scratch.remove_abandoned_roots() == []  # its owner file exists, not yet locked
        folder = Path(making.stdout.readline().strip())
        assert making.wait(30) == 0, making.stderr.read()
        assert folder.name.startswith("worker-") and folder.parent.name.startswith(ROOT_PREFIX)
    finally:
        making.kill()
        making.wait(30)


def test_an_owner_file_that_is_a_link_keeps_the_root(temporary, monkeypatch):
    """A root whose owner file cannot be opened and locked is not known to be abandoned."""
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    root = temporary / f"{ROOT_PREFIX}3-odd"
    root.mkdir()
    (root / OWNER_FILE).symlink_to("/dev/null")
    assert scratch.remove_abandoned_roots() == []
    assert root.exists()


def test_an_owner_file_that_is_a_named_pipe_does_not_hang_the_sweep(temporary, monkeypatch):
    """Where a candidate can write to the temporary folder, it can plant a root whose owner file is a pipe that
    no one writes to: opening it to read must not wait for a writer."""
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    root = temporary / f"{ROOT_PREFIX}4-pipe"
    root.mkdir()
    os.mkfifo(root / OWNER_FILE)
    sweep = threading.Thread(target=scratch.remove_abandoned_roots, daemon=True)
    sweep.start()
    sweep.join(10)
    assert not sweep.is_alive()


FORKS = """
import os, sys, time
from evaluator.scratch import scratch_folder
parent = scratch_folder("evaluator-")
child = os.fork()
if child == 0:  # a loop's pool worker, forked: a root of its own, left behind as it is killed
    print(scratch_folder("worker-"), flush=True)
    os._exit(0)
os.waitpid(child, 0)
print(parent, flush=True)
time.sleep(60)
"""


def test_a_forked_child_makes_its_own_root_and_its_exit_leaves_the_parents_locked(temporary):
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(FORKS)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(temporary)})
    try:
        childs, parents = Path(parent.stdout.readline().strip()), Path(parent.stdout.readline().strip())
        assert childs.parent != parents.parent
        following, _ = start(temporary, "exit")
        assert following.wait(30) == 0
        assert not childs.parent.exists() and parents.exists()
    finally:
        parent.kill()
        parent.wait(30)

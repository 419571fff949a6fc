"""Removing a folder whatever a candidate's processes left in it."""

from __future__ import annotations

import os
from pathlib import Path

from evaluator.files import remove_tree


def a_folder_outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    (outside / "kept.txt").write_text("not the candidate's")
    return outside


def test_a_tree_deeper_than_the_recursion_limit_with_closed_folders_and_links_out_is_removed(tmp_path):
    outside = a_folder_outside(tmp_path)
    top = tmp_path / "worker"
    folder = top
    for _ in range(3000):  # deeper than Python's recursion limit, and than a path may be long
        folder.mkdir()
        os.chdir(folder)
        folder = Path("d")
    os.chdir(tmp_path)
    (top / "link-out").symlink_to(outside)
    (top / "closed" / "inner").mkdir(parents=True)
    (top / "closed" / "inner" / "plan.bin").write_bytes(b"\0" * 64)
    os.chmod(top / "closed" / "inner", 0)
    os.chmod(top / "closed", 0o500)
    assert remove_tree(top) is True
    assert not os.path.lexists(top)
    assert (outside / "kept.txt").read_text() == "not the candidate's"
    assert outside.stat().st_mode & 0o777 == 0o755


def test_a_link_or_a_file_in_the_folders_place_is_removed_and_what_it_names_is_not(tmp_path):
    outside = a_folder_outside(tmp_path)
    link = tmp_path / "worker"
    link.symlink_to(outside)
    assert remove_tree(link) is True
    assert not os.path.lexists(link) and (outside / "kept.txt").exists()
    assert outside.stat().st_mode & 0o777 == 0o755
    file = tmp_path / "worker-file"
    file.write_text("x")
    assert remove_tree(file) is True and not file.exists()


def test_a_missing_folder_is_gone_already(tmp_path):
    assert remove_tree(tmp_path / "never-made") is True

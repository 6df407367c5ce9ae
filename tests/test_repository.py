"""A clone works anywhere: no tracked symlink leaving the repository, nothing ignored, no machine path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import REPO


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def problems(repo: Path) -> list[str]:
    """What a fresh clone of ``repo`` on another machine would trip over."""
    found = []
    for line in git(repo, "ls-files", "-s", "-z").split("\0"):
        if not line:
            continue
        mode, _, _, path = line.split(maxsplit=3)
        if mode == "120000":  # a symlink: its target must stay inside the repository
            target = os.readlink(repo / path)
            resolved = (repo / path).parent.joinpath(target).resolve()
            if os.path.isabs(target) or not resolved.is_relative_to(repo.resolve()):
                found.append(f"{path} is a symlink leaving the repository ({target})")
    found += [
        f"{path} is tracked but ignored"
        for path in git(repo, "ls-files", "-ci", "--exclude-standard").split("\n")
        if path
    ]
    # Paths of this machine: the checkout's own and those of its neighbours (../shared, other checkouts).
    here = repo.resolve()
    machine = [str(here)] + [str(entry) for entry in here.parent.iterdir() if str(here.parent) != here.anchor]
    patterns = [arg for path in machine for arg in ("-e", path + os.sep)]
    grep = subprocess.run(
        ["git", "grep", "-lIF", *patterns], cwd=repo, check=False, capture_output=True, text=True
    )
    assert grep.returncode in (0, 1), grep.stderr  # 1: nothing found
    listed = grep.stdout
    found += [f"{path} names a path of this machine" for path in listed.split("\n") if path]
    return found


def test_this_repository_has_no_tracked_machine_state():
    assert problems(REPO) == []


def test_the_check_finds_an_outside_symlink_an_ignored_file_and_a_machine_path(tmp_path):
    repo = tmp_path / "checkout" / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".venv\n")
    (repo / "inside.txt").write_text("fine\n")
    (repo.parent / "shared").mkdir()
    (repo / "notes.md").write_text(f"data is in {repo.parent}/shared/mnist\n")
    os.symlink("inside.txt", repo / "link-inside")
    os.symlink("/usr/lib", repo / ".venv")
    git(repo, "add", ".gitignore", "inside.txt", "notes.md", "link-inside")
    git(repo, "add", "-f", ".venv")
    found = problems(repo)
    assert any(".venv is a symlink leaving the repository" in item for item in found)
    assert any(".venv is tracked but ignored" in item for item in found)
    assert any("notes.md names a path of this machine" in item for item in found)
    assert not any("link-inside" in item for item in found)

"""The spoke.v1 contract guard, ``.ci/check-proto-compat`` (issue 11, item 6).

Each test builds a scratch git repository holding a copy of ``protos/`` and of the guard,
commits changes to it the way a developer would, and runs the guard there with the real
buf: a commit that breaks the wire or JSON encoding fails unless its message carries a
``Breaking-Proto-Change:`` line; compatible changes pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from spoke_grpc.config import REPO_ROOT

GUARD = REPO_ROOT / ".ci" / "check-proto-compat"
BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"
ORG_PROTO = "protos/spoke/v1/organization.proto"
DESCRIPTION = "  string description = 4;\n"

pytestmark = pytest.mark.skipif(
    not BUF.exists(), reason="buf is not installed: make node_modules/.bin/buf (needs Node.js)"
)


class Repo:
    """A scratch repository with the protos and the guard, committed as the first commit."""

    def __init__(self, path: Path, *, guarded: bool = True) -> None:
        self.path = path
        self.env = {
            **os.environ,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Dev",
            "GIT_AUTHOR_EMAIL": "dev@example.com",
            "GIT_COMMITTER_NAME": "Dev",
            "GIT_COMMITTER_EMAIL": "dev@example.com",
            "BUF": str(BUF),
        }
        shutil.copytree(REPO_ROOT / "protos", path / "protos")
        self.git("init", "--quiet", "--initial-branch=main")
        if guarded:
            self.add_guard()
        self.commit("Foundation: protos" + (" and the contract guard" if guarded else ""))

    def add_guard(self) -> None:
        (self.path / ".ci").mkdir()
        shutil.copy2(GUARD, self.path / ".ci" / "check-proto-compat")

    def git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=self.path, env=self.env, capture_output=True, text=True, check=True
        )
        return result.stdout

    def edit(self, path: str, change: Callable[[str], str]) -> None:
        file = self.path / path
        before = file.read_text()
        after = change(before)
        assert after != before, f"the edit changed nothing in {path}"
        file.write_text(after)

    def commit(self, message: str) -> None:
        self.git("add", "--all")
        self.git("commit", "--quiet", "--message", message)

    def check(self, *commits: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str((cwd or self.path) / ".ci" / "check-proto-compat"), *commits],
            cwd=cwd or self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def change_type(text: str) -> str:
    return text.replace(DESCRIPTION, "  int64 description = 4;\n")


def add_field(text: str) -> str:
    owner = "  string owner_id = 5;\n"
    return text.replace(owner, owner + "  // A short motto.\n  string motto = 11;\n")


def test_the_first_commit_has_nothing_to_compare_with(repo: Repo) -> None:
    result = repo.check()
    assert result.returncode == 0, result.stderr
    assert "first commit, nothing to compare with" in result.stdout


def test_a_breaking_change_fails_naming_the_field_and_the_way_out(repo: Repo) -> None:
    repo.edit(ORG_PROTO, change_type)
    repo.commit("Descriptions are numbers now")
    result = repo.check()
    assert result.returncode == 1, result.stdout
    assert "breaks the spoke.v1 contract" in result.stderr
    assert f"{ORG_PROTO}:" in result.stderr  # the file and line, as in the repository
    assert 'changed type from "string" to "int64"' in result.stderr
    assert "Breaking-Proto-Change: <why" in result.stderr


def test_a_json_only_break_fails_too(repo: Repo) -> None:
    """Renaming a field keeps the wire encoding but changes its JSON name (WIRE_JSON)."""
    repo.edit(ORG_PROTO, lambda t: t.replace(DESCRIPTION, "  string summary = 4;\n"))
    repo.commit("Rename description to summary")
    result = repo.check()
    assert result.returncode == 1, result.stdout
    assert "json_name" in result.stderr


def test_a_break_marked_deliberate_passes_and_says_so(repo: Repo) -> None:
    repo.edit(ORG_PROTO, change_type)
    repo.commit(
        "Descriptions are numbers now\n\n"
        "Breaking-Proto-Change: no client reads descriptions yet (agreed with the API users)\n"
    )
    result = repo.check()
    assert result.returncode == 0, result.stderr
    assert "marked deliberate: no client reads descriptions yet" in result.stdout


def test_an_empty_marker_does_not_count(repo: Repo) -> None:
    repo.edit(ORG_PROTO, change_type)
    repo.commit("Descriptions are numbers now\n\nBreaking-Proto-Change:\n")
    assert repo.check().returncode == 1


def test_an_additive_change_passes(repo: Repo) -> None:
    repo.edit(ORG_PROTO, add_field)
    repo.commit("Organizations get a motto")
    result = repo.check()
    assert result.returncode == 0, result.stderr
    assert "ok (1 commit(s) changing protos/ compared)" in result.stdout


def test_a_break_in_an_earlier_commit_of_a_push_is_caught(repo: Repo) -> None:
    repo.edit(ORG_PROTO, change_type)
    repo.commit("Descriptions are numbers now")
    repo.edit(ORG_PROTO, add_field)
    repo.commit("Organizations get a motto")
    (repo.path / "README.md").write_text("docs\n")
    repo.commit("Docs")
    result = repo.check()
    assert result.returncode == 1
    assert "Descriptions are numbers now" in result.stderr
    assert "motto" not in result.stderr


def test_a_shallow_clone_passes_with_a_note(repo: Repo, tmp_path: Path) -> None:
    repo.edit(ORG_PROTO, change_type)
    repo.commit("Descriptions are numbers now")
    shallow = tmp_path / "shallow"
    repo.git("clone", "--quiet", "--depth", "1", f"file://{repo.path}", str(shallow))
    result = repo.check(cwd=shallow)
    assert result.returncode == 0, result.stderr
    assert "not in this shallow clone" in result.stdout


def test_commits_before_the_guard_are_not_judged(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo", guarded=False)
    repo.edit(ORG_PROTO, change_type)
    repo.commit("An old unmarked break, before the guard existed")
    repo.add_guard()
    repo.commit("The contract guard")
    repo.edit(ORG_PROTO, add_field)
    repo.commit("Organizations get a motto")
    result = repo.check()
    assert result.returncode == 0, result.stderr
    assert "ok (1 commit(s) changing protos/ compared)" in result.stdout


def test_named_commits_only(repo: Repo) -> None:
    repo.edit(ORG_PROTO, change_type)
    repo.commit("Descriptions are numbers now")
    repo.edit(ORG_PROTO, add_field)
    repo.commit("Organizations get a motto")
    assert repo.check("HEAD").returncode == 0
    assert repo.check("HEAD~1").returncode == 1

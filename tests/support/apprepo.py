"""A small git repository of a deployable app, with the tags the tests deploy."""

from __future__ import annotations

import subprocess
from pathlib import Path

RESTART_OK = """#!/bin/sh
# record which release was restarted (cwd is <deploy_to>/current)
echo "$(basename "$(pwd -P)") $DSAS_RELEASE" >> "$DSAS_DEPLOY_TO/shared/restarts.log"
"""

RESTART_FAILS = """#!/bin/sh
echo "app failed to start: bad config" >&2
exit 1
"""


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "dsas test", "GIT_AUTHOR_EMAIL": "test@dsas.invalid",
           "GIT_COMMITTER_NAME": "dsas test", "GIT_COMMITTER_EMAIL": "test@dsas.invalid",
           "HOME": str(repo), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def commit_files(repo: Path, files: dict[str, str], message: str, tag: str | None = None) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    if tag:
        git(repo, "tag", tag)
    return git(repo, "rev-parse", "HEAD")


def make_app_repo(repo: Path) -> dict[str, str]:
    """Tags: v1, v2 (good), broken (restart fails). main is at v2. Returns tag -> sha."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    shas = {}
    shas["v1"] = commit_files(repo, {"app.txt": "version 1\n", "bin/restart": RESTART_OK,
                                     "public/index.html": "<h1>v1</h1>\n"}, "v1", "v1")
    shas["v2"] = commit_files(repo, {"app.txt": "version 2\n", "public/index.html": "<h1>v2</h1>\n"}, "v2", "v2")
    git(repo, "checkout", "-q", "-b", "broken-branch")
    shas["broken"] = commit_files(repo, {"app.txt": "broken\n", "bin/restart": RESTART_FAILS}, "broken", "broken")
    git(repo, "checkout", "-q", "main")
    return shas

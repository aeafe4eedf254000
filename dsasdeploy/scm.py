"""The source of a release: resolve a ref with GitPython, build one archive per commit.

The archive is built once per deploy (cached by commit sha) and streamed to every
host; hosts never need git or access to the repository.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import git

from .errors import UsageError

ARCHIVES_KEPT = 20


@dataclass(frozen=True)
class Revision:
    """A resolved ref: what the user asked for and the commit it names."""

    ref: str
    sha: str
    summary: str

    @property
    def short(self) -> str:
        return self.sha[:12]


def cache_dir() -> Path:
    base = os.environ.get("DSAS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dsas")
    return Path(base)


def _is_local(spec: str, project_dir: Path) -> Optional[Path]:
    if "://" in spec or (":" in spec and not spec.startswith(("/", ".", "~"))):
        return None
    path = Path(spec).expanduser()
    return path if path.is_absolute() else (project_dir / path)


def open_repository(spec: str, project_dir: Path) -> git.Repo:
    """A local repository as is, or a bare mirror of a remote one (fetched now)."""
    local = _is_local(spec, project_dir)
    try:
        if local is not None:
            if not local.exists():
                raise UsageError(f"repo: {local} does not exist")
            return git.Repo(local)
        mirror = cache_dir() / "mirrors" / hashlib.sha256(spec.encode()).hexdigest()[:16]
        if not mirror.exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            return git.Repo.clone_from(spec, mirror, mirror=True)
        repo = git.Repo(mirror)
        repo.git.fetch("--prune", "--tags", "origin", "+refs/heads/*:refs/heads/*")
        return repo
    except git.InvalidGitRepositoryError:
        raise UsageError(f"repo: {local} is not a git repository") from None
    except git.GitCommandError as exc:
        raise UsageError(f"repo: cannot fetch {spec}: {(exc.stderr or '').strip() or exc}") from None


def resolve(repo: git.Repo, ref: str) -> Revision:
    """Branch, tag or sha -> Revision (a usage error if it names nothing)."""
    try:
        commit = repo.commit(ref)
    except (git.BadName, ValueError, git.GitCommandError):
        raise UsageError(f"--revision: '{ref}' is not a branch, tag or commit of the repository") from None
    return Revision(ref=ref, sha=commit.hexsha, summary=commit.summary if isinstance(commit.summary, str) else "")


def build_archive(repo: git.Repo, revision: Revision, application: str) -> Path:
    """tar.gz of the commit's tree, built once and cached by sha (atomic rename)."""
    directory = cache_dir() / "archives"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{application}-{revision.sha}.tar.gz"
    if target.is_file():
        os.utime(target)
        return target
    fd, temporary = tempfile.mkstemp(dir=directory, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            repo.archive(out, treeish=revision.sha, format="tar.gz")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    _prune_cache(directory)
    return target


def _prune_cache(directory: Path) -> None:
    archives = sorted(directory.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[ARCHIVES_KEPT:]:
        old.unlink(missing_ok=True)

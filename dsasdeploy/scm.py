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
from .localdirs import cache_dir

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


def _is_local(spec: str, project_dir: Path) -> Optional[Path]:
    if "://" in spec or (":" in spec and not spec.startswith(("/", ".", "~"))):
        return None
    path = Path(spec).expanduser()
    return path if path.is_absolute() else (project_dir / path)


def open_repository(spec: str, project_dir: Path, source: str = "repo") -> git.Repo:
    """A local repository as is, or a bare mirror of a remote one (fetched now).
    `source` is how errors name the setting (e.g. 'dsas.yaml:2: repo')."""
    local = _is_local(spec, project_dir)
    try:
        if local is not None:
            if not local.exists():
                raise UsageError(f"{source}: {local} does not exist")
            return git.Repo(local)
        mirror = cache_dir().check() / "mirrors" / hashlib.sha256(spec.encode()).hexdigest()[:16]
        if not mirror.exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            return git.Repo.clone_from(spec, mirror, mirror=True)
        repo = git.Repo(mirror)
        repo.git.fetch("--prune", "--tags", "origin", "+refs/heads/*:refs/heads/*")
        return repo
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(f"{source}: {local} is not a git repository") from None
    except git.GitCommandError as exc:
        raise UsageError(f"{source}: cannot fetch {spec}: {(exc.stderr or '').strip() or exc}") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot use {spec}: {exc.strerror or exc}") from None


def resolve(repo: git.Repo, ref: str, source: str = "--revision") -> Revision:
    """Branch, tag or sha -> Revision (a usage error naming `source` if it names nothing:
    '--revision' when the user gave it, the `branch:` key otherwise)."""
    try:
        commit = repo.commit(ref)
    except (git.BadName, ValueError, git.GitCommandError):
        raise UsageError(f"{source}: '{ref}' is not a branch, tag or commit of the repository") from None
    return Revision(ref=ref, sha=commit.hexsha, summary=commit.summary if isinstance(commit.summary, str) else "")


def known_commit(repo: git.Repo, sha: str) -> bool:
    """Whether `sha` (a full commit id, as a release's REVISION holds it) is in the repository."""
    if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
        return False
    try:
        return repo.commit(sha).type == "commit"
    except (git.BadName, ValueError, git.GitCommandError):
        return False


def build_archive(repo: git.Repo, revision: Revision, application: str) -> Path:
    """tar.gz of the commit's tree, built once and cached by sha (atomic rename)."""
    cache = cache_dir()
    directory = cache.check() / "archives"
    target = directory / f"{application}-{revision.sha}.tar.gz"  # application: a checked name
    try:
        directory.mkdir(parents=True, exist_ok=True)
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
    except OSError as exc:
        raise UsageError(f"{cache.source}: cannot write the release archive in {directory}: "
                         f"{exc.strerror or exc}; nothing was touched") from None
    return target


def _prune_cache(directory: Path) -> None:
    archives = sorted(directory.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[ARCHIVES_KEPT:]:
        old.unlink(missing_ok=True)

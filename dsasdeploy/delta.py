"""Delta archives: only what changed between two commits, for hosts whose release has a known base.

The delta's tar.gz holds the changed files (added, modified, type or mode changed) exactly as
the full archive of the new commit holds them (same names, modes, symlinks; cut from it), with
their parent directories; `remove` lists every changed or deleted path, which the host removes
from its hard-linked copy of the base before unpacking (commands/manifest.py). Built once per
(base, new) pair and cached beside the full archives.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path

import git

from .errors import UsageError
from .localdirs import cache_dir
from .plan.release import DeltaArchive


def changed_paths(repo: git.Repo, base: str, new: str) -> tuple[set[str], set[str]]:
    """(changed, deleted) paths between two commits; a rename is a delete and an add."""
    out = repo.git.diff("--no-renames", "--no-ext-diff", "--name-status", "-z", base, new)
    fields = [f for f in out.split("\0") if f != ""]
    changed, deleted = set(), set()
    for status, path in zip(fields[0::2], fields[1::2]):
        (deleted if status.startswith("D") else changed).add(path)
    return changed, deleted


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def cut_archive(full: Path, wanted: set[str], target: Path) -> None:
    """Copy the members of the tar.gz `full` named in `wanted`, and their parent directories, to `target`."""
    dirs = {d for path in wanted for d in _parents(path)}
    with tarfile.open(full, "r:gz") as source, tarfile.open(target, "w:gz", format=tarfile.PAX_FORMAT) as out:
        for member in source:
            name = member.name.rstrip("/")
            if name in wanted:
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
            elif member.isdir() and name in dirs:
                out.addfile(member)


DELTAS_KEPT = 40


def _prune(directory: Path) -> None:
    """Keep the newest DELTAS_KEPT deltas (and their listings)."""
    archives = sorted(directory.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[DELTAS_KEPT:]:
        old.unlink(missing_ok=True)
        old.with_name(old.name.removesuffix(".tar.gz") + ".json").unlink(missing_ok=True)


def build_delta(repo: git.Repo, base: str, new: str, full_archive: Path) -> DeltaArchive:
    """The delta from `base` to `new`, cut from `new`'s full archive; cached by the pair."""
    cache = cache_dir()
    directory = cache.check() / "deltas"
    stem = f"{full_archive.name.removesuffix('.tar.gz')}-from-{base}"
    archive, listing = directory / f"{stem}.tar.gz", directory / f"{stem}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if archive.is_file() and listing.is_file():
            data = json.loads(listing.read_text())
            return DeltaArchive(base, new, archive, tuple(data["remove"]), data["changed"])
        changed, deleted = changed_paths(repo, base, new)
        fd, temporary = tempfile.mkstemp(dir=directory, suffix=".part")
        os.close(fd)
        try:
            cut_archive(full_archive, changed, Path(temporary))
            os.replace(temporary, archive)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        remove = sorted(changed | deleted)
        listing.write_text(json.dumps({"remove": remove, "changed": len(changed)}))
        _prune(directory)
    except OSError as exc:
        raise UsageError(f"{cache.source}: cannot write a delta archive in {directory}: "
                         f"{exc.strerror or exc}; nothing was touched") from None
    except git.GitCommandError as exc:
        raise UsageError(f"cannot compare {base[:12]} with {new[:12]}: {exc.stderr or exc}") from None
    return DeltaArchive(base, new, archive, tuple(remove), len(changed))


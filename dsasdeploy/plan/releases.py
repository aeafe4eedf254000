"""Pure decisions about releases: what to prune, what to roll back to."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from ..commands.revlog import LogEntry, failed_releases
from ..errors import UsageError


def releases_to_prune(release_ids: Iterable[str], keep: int, protected: Iterable[Optional[str]],
                      failed: Iterable[str] = ()) -> list[str]:
    """Releases to delete: all but the newest `keep` good ones; never a protected one.

    `protected` holds the live release and the rollback target; failed releases do
    not count towards `keep` and go first.
    """
    keep_set = {p for p in protected if p}
    failed_set = set(failed)
    good = sorted((r for r in release_ids if r not in failed_set), reverse=True)
    keep_set.update(good[:keep])
    return sorted(r for r in release_ids if r not in keep_set)


def rollback_target(common: Iterable[str], current: Optional[str], log: Sequence[LogEntry],
                    requested: Optional[str] = None) -> str:
    """The release a rollback switches to.

    Default: the newest release older than `current` that is on every host and not
    marked failed. `requested` (--to) must be on every host and not failed.
    """
    failed = failed_releases(log)
    available = sorted(set(common))
    if requested is not None:
        if requested not in available:
            shown = ", ".join(available) or "none"
            raise UsageError(f"--to: release {requested} is not on every host (releases on all hosts: {shown})")
        if requested in failed:
            raise UsageError(f"--to: release {requested} is marked failed in revisions.log; refusing to roll back to it")
        if requested == current:
            raise UsageError(f"--to: release {requested} is already current")
        return requested
    candidates = [r for r in available if r not in failed and (current is None or r < current)]
    if not candidates:
        raise UsageError("no earlier good release exists on every host to roll back to")
    return candidates[-1]


def common_releases(per_host: Iterable[Iterable[str]]) -> set[str]:
    """Release ids present on every host."""
    sets = [set(ids) for ids in per_host]
    return set.intersection(*sets) if sets else set()

"""The one place that names the release layout on a host (Capistrano-compatible).

<deploy_to>/releases/<id>/   one per deploy, REVISION inside
<deploy_to>/shared/          linked files and dirs
<deploy_to>/current          -> releases/<id>, switched by rename(2)
<deploy_to>/revisions.log    Capistrano's lines: one per deploy and rollback
<deploy_to>/.dsas-revisions.log   dsas's detail: every deploy, failure and rollback
<deploy_to>/.dsas-lock/      mkdir-atomic lock; `owner` inside says who and since when
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

RELEASE_ID_FORMAT = "%Y%m%d%H%M%S"
RELEASE_ID_PATTERN = re.compile(r"^\d{14}$")


@dataclass(frozen=True)
class ReleasePaths:
    """Absolute paths of one host's release layout under `deploy_to`."""

    deploy_to: str

    @property
    def releases(self) -> str:
        return posixpath.join(self.deploy_to, "releases")

    @property
    def shared(self) -> str:
        return posixpath.join(self.deploy_to, "shared")

    @property
    def current(self) -> str:
        return posixpath.join(self.deploy_to, "current")

    @property
    def revisions_log(self) -> str:
        return posixpath.join(self.deploy_to, "revisions.log")

    @property
    def dsas_log(self) -> str:
        return posixpath.join(self.deploy_to, ".dsas-revisions.log")

    @property
    def lock_dir(self) -> str:
        return posixpath.join(self.deploy_to, ".dsas-lock")

    @property
    def lock_owner(self) -> str:
        return posixpath.join(self.lock_dir, "owner")

    def release(self, release_id: str) -> str:
        return posixpath.join(self.releases, release_id)

    def shared_path(self, relative: str) -> str:
        return posixpath.join(self.shared, relative)


def release_id_at(moment: datetime) -> str:
    """The release id for a UTC moment: yyyymmddHHMMSS."""
    return moment.astimezone(timezone.utc).strftime(RELEASE_ID_FORMAT)


def next_release_id(now: datetime, existing: set[str] | list[str]) -> str:
    """A release id for `now` that sorts after every existing release id.

    Two deploys within one second (or a controller whose clock is behind a host's
    newest release) must still get a new, larger id: one second later is taken.
    """
    candidate = release_id_at(now)
    valid = sorted(i for i in existing if RELEASE_ID_PATTERN.match(i))
    if valid and candidate <= valid[-1]:
        newest = datetime.strptime(valid[-1], RELEASE_ID_FORMAT).replace(tzinfo=timezone.utc)
        candidate = release_id_at(newest + timedelta(seconds=1))
    return candidate


def is_release_id(name: str) -> bool:
    """True for a directory name that dsas would have created under releases/."""
    return bool(RELEASE_ID_PATTERN.match(name))

"""The per-host deploy lock: `mkdir` is atomic, the owner file says who holds it.

A run holding the lock refreshes `<lock>/heartbeat` (the host's own `date +%s`) every
few seconds; a probe reports its age measured on the host's clock, so that a run on
another controller can be told live (fresh heartbeat) from dead (old heartbeat).
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

from ..paths import ReleasePaths
from .base import MARK, Marker, mark, q

HEARTBEAT_EVERY = 10.0  # seconds between two heartbeats of a run holding the lock
HEARTBEAT_STALE = 45  # a heartbeat older than this (host clock) means the run is gone

ACQUIRED, HELD, RELEASED = Marker("lock", "acquired"), Marker("lock", "held"), Marker("lock", "released")
LOCK_FIELDS = ("token", "owner", "controller", "pid", "stage", "since", "revision", "command")


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock. `token` is unique per dsas run: only its owner may release it."""

    token: str
    owner: str
    controller: str
    pid: int
    stage: str
    since: str
    revision: str
    command: str

    def file_text(self) -> str:
        return "".join(f"{k}={v}\n" for k, v in asdict(self).items())

    @classmethod
    def from_lines(cls, lines: list[str]) -> Optional["LockOwner"]:
        """Parse `key=value` lines; None when the file was unreadable or partial."""
        values = {}
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key in LOCK_FIELDS:
                values[key] = value
        if set(values) != set(LOCK_FIELDS):
            return None
        try:
            pid = int(values.pop("pid"))
        except ValueError:
            return None
        return cls(pid=pid, **values)

    def since_datetime(self) -> Optional[datetime]:
        try:
            return datetime.fromisoformat(self.since.replace("Z", "+00:00"))
        except ValueError:
            return None

    def describe(self, now: Optional[datetime] = None) -> str:
        """'root@ci-7 (pid 4242) since 2026-11-27T10:01:02Z (3m ago), deploying abc1234 with `deploy`'."""
        age = ""
        started = self.since_datetime()
        if started is not None:
            seconds = int(((now or datetime.now(timezone.utc)) - started).total_seconds())
            age = f" ({_age(seconds)} ago)"
        rev = self.revision[:12] if self.revision else "?"
        return f"{self.owner} (pid {self.pid} on {self.controller}) since {self.since}{age}, `{self.command}` of revision {rev}"


def holder_is_stale(owner: Optional[LockOwner], heartbeat_age: Optional[int], here: str,
                    pid_alive: Callable[[int], Optional[bool]]) -> Optional[bool]:
    """Is the run holding a lock gone? True: dead (stale lock), False: live, None: cannot tell.

    Pure judgement: its pid decides when it ran on this controller (`here`); otherwise the
    age of its heartbeat on the host's clock does (fresh: live, older than HEARTBEAT_STALE:
    dead); a lock without a heartbeat from another controller is unknown.
    """
    if owner is None:
        return True  # an owner file that is missing or unreadable: a crashed mkdir
    if owner.controller == here:
        alive = pid_alive(owner.pid)
        if alive is not None:
            return not alive
    if heartbeat_age is not None:
        return heartbeat_age > HEARTBEAT_STALE
    return None


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def heartbeat_path(paths: ReleasePaths) -> str:
    return posixpath.join(paths.lock_dir, "heartbeat")


def _beat_lines(paths: ReleasePaths) -> list[str]:
    beat = q(heartbeat_path(paths))
    return [f"{{ date +%s > {beat}.tmp && mv -f -- {beat}.tmp {beat}; }} 2>/dev/null || true"]


def _holder_lines(paths: ReleasePaths) -> list[str]:
    """Markers naming the holder: its owner file, and its heartbeat's age on this host's clock."""
    return [
        f"sed 's/^/{MARK} lockinfo /' {q(paths.lock_owner)} 2>/dev/null || true",
        f"hb=$(head -c 20 {q(heartbeat_path(paths))} 2>/dev/null || true)",
        'case "$hb" in ""|*[!0-9]*) ;; *) ' + mark("lockbeat", '$(( $(date +%s) - hb ))') + ";; esac",
    ]


def create_and_acquire_lines(paths: ReleasePaths, owner: LockOwner) -> list[str]:
    """On a host without a release layout (a DRBD node): create deploy_to, then `acquire_lines`."""
    return [f"mkdir -p {q(paths.deploy_to)}"] + acquire_lines(paths, owner)


def acquire_lines(paths: ReleasePaths, owner: LockOwner) -> list[str]:
    """Take the lock (with a first heartbeat) or report who has it. Never fails the script by itself."""
    return [
        f"if mkdir {q(paths.lock_dir)} 2>/dev/null; then",
        f"  printf '%s' {q(owner.file_text())} > {q(paths.lock_owner)}",
        *("  " + line for line in _beat_lines(paths)),
        "  " + mark("lock", "acquired"),
        "else",
        "  " + mark("lock", "held"),
        *("  " + line for line in _holder_lines(paths)),
        "fi",
    ]


def report_lines(paths: ReleasePaths) -> list[str]:
    """Report the lock state without touching it."""
    return [
        f"if [ -d {q(paths.lock_dir)} ]; then",
        "  " + mark("lock", "held"),
        *("  " + line for line in _holder_lines(paths)),
        "else",
        "  " + mark("lock", "free"),
        "fi",
    ]


def heartbeat_lines(paths: ReleasePaths, token: str) -> list[str]:
    """Refresh the heartbeat, only in a lock this run's token holds (never revive someone else's)."""
    return [
        f"if [ \"$(sed -n 's/^token=//p' {q(paths.lock_owner)} 2>/dev/null)\" = {q(token)} ]; then",
        *("  " + line for line in _beat_lines(paths)),
        "fi",
    ]


def release_lines(paths: ReleasePaths, token: str) -> list[str]:
    """Remove the lock only if this run's token is in it (never someone else's)."""
    return [
        f"if [ \"$(sed -n 's/^token=//p' {q(paths.lock_owner)} 2>/dev/null)\" = {q(token)} ]; then",
        f"  rm -rf -- {q(paths.lock_dir)}",
        "  " + mark("lock", "released"),
        "fi",
    ]


def break_lines(paths: ReleasePaths) -> list[str]:
    """Remove the lock whoever holds it (`dsas unlock`)."""
    return [
        f"if [ -d {q(paths.lock_dir)} ]; then",
        f"  sed 's/^/{MARK} lockinfo /' {q(paths.lock_owner)} 2>/dev/null || true",
        f"  rm -rf -- {q(paths.lock_dir)}",
        "  " + mark("lock", "broken"),
        "else",
        "  " + mark("lock", "free"),
        "fi",
    ]


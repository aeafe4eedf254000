"""The per-host deploy lock: `mkdir` is atomic, the owner file says who holds it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Optional

from ..paths import ReleasePaths
from .base import MARK, mark, q

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


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def acquire_lines(paths: ReleasePaths, owner: LockOwner) -> list[str]:
    """Take the lock or report who has it. Never fails the script by itself."""
    return [
        f"if mkdir {q(paths.lock_dir)} 2>/dev/null; then",
        f"  printf '%s' {q(owner.file_text())} > {q(paths.lock_owner)}",
        "  " + mark("lock", "acquired"),
        "else",
        "  " + mark("lock", "held"),
        f"  sed 's/^/{MARK} lockinfo /' {q(paths.lock_owner)} 2>/dev/null || true",
        "fi",
    ]


def report_lines(paths: ReleasePaths) -> list[str]:
    """Report the lock state without touching it."""
    return [
        f"if [ -d {q(paths.lock_dir)} ]; then",
        "  " + mark("lock", "held"),
        f"  sed 's/^/{MARK} lockinfo /' {q(paths.lock_owner)} 2>/dev/null || true",
        "else",
        "  " + mark("lock", "free"),
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


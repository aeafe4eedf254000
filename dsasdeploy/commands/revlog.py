"""revisions.log: one line per deploy, failure and rollback. Builder and parser.

    2026-11-27T10:02:03Z deployed release=20261127100203 revision=3f2a... ref=main stage=production by=ci@runner-7
    2026-11-27T10:09:41Z failed release=20261127100941 revision=9c1b... ref=main stage=production by=... reason=restart@web2
    2026-11-27T10:12:00Z rolled_back release=20261127100203 from=20261127100941 stage=production by=...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

EVENTS = ("deployed", "failed", "rolled_back")
_UNSAFE = re.compile(r"\s+")


@dataclass(frozen=True)
class LogEntry:
    time: str
    event: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def release(self) -> Optional[str]:
        return self.fields.get("release")

    def line(self) -> str:
        """The entry as one log line (values never hold whitespace)."""
        parts = [self.time, self.event] + [f"{k}={_UNSAFE.sub('_', v)}" for k, v in self.fields.items()]
        return " ".join(parts)


def parse_line(line: str) -> Optional[LogEntry]:
    """A LogEntry, or None for a line dsas did not write (e.g. Capistrano's)."""
    words = line.strip().split()
    if len(words) < 2 or words[1] not in EVENTS:
        return None
    values = {}
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if sep:
            values[key] = value
    return LogEntry(words[0], words[1], values)


def parse_lines(lines: Iterable[str]) -> list[LogEntry]:
    return [e for e in (parse_line(line) for line in lines) if e is not None]


def failed_releases(entries: Iterable[LogEntry]) -> set[str]:
    """Releases the log marks as failed: rollback never picks them."""
    return {e.release for e in entries if e.event == "failed" and e.release}

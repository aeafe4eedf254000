"""The revision log: Capistrano's revisions.log, plus dsas's own detail. Builders and parser.

<deploy_to>/revisions.log holds Capistrano's lines, so that tools reading it keep working:

    Branch main (at 3f2a...) deployed as release 20261127100203 by alice
    alice rolled back to release 20261127100203

<deploy_to>/.dsas-revisions.log holds every event with what dsas needs besides (failed
releases, which rollback never picks; time, stage, ref, the controller):

    2026-11-27T10:02:03Z deployed release=20261127100203 revision=3f2a... ref=main stage=production by=alice@ci-7
    2026-11-27T10:09:41Z failed release=20261127100941 revision=9c1b... ref=main stage=production by=... reason=restart@web2
    2026-11-27T10:12:00Z rolled_back release=20261127100203 from=20261127100941 stage=production by=...

The parser reads both formats, and the dsas lines older dsas versions wrote into revisions.log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

EVENTS = ("deployed", "failed", "rolled_back")
_UNSAFE = re.compile(r"\s+")
_CAP_DEPLOYED = re.compile(r"Branch (?P<ref>\S+) \(at (?P<revision>\S+)\) deployed as release (?P<release>\S+) "
                           r"by (?P<by>.+)")
_CAP_ROLLED_BACK = re.compile(r"(?P<by>.+) rolled back to release (?P<release>\S+)")


def _word(value: str) -> str:
    return _UNSAFE.sub("_", value)


@dataclass(frozen=True)
class LogEntry:
    time: str
    event: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def release(self) -> Optional[str]:
        return self.fields.get("release")

    @property
    def user(self) -> str:
        """The user name alone (`by` is user@controller)."""
        return self.fields.get("by", "").partition("@")[0] or "unknown"

    def line(self) -> str:
        """The entry as one line of dsas's own log (values never hold whitespace)."""
        parts = [self.time, self.event] + [f"{k}={_word(v)}" for k, v in self.fields.items()]
        return " ".join(parts)

    def capistrano_line(self) -> Optional[str]:
        """The entry as Capistrano writes it into revisions.log (None: Capistrano logs no failures)."""
        if self.event == "deployed":
            return (f"Branch {_word(self.fields.get('ref') or 'unknown')} (at {self.fields.get('revision', '')}) "
                    f"deployed as release {self.release} by {_word(self.user)}")
        if self.event == "rolled_back":
            return f"{_word(self.user)} rolled back to release {self.release}"
        return None


def parse_line(line: str) -> Optional[LogEntry]:
    """A LogEntry from a dsas line or a Capistrano line (which has no time); None for others."""
    text = line.strip()
    words = text.split()
    if len(words) >= 2 and words[1] in EVENTS:
        values = {}
        for word in words[2:]:
            key, sep, value = word.partition("=")
            if sep:
                values[key] = value
        return LogEntry(words[0], words[1], values)
    found = _CAP_DEPLOYED.fullmatch(text)
    if found:
        return LogEntry("", "deployed", found.groupdict())
    found = _CAP_ROLLED_BACK.fullmatch(text)
    if found:
        return LogEntry("", "rolled_back", found.groupdict())
    return None


def parse_lines(lines: Iterable[str]) -> list[LogEntry]:
    return [e for e in (parse_line(line) for line in lines) if e is not None]


def failed_releases(entries: Iterable[LogEntry]) -> set[str]:
    """Releases the log marks as failed: rollback never picks them."""
    return {e.release for e in entries if e.event == "failed" and e.release}

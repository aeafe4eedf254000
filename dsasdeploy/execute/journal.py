"""The controller-side journal of a rolling release: every state change, before it happens.

One JSON object per line, fsync'ed, in <project>/.dsas/journal/<stage>.jsonl. A run
writes `begin`, then an intent record before each drain (with the original weights),
switch and restore, and `end` when the pool is whole again. A file without `end`
means a dsas run died mid-rollout: `dsas recover STAGE` reads it to put every server
back into service on one release, and `dsas deploy` refuses to start until then.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ..localdirs import state_dir
from ..plan.drain import DrainRecord


def journal_path(project_dir: Path, stage: str) -> Path:
    return state_dir(project_dir).path / "journal" / f"{stage}.jsonl"


@dataclass
class Journal:
    """The controller's journal; `take_unshipped` hands the records not yet copied to the
    directors (commands/fleet_journal.py) to the next director round trip."""

    path: Path
    unshipped: list[str] = field(default_factory=list)
    fresh: bool = False  # a run began since the last shipment: the directors start a new copy

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash: the records around it still count
        return records

    def unfinished(self) -> Optional[list[dict]]:
        """The records of a run that never wrote `end`, else None."""
        records = self.records()
        if records and records[-1].get("event") != "end":
            return records
        return None

    def begin(self, **data: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.replace(self.path.with_suffix(".previous.jsonl"))
        self.unshipped, self.fresh = [], True
        self.record("begin", **data)

    def record(self, event: str, **data: Any) -> None:
        line = json.dumps({"event": event, "time": datetime.now(timezone.utc).isoformat(), **data})
        with open(self.path, "a+b") as out:
            out.seek(0, os.SEEK_END)
            if out.tell():
                out.seek(-1, os.SEEK_END)
                if out.read(1) != b"\n":  # the previous writer died mid-line
                    out.write(b"\n")
            out.write(line.encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        self.unshipped.append(line)

    def take_unshipped(self) -> tuple[list[str], bool]:
        """(records not yet on the directors, whether they start a new run), and forget them."""
        records, fresh = self.unshipped, self.fresh
        self.unshipped, self.fresh = [], False
        return records, fresh

    def adopt(self, records: list[dict]) -> None:
        """Make `records` (a run found on the directors) this controller's journal: the cache."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.replace(self.path.with_suffix(".previous.jsonl"))
        with open(self.path, "w") as out:
            for record in records:
                out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def end(self, outcome: str) -> None:
        if self.path.exists():
            self.record("end", outcome=outcome)


@dataclass
class JournalState:
    """What a journal says is still out of order (pure replay of the records)."""

    begin: dict = field(default_factory=dict)
    drained: dict = field(default_factory=dict)  # host -> list of DrainRecord (its original place in each pool)
    switched: dict = field(default_factory=dict)  # host -> release it was switched to
    previous: dict = field(default_factory=dict)  # host -> release before the run
    gated: set = field(default_factory=set)  # hosts where the new release passed its gates

    @classmethod
    def replay(cls, records: list[dict]) -> "JournalState":
        state = cls()
        for record in records:
            event, host = record.get("event"), record.get("host")
            if event == "begin":
                state.begin = record
                state.previous = dict(record.get("previous", {}))
            elif event == "drain":
                state.drained.setdefault(host, [])
                drain = DrainRecord.from_journal(record)
                state.drained[host] = [e for e in state.drained[host] if
                                       (e.director, e.service) != (drain.director, drain.service)]
                state.drained[host].append(drain)
            elif event == "restored":
                state.drained.pop(host, None)
            elif event == "switch":
                state.switched[host] = record["release"]
            elif event == "switched_back":
                state.switched.pop(host, None)
                state.gated.discard(host)
            elif event == "gated":
                state.gated.add(host)
        return state

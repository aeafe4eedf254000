"""The rolling-release journal's copy on the directors: pure builders and the parser.

The controller's journal (execute/journal.py) lives where dsas ran. What is needed to put
servers back (the run's begin record: release, hosts, previous releases, lock token; the drain
records with the original weights; restored; end) is also appended to
<deploy_to>/.dsas-journal/<stage>.jsonl on every director, in the same round trip as the
weight edit it describes and before that edit. `dsas recover` run from another checkout or a
fresh CI workspace reads it there.
"""

from __future__ import annotations

import json
from typing import Optional

from .base import Marker, marked_text, q

COPY_FOLLOWS = Marker("fleet-journal")  # the copy is what follows this line, up to the next marker (END)
BEGIN, END = COPY_FOLLOWS.line, Marker("fleet-journal-end").line


def journal_file(deploy_to: str, stage: str) -> str:
    return f"{deploy_to.rstrip('/')}/.dsas-journal/{stage}.jsonl"


def append_lines(deploy_to: str, stage: str, records: list[str], fresh: bool) -> list[str]:
    """Shell lines appending JSON `records` (one per line) to the director's copy; `fresh`: a new
    run begins, the previous file is kept beside it as .previous."""
    if not records:
        return []
    path = journal_file(deploy_to, stage)
    directory = q(path.rsplit('/', 1)[0])
    lines = [f"[ -d {directory} ] || mkdir -p {directory}"]  # no fork when it exists (a director's exec is costly)
    if fresh:
        lines.append(f"if [ -f {q(path)} ]; then mv -f {q(path)} {q(path + '.previous')}; fi")
    lines.append("printf '%s\\n' " + " ".join(q(r) for r in records) + f" >> {q(path)}")
    return lines


def read_lines(deploy_to: str, stage: str) -> list[str]:
    """Shell lines printing the director's copy between markers (nothing if it has none)."""
    return [f"echo {q(BEGIN)}", f"cat {q(journal_file(deploy_to, stage))} 2>/dev/null || true", f"echo {q(END)}"]


def parse(stdout: str) -> list[dict]:
    """The records of the copy printed by read_lines (torn lines skipped)."""
    body = marked_text(stdout, COPY_FOLLOWS)
    if body is None:
        return []
    records = []
    for line in body.splitlines():
        # a copy whose last record lost its newline (a torn append) has END on that line
        record, _, _ = line.partition(END)
        try:
            value = json.loads(record)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def unfinished(records: list[dict]) -> Optional[list[dict]]:
    """The records of the last run if it never wrote `end` (from its begin on), else None."""
    starts = [i for i, r in enumerate(records) if r.get("event") == "begin"]
    if not starts:
        return None
    run = records[starts[-1]:]
    return None if run[-1].get("event") == "end" else run


def run_token(records: list[dict]) -> Optional[str]:
    """The lock token of the last run in `records` (its begin record), or None."""
    begins = [r for r in records if r.get("event") == "begin"]
    return begins[-1].get("token") if begins else None

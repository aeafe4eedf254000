"""The add-server journal: one host's request, token and steps done, written as each step ends.

It lives at <state>/provision/<stage>-<name>.json; `--resume` reads it to go on where a
failure or a crash stopped, and a finished add-server leaves it as <...>.json.done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UsageError
from ..localdirs import state_dir


def state_path(project_dir: Path, stage: str, name: str) -> Path:
    return state_dir(project_dir).path / "provision" / f"{stage}-{name}.json"


class ProvisionJournal:
    """The add-server state of one host: the request, the token, the steps done. Atomic writes."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data: dict = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: unreadable add-server journal ({exc}); look at it, then remove it") from None

    @property
    def exists(self) -> bool:
        return bool(self.data)

    def done(self, step: str) -> bool:
        return step in self.data.get("done", [])

    def save(self, **fields) -> None:
        self.data.update(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as out:
            json.dump(self.data, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def mark(self, step: str, **fields) -> None:
        done = [s for s in self.data.get("done", []) if s != step] + [step]
        self.save(done=done, failed=None, **fields)

    def unmark(self, *steps: str) -> None:
        self.save(done=[s for s in self.data.get("done", []) if s not in steps])

    def discard(self) -> None:
        self.data = {}
        self.path.unlink(missing_ok=True)

    def finish(self) -> None:
        self.save(finished=True)
        self.path.replace(self.path.with_name(self.path.name + ".done"))

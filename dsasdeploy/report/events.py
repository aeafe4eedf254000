"""Events: what happened, as data. The flow emits them; reporters render them.

Each event type and its fields are declared once, as a dataclass in `event_types.py`; the JSON
form of every event (one object per line with --json) is described by the schema generated from
them, `dsasdeploy/report/events.schema.json`; `schema` is its version.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Protocol

from .event_types import ENVELOPE_FIELDS, EVENT_CLASSES, SCHEMA_VERSION, typed_event

EVENT_TYPES = tuple(EVENT_CLASSES)
STRICT_ENV = "DSAS_STRICT_EVENTS"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@dataclass(frozen=True)
class Event:
    type: str
    stage: str
    time: str = field(default_factory=utc_now)
    host: Optional[str] = None
    phase: Optional[str] = None
    status: Optional[str] = None
    message: Optional[str] = None
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA_VERSION, "type": self.type, "time": self.time, "stage": self.stage}
        for key in ENVELOPE_FIELDS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.data)
        return out


class Reporter(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class EventBus:
    """Stamps events with the stage and hands them to the reporter, one at a time."""

    def __init__(self, stage: str, reporter: Reporter):
        self.stage = stage
        self.reporter = reporter
        self.history: list[Event] = []
        self.finished = False
        self._lock = threading.Lock()

    def emit(self, type: str, **fields: Any) -> Event:
        """Report one event. With DSAS_STRICT_EVENTS=1 (the tests) an event that does not fit its class in
        event_types.py raises TypeError; without it the event goes out as given: a run never loses or
        fails on its report because of a field its declaration does not know yet."""
        try:
            typed_event(type, fields)
        except TypeError:
            if os.environ.get(STRICT_ENV) == "1":
                raise
        known = {k: fields.pop(k) for k in ENVELOPE_FIELDS if k in fields}
        event = Event(type=type, stage=self.stage, data=fields, **known)
        with self._lock:
            if self.finished:
                return event  # nothing is reported after the summary: it is always the last event
            self.history.append(event)
            self.reporter.emit(event)
            if type == "summary":
                self.finished = True
        return event

    def close(self) -> None:
        self.reporter.close()

"""Events: what happened, as data. The flow emits them; reporters render them.

The JSON form of every event (one object per line with --json) is described by
`dsasdeploy/report/events.schema.json`; `schema` is its version.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Protocol

SCHEMA_VERSION = 1

EVENT_TYPES = (
    "run_started",     # command, stage, hosts, revision (when known)
    "host_connected",  # host, seconds
    "lock",            # host, status: acquired | held | waiting | released | broken | free
    "phase_started",   # phase, hosts
    "host_phase",      # host, phase, status: ok | failed | skipped, seconds, step, message
    "phase_finished",  # phase, status, seconds
    "hook",            # phase, name, where: local | host, status, message
    "script",          # dry run: host, phase, script (the exact text that would run)
    "host_state",      # host, data: releases / current / lock / disk (releases, check)
    "host_output",     # host, message: what a recipe's command printed
    "batch",           # status: started | done, name (canary, batch N), hosts, index, of
    "lb",              # host, status: drained | drain_complete | restored; directors, weights, seconds
    "gate",            # host, name: health | warm, status: ok | failed, seconds, attempts, figures, release
    "recover",         # status, release, forward, drained, switched (what the journal said)
    "drbd_state",      # host, resource, reachable, role, peer_role, cstate, disk, peer_disk, sync_done, ...
    "drbd_verdict",    # status: safe | unsafe, resource, primary, reasons, message
    "drbd_step",       # host, phase (the step), status: ok | failed, seconds, message
    "provision_step",  # add-server: host (new), phase (step), status: started|ok|failed|skipped|waiting, seconds
    "warning",         # message, host (optional)
    "summary",         # status, exit_code, release, revision, hosts{...}, round_trips{...}
)


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
        for key in ("host", "phase", "status", "message"):
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
        known = {k: fields.pop(k) for k in ("host", "phase", "status", "message") if k in fields}
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

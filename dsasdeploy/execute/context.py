"""The run context: what every step of one dsas command shares, handed to whoever needs it.

A RunContext holds the stage, the hosts the run acts on, the backend, the event bus, the
parallelism limit, this run's lock token and the per-host records of the summary; its
helpers run one script per host in parallel (`phase`), local hooks, and log entries.
Runners (deploy, rollback, recover, DRBD, add-server) and recipes take one; nothing else
is shared between them. The stable surface for recipes is documented in docs/architecture.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..commands import lock as lockcmd
from ..commands.base import last_step
from ..commands.revlog import LogEntry
from ..errors import DsasError, RemoteError
from ..identity import operator
from ..inventory import Host, Stage
from ..plan.hooks import local_hooks
from ..report.events import EventBus
from ..status import ExitStatus
from .backend import Backend, ExecResult
from .pool import one_line, run_parallel

PhaseResults = dict[str, tuple[bool, str, str]]  # host name -> (ok, failing step, reason)


@dataclass
class HostRecord:
    """Per-host outcome for the summary and the --report file."""

    outcome: str = "unchanged"
    release: Optional[str] = None
    previous: Optional[str] = None
    error: Optional[str] = None
    seconds: dict = field(default_factory=dict)
    shipped: Optional[str] = None  # what prepare sent: "full", or "delta from <release>"
    bytes_sent: Optional[int] = None


@dataclass
class FlowResult:
    """What a command did, for the summary event and the exit code."""

    status: ExitStatus
    message: str
    release: Optional[str] = None
    revision: Optional[str] = None
    ref: Optional[str] = None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class RunContext:
    """One command's shared state and its phase, hook and log helpers."""

    stage: Stage
    hosts: tuple[Host, ...]
    backend: Backend
    bus: EventBus
    clock: Callable[[], datetime] = utc_now
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    aux_hosts: tuple[Host, ...] = ()  # hosts the run talks to without releasing (directors, migration host)
    locked: set[str] = field(default_factory=set)  # hosts whose stage lock this run holds
    beats: dict[str, float] = field(default_factory=dict)  # host name -> its lock's last heartbeat
    records: dict[str, HostRecord] = field(default_factory=dict)
    outputs: dict[str, ExecResult] = field(default_factory=dict)  # each host's result of the latest phase
    # what this run was about, known even when it fails: release id, revision, ref
    attempt: dict[str, Optional[str]] = field(default_factory=lambda: {"release": None, "revision": None,
                                                                       "ref": None})
    cancel: threading.Event = field(default_factory=threading.Event)  # set on Ctrl-C: waiting loops give up

    def __post_init__(self) -> None:
        self.hosts = tuple(self.hosts)
        for host in self.hosts:
            self.records.setdefault(host.name, HostRecord())

    @property
    def limit(self) -> int:
        """How many hosts are worked on at once."""
        return self.stage.settings.parallelism

    def act_on(self, hosts: Sequence[Host]) -> None:
        """From now on the run acts on `hosts` (recover: the hosts its journal names)."""
        self.hosts = tuple(hosts)
        self.records = {h.name: HostRecord() for h in self.hosts}

    def also_talk_to(self, hosts: Sequence[Host]) -> None:
        """Hosts to connect to without releasing to them (directors, the migration host)."""
        names = {h.name for h in self.hosts + self.aux_hosts}
        self.aux_hosts += tuple(h for h in hosts if h.name not in names)

    def host_by_name(self, name: str) -> Host:
        return next(h for h in self.stage.hosts if h.name == name)

    def connect_all(self) -> None:
        """Open every connection (host keys verified); all must succeed, else nothing is changed."""
        def connect(host: Host) -> float:
            started = time.monotonic()
            self.backend.connect(host)
            return time.monotonic() - started

        outcomes = run_parallel(self.hosts + self.aux_hosts, connect, self.limit)
        failures = []
        for outcome in outcomes:
            if outcome.ok:
                self.bus.emit("host_connected", host=outcome.host.name, seconds=round(outcome.value, 3))
            else:
                failures.append(one_line(outcome.error))
                if outcome.host.name in self.records:
                    self.records[outcome.host.name].error = one_line(outcome.error)
        if failures:
            error = failures[0] if len(failures) == 1 else f"{len(failures)} hosts failed to connect: " + "; ".join(failures)
            kind = type(next(o.error for o in outcomes if not o.ok))
            raise (kind if issubclass(kind, DsasError) else RemoteError)(error + "; nothing was changed")

    def phase(self, name: str, hosts: Sequence[Host], lines_for: Callable[[Host], list[str]],
              stdin: Optional[Path] = None, strict: bool = True,
              stdin_for: Optional[Callable[[Host], Path]] = None) -> PhaseResults:
        """Run one script per host in parallel (stdin: one file for all, or `stdin_for` each host's);
        return name -> (ok, failing step, reason)."""
        started = time.monotonic()
        self.bus.emit("phase_started", phase=name, hosts=[h.name for h in hosts])

        def work(host: Host) -> ExecResult:
            lines = lines_for(host)
            if host.name in self.locked:  # every script to a locked host keeps its lock visibly alive
                lines = lockcmd.heartbeat_lines(host.paths, self.token) + lines
                self.beats[host.name] = time.monotonic()
            return self.backend.run(host, lines, stdin=stdin_for(host) if stdin_for else stdin, strict=strict)

        results = {}
        for outcome in run_parallel(hosts, work, self.limit):
            host, value = outcome.host.name, outcome.value
            if value is not None:
                self.outputs[host] = value
            ok = outcome.ok and value.ok
            step = last_step(value.markers) if value is not None else "connect"
            reason = "" if ok else outcome.reason()
            seconds = round(value.seconds, 3) if value is not None else 0.0
            self.records.setdefault(host, HostRecord()).seconds[name] = seconds
            self.bus.emit("host_phase", host=host, phase=name, status="ok" if ok else "failed",
                          step=step, seconds=seconds, message=reason or None)
            results[host] = (ok, step, reason)
        failed = [h for h, (ok, _, _) in results.items() if not ok]
        self.bus.emit("phase_finished", phase=name, status="failed" if failed else "ok",
                      seconds=round(time.monotonic() - started, 3), failed=failed)
        return results

    def raise_on_failure(self, phase: str, results: PhaseResults) -> None:
        """RemoteError naming every host of `results` that failed, and where (its record keeps why)."""
        failed = [(h, step, reason) for h, (ok, step, reason) in results.items() if not ok]
        if failed:
            for host, _, reason in failed:
                self.records.setdefault(host, HostRecord()).error = reason
            raise RemoteError("; ".join(f"{h}: {phase} failed at step '{step}': {reason}" for h, step, reason in failed))

    def run_phase(self, name: str, hosts: Sequence[Host], lines_for: Callable[[Host], list[str]],
                  stdin: Optional[Path] = None, stdin_for: Optional[Callable[[Host], Path]] = None) -> None:
        """`phase`, raising if any host failed."""
        self.raise_on_failure(name, self.phase(name, hosts, lines_for, stdin=stdin, stdin_for=stdin_for))

    def run_local_hooks(self, when: str, phase: str, env: dict[str, str]) -> None:
        """The stage's local hooks for `when`_`phase`, on this controller; the first failure raises."""
        for name, command in local_hooks(self.stage, when, phase):
            inherited = {k: v for k, v in os.environ.items()
                         if not k.startswith(("DSAS_SSH_", "DSAS_KNOWN_HOSTS"))}  # secrets stay with dsas
            full_env = {**inherited, **env, "DSAS_PHASE": f"{when}_{phase}"}
            completed = subprocess.run(command, shell=True, cwd=self.stage.project_dir, env=full_env,
                                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
            status = "ok" if completed.returncode == 0 else "failed"
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] if completed.returncode else []
            self.bus.emit("hook", phase=phase, name=name, where="local", status=status,
                          message=tail[0] if tail else None)
            if completed.returncode != 0:
                raise RemoteError(f"local hook {name} `{command}` failed with exit {completed.returncode}"
                                  + (f": {tail[0]}" if tail else ""))

    def run_local_hooks_quietly(self, when: str, phase: str, env: dict[str, str]) -> None:
        """Hooks after the point of no return: a failure is a warning, not a rollback."""
        try:
            self.run_local_hooks(when, phase, env)
        except DsasError as exc:
            self.bus.emit("warning", message=str(exc))

    def hook_env(self, release_id: str, revision: str) -> dict[str, str]:
        return {"DSAS_STAGE": self.stage.name, "DSAS_RELEASE": release_id, "DSAS_REVISION": revision,
                "DSAS_HOSTS": ",".join(h.name for h in self.hosts), "DSAS_PROJECT": str(self.stage.project_dir)}

    def log_entry(self, event: str, **fields: str) -> LogEntry:
        """A revisions.log entry stamped now, by this operator, for this stage."""
        fields = {k: v for k, v in fields.items() if v}
        return LogEntry(self.stamp(), event, {**fields, "stage": self.stage.name, "by": operator()})

    def lock_owner(self, command: str, revision: str) -> lockcmd.LockOwner:
        """Who holds the stage lock while this run does: written into the lock's owner file."""
        return lockcmd.LockOwner(
            token=self.token, owner=operator(), controller=socket.gethostname(), pid=os.getpid(),
            stage=self.stage.name, since=self.stamp(), revision=revision, command=command)

    def stamp(self) -> str:
        return self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")

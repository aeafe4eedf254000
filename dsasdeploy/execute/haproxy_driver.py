"""The HAProxy pool driver: the runtime API over SSH on every lb host (drain, sessions 0, ready)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from ..commands.lb import haproxy
from ..config.schema import LbSettings
from ..errors import RemoteError, UsageError
from ..inventory import Host
from ..plan.drain import DrainRecord
from ..plan.rollout import capacity_refusal
from .director_calls import INTERRUPT_GRACE, DirectorCalls
from .lb_base import NoFleetJournal, NoMembership, PoolEnv
from .pool import run_parallel


class HaproxyDriver(NoFleetJournal, NoMembership):
    """HAProxy runtime API over SSH on every lb host: drain, wait sessions 0, ready."""

    what = "lb.driver haproxy"

    def __init__(self, env: PoolEnv, balancers: Sequence[Host], settings: LbSettings):
        self.env, self.balancers, self.settings = env, tuple(balancers), settings
        self.calls = DirectorCalls(env.backend, settings.command_timeout)
        if not self.balancers:
            raise UsageError("lb.driver is 'haproxy' but the stage has no host with role 'lb'")

    def _api(self, commands: list[str]) -> dict[str, str]:
        script = haproxy.api_script(self.settings.haproxy_socket, commands)
        answers, problems = {}, []
        for outcome in run_parallel(self.balancers, lambda b: self.calls.run(b, script), self.env.limit,
                                    grace=INTERRUPT_GRACE):
            if not outcome.ok or not outcome.value.ok:
                problems.append(f"{outcome.host.name}: HAProxy runtime API failed: "
                                f"{outcome.error or outcome.value.stderr_tail()}")
            else:
                answers[outcome.host.name] = outcome.value.stdout
        if problems:
            raise RemoteError("; ".join(problems))
        return answers

    def _command(self, commands: list[str]) -> None:
        """Runtime API commands that answer nothing on success; any answer is an error."""
        for balancer, answer in self._api(commands).items():
            if answer.strip():
                raise RemoteError(f"{balancer}: HAProxy refused `{'; '.join(commands)}`: {answer.strip()[:200]}")

    def _await_status(self, hosts: list[str], wanted: Callable[[str], bool], what: str) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout
        while True:
            wrong = [f"{h}@{b}: {rows.get(h, {}).get('status', 'missing')}" for b, rows in self._rows().items()
                     for h in hosts if not wanted(rows.get(h, {}).get("status", ""))]
            if not wrong:
                return
            if time.monotonic() >= deadline:
                raise RemoteError(f"HAProxy did not show {what}: {', '.join(wrong)}")
            time.sleep(self.settings.poll_interval)

    def _rows(self) -> dict[str, dict[str, dict[str, str]]]:
        return {name: haproxy.server_rows(haproxy.parse_show_stat(text), self.settings.haproxy_backend)
                for name, text in self._api(["show stat"]).items()}

    def preflight(self, hosts: Sequence[Host]) -> None:
        missing = [f"{h.name}@{b}" for b, rows in self._rows().items() for h in hosts if h.name not in rows]
        if missing:
            raise RemoteError(f"not servers of backend {self.settings.haproxy_backend}: {', '.join(missing)}")

    def plan_drain(self, batch: Sequence[Host], cap: int, exempt: frozenset = frozenset()) -> list[DrainRecord]:
        problems = []
        for balancer, rows in self._rows().items():
            weights = {name: 1 if haproxy.in_service(row) else 0 for name, row in rows.items()}
            refusal = capacity_refusal(f"{self.settings.haproxy_backend} on {balancer}", weights,
                                       [h.name for h in batch], cap, exempt)
            if refusal:
                problems.append(refusal)
            for name, status in haproxy.taken_out(rows, [h.name for h in batch]).items():
                problems.append(f"{name} is {status} on {balancer}: taken out by hand or by an interrupted run? "
                                f"Set it ready (or run `dsas recover {self.env.stage_name}`) first; dsas will not "
                                f"put a server into service that it did not take out")
        if problems:
            raise RemoteError("capacity guard: " + "; ".join(problems))
        return [DrainRecord(h.name, b.name, self.settings.haproxy_backend) for h in batch for b in self.balancers]

    def drain(self, records: list[DrainRecord]) -> None:
        hosts = sorted({r.host for r in records})
        self._command([haproxy.set_state(self.settings.haproxy_backend, h, "drain") for h in hosts])
        self._await_status(hosts, lambda status: status.startswith(("DRAIN", "MAINT")), "DRAIN")
        for host in hosts:
            self.env.bus.emit("lb", host=host, status="drained", directors=[b.name for b in self.balancers])

    def wait_drained(self, batch: Sequence[Host]) -> None:
        """Until no balancer has a current or queued session on the batch's servers."""
        started = time.monotonic()
        deadline = started + self.settings.drain_timeout
        while True:
            busy = {f"{h.name}@{b}": haproxy.sessions(rows[h.name]) for b, rows in self._rows().items()
                    for h in batch if h.name in rows and haproxy.sessions(rows[h.name])}
            if not busy:
                self.env.bus.emit("lb", status="drain_complete", hosts=sorted(h.name for h in batch),
                                  seconds=round(time.monotonic() - started, 2))
                return
            if time.monotonic() >= deadline:
                if self.settings.on_drain_timeout == "proceed":
                    return
                raise RemoteError(f"drain did not finish: sessions {busy}")
            time.sleep(self.settings.poll_interval)

    def restore(self, records: list[DrainRecord]) -> None:
        hosts = sorted({r.host for r in records})
        if hosts:
            self._command([haproxy.set_state(self.settings.haproxy_backend, h, "ready") for h in hosts])
            self._await_status(hosts, lambda status: not status.startswith(("DRAIN", "MAINT")), "the servers ready")
            for host in hosts:
                self.env.bus.emit("lb", host=host, status="restored", directors=[b.name for b in self.balancers])

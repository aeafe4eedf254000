"""The LVS pool driver: raw ipvsadm edits on every director (keepalived's is in keepalived_driver.py)."""

from __future__ import annotations

import time
from typing import Optional, Sequence

from ..commands.lb import lvs
from ..config.schema import LbSettings
from ..errors import RemoteError, UsageError
from ..inventory import Host
from ..plan.drain import DrainRecord
from ..plan.pool import active_connections, stranger_reals
from ..plan.rollout import capacity_refusal, count_of, ramp_weights
from .director_calls import INTERRUPT_GRACE, DirectorCalls
from .fleet_copy import FleetCopy
from .lb_base import PoolEnv
from .lvs_membership import LvsMembership
from .pool import run_parallel


def parsed_table(outcome, failure: str, unreadable: str):
    """((services, keepalived), None) from a director's read-back, or (None, a problem naming it)."""
    name = outcome.host.name
    if not outcome.ok or not outcome.value.ok:
        return None, f"{name}: {failure}: {outcome.error or outcome.value.stderr_tail()}"
    try:
        return lvs.parse_read(outcome.value.stdout), None
    except ValueError as exc:
        return None, f"{name}: {unreadable} ({exc})"


class LvsDriver:
    """ipvsadm over SSH on every director (hosts with role lb)."""

    def __init__(self, env: PoolEnv, directors: Sequence[Host], settings: LbSettings):
        self.env, self.directors, self.settings = env, tuple(directors), settings
        if not self.directors:
            raise UsageError("lb.driver is 'lvs' but the stage has no host with role 'lb'")
        self.calls = DirectorCalls(env.backend, settings.command_timeout)
        self.fleet = FleetCopy(env, self.directors, self.calls)
        self.members = LvsMembership(self)
        self.expire_quiescent: dict[str, Optional[int]] = {}
        self.last_read: dict[str, dict[str, lvs.VirtualService]] = {}  # each director's table after our last edit
        self.last_read_at = 0.0

    def live(self) -> tuple[Host, ...]:
        """The directors this run watches and edits (all of them: a raw edit must reach each)."""
        return self.directors

    def rs(self, host: Host) -> str:
        return f"{host.address}:{self.settings.real_port}"

    # ---- the journal's copy on the directors, and add-server's membership changes ---------
    def attach_journal(self, journal) -> None:
        self.fleet.journal = journal

    def ship_journal(self) -> None:
        self.fleet.ship()

    def fleet_unfinished(self, fresh_read: bool = False) -> Optional[tuple[str, list[dict]]]:
        if fresh_read:
            self.read_all(with_journal=True)
        return self.fleet.unfinished()

    def join_plan(self, host: Host, peers: Sequence[Host]) -> list[DrainRecord]:
        return self.members.join_plan(host, peers)

    def join(self, records: list[DrainRecord], steps: list[int]) -> None:
        self.members.join(records, steps)

    def leave(self, host: Host) -> list[str]:
        return self.members.leave(host)

    # ---- the pool -------------------------------------------------------------------------


    def read_all(self, with_journal: bool = False) -> dict[str, dict[str, lvs.VirtualService]]:
        """Every director's table, in one round trip each; any failure is an error (`with_journal`:
        the same round trip reads the director's copy of the journal too)."""
        tables, problems = self.read_tables(self.live(), with_journal)
        if problems:
            raise RemoteError("; ".join(problems.values()))
        self.last_read, self.last_read_at = tables, time.monotonic()  # plan_drain may use it for 2 s
        return tables

    def read_tables(self, directors: Sequence[Host], with_journal: bool = False
                    ) -> tuple[dict[str, dict[str, lvs.VirtualService]], dict[str, str]]:
        """(tables of the directors that answered, director -> problem of those that did not)."""
        extra = self.fleet.read_lines if with_journal else (lambda d: [])
        outcomes = run_parallel(directors, lambda d: self.calls.run(d, lvs.read_script() + extra(d)),
                                self.env.limit, grace=INTERRUPT_GRACE)
        tables, problems = {}, {}
        for outcome in outcomes:
            name = outcome.host.name
            parsed, problem = parsed_table(outcome, "cannot read the IPVS table", "unreadable ipvsadm output")
            if problem:
                problems[name] = problem
                continue
            services, keepalived = parsed
            if keepalived and self.settings.keepalived == "refuse":
                problems[name] = (f"{name}: keepalived manages IPVS here and would undo a raw ipvsadm edit; set "
                                f"lb.keepalived to 'maintenance_file' (check-driven drain with inhibit_on_failure) "
                                f"or 'raw'")
            tables[name] = services
            self.expire_quiescent[name] = lvs.parse_expire_quiescent_template(outcome.value.stdout)
            if with_journal:
                self.fleet.remember(name, outcome.value.stdout)
        return tables, problems

    def memberships(self, tables, host: Host) -> dict[str, list[lvs.VirtualService]]:
        rs = self.rs(host)
        return {d: [s for s in services.values() if rs in s.reals] for d, services in tables.items()}

    def preflight(self, hosts: Sequence[Host]) -> None:
        """Refuse before any change: unknown real servers, drifted directors, hash schedulers."""
        tables = self.read_all(with_journal=True)
        problems = self.unknown_reals(tables, hosts)
        for host in hosts:
            member = self.memberships(tables, host)
            views = {d: sorted((s.key, s.reals[self.rs(host)].method) for s in services)
                     for d, services in member.items()}
            for director, services in member.items():
                if not services:
                    problems.append(f"{host.name} ({self.rs(host)}) is not a real server of any virtual service "
                                    f"on {director}")
                for service in services:
                    refusal = service.drain_refusal()
                    if refusal:
                        problems.append(f"{director}: {refusal}")
            if len({tuple(v) for v in views.values()}) > 1:
                problems.append(f"{host.name}: the directors disagree about {self.rs(host)}: {views}")
        for director, services in tables.items():
            for service in services.values():
                if service.persistent and self.expire_quiescent.get(director) == 0:
                    self.env.bus.emit("warning", host=director, message=(
                        f"{service.key} is persistent ({service.persistent}s) and "
                        f"net.ipv4.vs.expire_quiescent_template is 0: clients with a template keep going to a "
                        f"drained server, so drains may run into drain_timeout; set it to 1"))
        if problems:
            raise RemoteError("; ".join(dict.fromkeys(problems)))

    def pool_problems(self, hosts: Sequence[Host]) -> list[str]:
        """For `dsas check`: real servers the stage does not list (the journal's copy is read too)."""
        return self.unknown_reals(self.read_all(with_journal=True), hosts)

    def unknown_reals(self, tables: dict[str, dict[str, lvs.VirtualService]], hosts: Sequence[Host]) -> list[str]:
        """Real servers in service in the pools of `hosts` that the stage does not know: refused (or
        warned about, lb.unknown_reals: warn), since dsas cannot tell what they serve."""
        found = stranger_reals(tables, {self.rs(h) for h in self.env.stage_hosts}, {self.rs(h) for h in hosts},
                               self.env.stage_name)
        if self.settings.unknown_reals != "warn":
            return [text for _, text in found]
        for director, text in found:
            self.env.bus.emit("warning", host=director, message=text)
        return []

    def fresh_tables(self, max_age: float = 2.0) -> dict[str, dict[str, lvs.VirtualService]]:
        """Every director's table: the read-back of our own last edit if it is seconds old and
        covers every director (nothing else ran in between), else a new read."""
        if set(self.last_read) == {d.name for d in self.live()} and time.monotonic() - self.last_read_at < max_age:
            return self.last_read
        return self.read_all()

    def plan_drain(self, batch: Sequence[Host], cap: int, exempt: frozenset = frozenset()) -> list[DrainRecord]:
        """Records of the weights to set to 0, from the live table; refused by the capacity guard
        (`exempt`: host names this run left out because they failed; they do not count against it)."""
        tables = self.fresh_tables()
        batch_rs = [self.rs(h) for h in batch]
        exempt_rs = frozenset(self.rs(h) for h in self.env.stage_hosts if h.name in exempt)
        records, problems = [], []
        for director, services in tables.items():
            for service in services.values():
                targets = [rs for rs in batch_rs if rs in service.reals]
                if not targets:
                    continue
                weights = {rs: real.weight for rs, real in service.reals.items()}
                # a percentage applies to THIS service's pool, never more than the stage-wide cap
                service_cap = min(cap, count_of(self.env.max_unavailable, len(weights)))
                refusal = capacity_refusal(f"{service.key} on {director}", weights, targets, service_cap,
                                           exempt_rs)
                if refusal:
                    problems.append(refusal)
                for host in batch:
                    real = service.reals.get(self.rs(host))
                    if real is not None and real.weight == 0:
                        problems.append(f"{host.name} ({real.address}) already has weight 0 in {service.key} on "
                                        f"{director}: drained by hand or by an interrupted run? Restore it (or run "
                                        f"`dsas recover {self.env.stage_name}`) first; dsas will not record 0 as "
                                        f"its original weight")
                    if real is not None:
                        records.append(DrainRecord(host.name, director, service.key, real.address, real.method,
                                                   real.weight, real.upper, real.lower))
        if problems:
            raise RemoteError("capacity guard: " + "; ".join(problems))
        return records

    def _apply(self, records: list[DrainRecord], weight_of) -> None:
        """Set weights on every director (one round trip each) and verify them."""
        by_director: dict[str, list[DrainRecord]] = {}
        for record in records:
            by_director.setdefault(record.director, []).append(record)
        directors = [d for d in self.directors if d.name in by_director]
        shipment = self.fleet.take()  # the journal's new records go first, in the same round trip

        def edit(director: Host):
            edits = []
            for r in by_director[director.name]:
                proto, address = r.service.split(" ", 1)
                service = lvs.VirtualService(proto, address, "")
                real = lvs.RealServer(r.real, r.method, r.weight, r.upper, r.lower)
                edits.append((service, real, weight_of(r)))
            return self.calls.run(director, self.fleet.lines(director, shipment) + lvs.set_weights_script(edits))

        problems = []
        self.last_read = {}
        self.last_read_at = time.monotonic()
        for outcome in run_parallel(directors, edit, self.env.limit, grace=INTERRUPT_GRACE):
            name = outcome.host.name
            parsed, problem = parsed_table(outcome, "ipvsadm edit failed", "unreadable ipvsadm output after the edit")
            if problem:
                problems.append(problem)
                continue
            services = parsed[0]
            self.last_read[name] = services
            for r in by_director[name]:
                real = services.get(r.service, lvs.VirtualService("", "", "")).reals.get(r.real)
                if real is None:
                    problems.append(f"{name}: {r.real} vanished from {r.service}")
                elif real.weight != weight_of(r) or real.method != r.method:
                    problems.append(f"{name}: {r.real} in {r.service} reads {real.method} weight "
                                    f"{real.weight}, expected {r.method} weight {weight_of(r)}")
        if problems:
            self.last_read = {}
            raise RemoteError("; ".join(problems))
        self.last_read_at = time.monotonic()

    def drain(self, records: list[DrainRecord]) -> None:
        self._apply(records, lambda r: 0)
        for host in sorted({r.host for r in records}):
            self.env.bus.emit("lb", host=host, status="drained",
                              directors=sorted({r.director for r in records if r.host == host}))

    def wait_drained(self, batch: Sequence[Host]) -> None:
        """Until ActiveConn is 0 for the batch on every director (InActConn is TIME_WAIT: ignored)."""
        deadline = time.monotonic() + self.settings.drain_timeout
        started = time.monotonic()
        targets = {self.rs(h): h.name for h in batch}
        # the drain's own read-back is the first poll (one round trip less per batch)
        tables = self.last_read if set(self.last_read) == {d.name for d in self.live()} else None
        while True:
            tables, current = None, tables or self.read_all()
            active = active_connections(current, targets)
            if not active:
                self.env.bus.emit("lb", status="drain_complete", hosts=sorted(targets.values()),
                                  seconds=round(time.monotonic() - started, 2))
                return
            if time.monotonic() >= deadline:
                left = ", ".join(f"{k}: {v}" for k, v in sorted(active.items()))
                if self.settings.on_drain_timeout == "proceed":
                    self.env.bus.emit("warning", message=f"drain timeout after {self.settings.drain_timeout:g}s; "
                                  f"proceeding, cutting active connections ({left})")
                    return
                raise RemoteError(f"drain did not finish within {self.settings.drain_timeout:g}s; "
                                  f"active connections: {left}")
            time.sleep(self.settings.poll_interval)

    def restore(self, records: list[DrainRecord], steps: Optional[list[int]] = None) -> None:
        """Original weights back (through the ramp steps), verified on every director."""
        if not records:
            return
        ramps = {r: ramp_weights(r.weight, steps or self.settings.restore_steps) for r in records}
        steps = max(len(v) for v in ramps.values())
        for step in range(steps):
            self._apply(records, lambda r: ramps[r][min(step, len(ramps[r]) - 1)])
            if step < steps - 1:
                time.sleep(self.settings.ramp_interval)
        for host in sorted({r.host for r in records}):
            self.env.bus.emit("lb", host=host, status="restored",
                              weights={r.where: r.weight for r in records if r.host == host})

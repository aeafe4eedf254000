"""Pool drivers: take hosts out of the load balancer and put them back, on EVERY director.

Each driver turns the pure builders of commands/lb into round trips on the
directors, verifies what it did by reading the state back, and describes every
change as a record the journal keeps before the change is made.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Protocol, Sequence

from ..commands import fleet_journal as fleet
from ..commands.lb import haproxy, lvs
from ..config.schema import LbSettings
from ..errors import RemoteError, UsageError
from ..inventory import Host
from ..plan.provision import pick_weight
from ..plan.rollout import capacity_refusal, count_of, ramp_weights
from .director_calls import INTERRUPT_GRACE, DirectorCalls
from .pool import run_parallel


class PoolDriver(Protocol):
    def preflight(self, hosts: Sequence[Host]) -> None: ...

    def plan_drain(self, batch: Sequence[Host], cap: int, exempt: frozenset = frozenset()) -> list[dict]: ...

    def drain(self, records: list[dict]) -> None: ...

    def wait_drained(self, batch: Sequence[Host]) -> None: ...

    def restore(self, records: list[dict]) -> None: ...

    def attach_journal(self, journal) -> None: ...

    def ship_journal(self) -> None: ...

    def fleet_unfinished(self, fresh_read: bool = False) -> Optional[tuple[str, list[dict]]]: ...

    def pool_problems(self, hosts: Sequence[Host]) -> list[str]: ...


class NoFleetJournal:
    """Drivers without a copy of the journal on the balancers (nothing to ship or read)."""

    def attach_journal(self, journal) -> None:
        return None

    def ship_journal(self) -> None:
        return None

    def fleet_unfinished(self, fresh_read: bool = False) -> Optional[tuple[str, list[dict]]]:
        return None

    def pool_problems(self, hosts: Sequence[Host]) -> list[str]:
        return []


class NullDriver(NoFleetJournal):
    """lb.driver none: a plain rolling restart, nothing to drain."""

    def preflight(self, hosts):
        return None

    def plan_drain(self, batch, cap, exempt=frozenset()):
        return []

    def drain(self, records):
        return None

    def wait_drained(self, batch):
        return None

    def restore(self, records):
        return None


class LvsDriver:
    """ipvsadm over SSH on every director (hosts with role lb)."""

    def __init__(self, flow, directors: Sequence[Host], settings: LbSettings):
        self.flow, self.directors, self.settings = flow, tuple(directors), settings
        self.calls = DirectorCalls(flow.backend, settings.command_timeout)
        self.journal = None  # the run's journal, copied to every director with each edit
        self.fleet_copies: dict[str, list[dict]] = {}  # director -> its copy, as the last read found it
        self.expire_quiescent: dict[str, Optional[int]] = {}
        if not self.directors:
            raise UsageError("lb.driver is 'lvs' but the stage has no host with role 'lb'")

    def rs(self, host: Host) -> str:
        return f"{host.address}:{self.settings.real_port}"

    # ---- the journal's copy on the directors (commands/fleet_journal.py) -----------------
    def attach_journal(self, journal) -> None:
        self.journal = journal

    def _journal_lines(self, director: Host, shipment: tuple[list[str], bool]) -> list[str]:
        records, fresh = shipment
        return fleet.append_lines(director.deploy_to, self.flow.stage.name, records, fresh)

    def _take_shipment(self) -> tuple[list[str], bool]:
        return self.journal.take_unshipped() if self.journal is not None else ([], False)

    def ship_journal(self) -> None:
        """Copy the records no edit carried yet (e.g. `end`) to every director; best effort."""
        shipment = self._take_shipment()
        if not shipment[0]:
            return
        for outcome in run_parallel(self.directors, lambda d: self.calls.run(d, self._journal_lines(d, shipment)),
                                    self.flow.limit, grace=INTERRUPT_GRACE):
            if not outcome.ok or not outcome.value.ok:
                reason = outcome.error or outcome.value.stderr_tail()
                self.flow.bus.emit("warning", host=outcome.host.name,
                                   message=f"could not copy the journal's new records to this director: {reason}")

    def fleet_unfinished(self, fresh_read: bool = False) -> Optional[tuple[str, list[dict]]]:
        """(director, records) of an unfinished rolling release found on a director, else None
        (the longest copy wins: a silent director may have missed the last records)."""
        if fresh_read:
            self.read_all(with_journal=True)
        found = [(d, fleet.unfinished(records)) for d, records in sorted(self.fleet_copies.items())]
        found = [(d, run) for d, run in found if run]
        return max(found, key=lambda item: len(item[1])) if found else None

    def read_all(self, with_journal: bool = False) -> dict[str, dict[str, lvs.VirtualService]]:
        """Every director's table, in one round trip each; any failure is an error (`with_journal`:
        the same round trip reads the director's copy of the journal too)."""
        extra = (lambda d: fleet.read_lines(d.deploy_to, self.flow.stage.name)) if with_journal else (lambda d: [])
        outcomes = run_parallel(self.directors, lambda d: self.calls.run(d, lvs.read_script() + extra(d)),
                                self.flow.limit, grace=INTERRUPT_GRACE)
        tables, problems = {}, []
        for outcome in outcomes:
            name = outcome.host.name
            if not outcome.ok or not outcome.value.ok:
                reason = outcome.error or outcome.value.stderr_tail()
                problems.append(f"{name}: cannot read the IPVS table: {reason}")
                continue
            try:
                services, keepalived = lvs.parse_read(outcome.value.stdout)
            except ValueError as exc:
                problems.append(f"{name}: unreadable ipvsadm output ({exc})")
                continue
            if keepalived and self.settings.keepalived == "refuse":
                problems.append(f"{name}: keepalived manages IPVS here and would undo a raw ipvsadm edit; set "
                                f"lb.keepalived to 'maintenance_file' (check-driven drain with inhibit_on_failure) "
                                f"or 'raw'")
            tables[name] = services
            self.expire_quiescent[name] = lvs.parse_expire_quiescent_template(outcome.value.stdout)
            if with_journal:
                self.fleet_copies[name] = fleet.parse(outcome.value.stdout)
        if problems:
            raise RemoteError("; ".join(problems))
        return tables

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
                    self.flow.bus.emit("warning", host=director, message=(
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
        known = {self.rs(h) for h in self.flow.stage.hosts}
        ours = {self.rs(h) for h in hosts}
        problems = []
        for director, services in tables.items():
            for service in services.values():
                if not ours & set(service.reals):
                    continue
                strangers = sorted(rs for rs, real in service.reals.items() if rs not in known and real.weight > 0)
                if not strangers:
                    continue
                text = (f"{director}: {service.key} also sends traffic to {len(strangers)} real server(s) stage "
                        f"'{self.flow.stage.name}' does not list ({', '.join(strangers[:5])}"
                        f"{', ...' if len(strangers) > 5 else ''}): their release and health are unknown; add "
                        f"them to the stage, take them out of the pool, or set lb.unknown_reals: warn")
                if self.settings.unknown_reals == "warn":
                    self.flow.bus.emit("warning", host=director, message=text)
                else:
                    problems.append(text)
        return problems

    def fresh_tables(self, max_age: float = 2.0) -> dict[str, dict[str, lvs.VirtualService]]:
        """Every director's table: the read-back of our own last edit if it is seconds old and
        covers every director (nothing else ran in between), else a new read."""
        last = getattr(self, "last_read", {})
        if set(last) == {d.name for d in self.directors} and time.monotonic() - self.last_read_at < max_age:
            return last
        return self.read_all()

    def plan_drain(self, batch: Sequence[Host], cap: int, exempt: frozenset = frozenset()) -> list[dict]:
        """Records of the weights to set to 0, from the live table; refused by the capacity guard
        (`exempt`: host names this run left out because they failed; they do not count against it)."""
        tables = self.fresh_tables()
        batch_rs = [self.rs(h) for h in batch]
        exempt_rs = frozenset(self.rs(h) for h in self.flow.stage.hosts if h.name in exempt)
        records, problems = [], []
        for director, services in tables.items():
            for service in services.values():
                targets = [rs for rs in batch_rs if rs in service.reals]
                if not targets:
                    continue
                weights = {rs: real.weight for rs, real in service.reals.items()}
                # a percentage applies to THIS service's pool, never more than the stage-wide cap
                service_cap = min(cap, count_of(self.flow.stage.settings.rollout.max_unavailable, len(weights)))
                refusal = capacity_refusal(f"{service.key} on {director}", weights, targets, service_cap,
                                           exempt_rs)
                if refusal:
                    problems.append(refusal)
                for host in batch:
                    real = service.reals.get(self.rs(host))
                    if real is not None and real.weight == 0:
                        problems.append(f"{host.name} ({real.address}) already has weight 0 in {service.key} on "
                                        f"{director}: drained by hand or by an interrupted run? Restore it (or run "
                                        f"`dsas recover {self.flow.stage.name}`) first; dsas will not record 0 as "
                                        f"its original weight")
                    if real is not None:
                        records.append({"host": host.name, "director": director, "service": service.key,
                                        "real": real.address, "method": real.method, "weight": real.weight,
                                        "upper": real.upper, "lower": real.lower})
        if problems:
            raise RemoteError("capacity guard: " + "; ".join(problems))
        return records

    def _apply(self, records: list[dict], weight_of) -> None:
        """Set weights on every director (one round trip each) and verify them."""
        by_director: dict[str, list[dict]] = {}
        for record in records:
            by_director.setdefault(record["director"], []).append(record)
        directors = [d for d in self.directors if d.name in by_director]
        shipment = self._take_shipment()  # the journal's new records go first, in the same round trip

        def edit(director: Host):
            edits = []
            for r in by_director[director.name]:
                proto, address = r["service"].split(" ", 1)
                service = lvs.VirtualService(proto, address, "")
                real = lvs.RealServer(r["real"], r["method"], r["weight"], r["upper"], r["lower"])
                edits.append((service, real, weight_of(r)))
            return self.calls.run(director, self._journal_lines(director, shipment) + lvs.set_weights_script(edits))

        problems = []
        self.last_read: dict[str, dict[str, lvs.VirtualService]] = {}
        self.last_read_at = time.monotonic()
        for outcome in run_parallel(directors, edit, self.flow.limit, grace=INTERRUPT_GRACE):
            name = outcome.host.name
            if not outcome.ok or not outcome.value.ok:
                reason = outcome.error or outcome.value.stderr_tail()
                problems.append(f"{name}: ipvsadm edit failed: {reason}")
                continue
            try:
                services, _ = lvs.parse_read(outcome.value.stdout)
            except ValueError as exc:
                problems.append(f"{name}: unreadable ipvsadm output after the edit ({exc})")
                continue
            self.last_read[name] = services
            for r in by_director[name]:
                real = services.get(r["service"], lvs.VirtualService("", "", "")).reals.get(r["real"])
                if real is None:
                    problems.append(f"{name}: {r['real']} vanished from {r['service']}")
                elif real.weight != weight_of(r) or real.method != r["method"]:
                    problems.append(f"{name}: {r['real']} in {r['service']} reads {real.method} weight "
                                    f"{real.weight}, expected {r['method']} weight {weight_of(r)}")
        if problems:
            self.last_read = {}
            raise RemoteError("; ".join(problems))
        self.last_read_at = time.monotonic()

    def drain(self, records: list[dict]) -> None:
        self._apply(records, lambda r: 0)
        for host in sorted({r["host"] for r in records}):
            self.flow.bus.emit("lb", host=host, status="drained",
                               directors=sorted({r["director"] for r in records if r["host"] == host}))

    def wait_drained(self, batch: Sequence[Host]) -> None:
        """Until ActiveConn is 0 for the batch on every director (InActConn is TIME_WAIT: ignored)."""
        deadline = time.monotonic() + self.settings.drain_timeout
        started = time.monotonic()
        targets = {self.rs(h): h.name for h in batch}
        # the drain's own read-back is the first poll (one round trip less per batch)
        fresh = getattr(self, "last_read", {})
        tables = fresh if set(fresh) == {d.name for d in self.directors} else None
        while True:
            active: dict[str, int] = {}
            tables, current = None, tables or self.read_all()
            for director, services in current.items():
                for service in services.values():
                    for rs, name in targets.items():
                        real = service.reals.get(rs)
                        if real is not None and real.active:
                            active[f"{name}@{director}"] = active.get(f"{name}@{director}", 0) + real.active
            if not active:
                self.flow.bus.emit("lb", status="drain_complete", hosts=sorted(targets.values()),
                                   seconds=round(time.monotonic() - started, 2))
                return
            if time.monotonic() >= deadline:
                left = ", ".join(f"{k}: {v}" for k, v in sorted(active.items()))
                if self.settings.on_drain_timeout == "proceed":
                    self.flow.bus.emit("warning", message=f"drain timeout after {self.settings.drain_timeout:g}s; "
                                       f"proceeding, cutting active connections ({left})")
                    return
                raise RemoteError(f"drain did not finish within {self.settings.drain_timeout:g}s; "
                                  f"active connections: {left}")
            time.sleep(self.settings.poll_interval)

    def restore(self, records: list[dict], steps: Optional[list[int]] = None) -> None:
        """Original weights back (through the ramp steps), verified on every director."""
        if not records:
            return
        ramps = {id(r): ramp_weights(r["weight"], steps or self.settings.restore_steps) for r in records}
        steps = max(len(v) for v in ramps.values())
        for step in range(steps):
            self._apply(records, lambda r: ramps[id(r)][min(step, len(ramps[id(r)]) - 1)])
            if step < steps - 1:
                time.sleep(self.settings.ramp_interval)
        for host in sorted({r["host"] for r in records}):
            self.flow.bus.emit("lb", host=host, status="restored",
                               weights={f"{r['director']} {r['service']}": r["weight"] for r in records
                                        if r["host"] == host})


    # ---- add-server: a new real server joins (weight 0, then ramped) or leaves ------------
    def join_plan(self, host: Host, peers: Sequence[Host]) -> list[dict]:
        """One record per (director, virtual service) that serves a peer of `host`: the service the
        new host joins, with the peers' forwarding method and their most common weight."""
        tables = self.read_all()
        rs, peer_rs = self.rs(host), {self.rs(p) for p in peers}
        records, problems = [], []
        for director, services in tables.items():
            for service in services.values():
                present = [real for address, real in service.reals.items() if address in peer_rs]
                if not present:
                    continue
                methods = sorted({real.method for real in present})
                if len(methods) > 1:
                    problems.append(f"{service.key} on {director}: the peers use different forwarding methods "
                                    f"({', '.join(methods)}); add {rs} by hand")
                    continue
                records.append({"host": host.name, "director": director, "service": service.key, "real": rs,
                                "method": methods[0], "weight": pick_weight([r.weight for r in present]),
                                "upper": 0, "lower": 0, "present": rs in service.reals})
        if not records and not problems:
            problems.append(f"no virtual service on {', '.join(d.name for d in self.directors)} serves a peer of "
                            f"{host.name} ({', '.join(p.name for p in peers) or 'none'}): nothing to join")
        if problems:
            raise RemoteError("; ".join(problems))
        return records

    def _membership(self, changes: dict[str, list[list[str]]]) -> dict[str, dict[str, lvs.VirtualService]]:
        directors = [d for d in self.directors if changes.get(d.name)]

        def change(director: Host) -> dict[str, lvs.VirtualService]:
            result = self.calls.run(director, lvs.membership_script(changes[director.name]))
            if not result.ok:
                raise RemoteError(f"ipvsadm failed: {result.stderr_tail()}")
            return lvs.parse_read(result.stdout)[0]  # a ValueError here is reported like any failure

        tables, problems = {}, []
        for outcome in run_parallel(directors, change, self.flow.limit, grace=INTERRUPT_GRACE):
            if not outcome.ok:
                problems.append(outcome.error_text())
                continue
            tables[outcome.host.name] = outcome.value
        if problems:
            raise RemoteError("; ".join(problems))
        return tables

    def join(self, records: list[dict], steps: list[int]) -> None:
        """Add the real server at weight 0 where it is missing (verified), then ramp it up."""
        changes: dict[str, list[list[str]]] = {}
        for r in records:
            if not r["present"]:
                changes.setdefault(r["director"], []).append(lvs.add_real_argv(r["service"], r["real"], r["method"], 0))
        tables = self._membership(changes)
        for r in records:
            if r["director"] in tables:
                real = tables[r["director"]].get(r["service"], lvs.VirtualService("", "", "")).reals.get(r["real"])
                if real is None or real.method != r["method"]:
                    raise RemoteError(f"{r['director']}: {r['real']} is not in {r['service']} as {r['method']} "
                                      f"after ipvsadm -a")
        self.flow.bus.emit("lb", host=records[0]["host"], status="joined",
                           directors=sorted({r["director"] for r in records}))
        self.restore(records, steps)

    def leave(self, host: Host) -> list[str]:
        """Remove `host` from every virtual service on every director, each director on its own
        (one unreachable director does not keep the others from being cleaned); verified.
        Returns where it was; raises naming the directors where it may still be."""
        rs = self.rs(host)

        def one(director: Host) -> list[str]:
            read = self.calls.run(director, lvs.read_script())
            if not read.ok:
                raise RemoteError(f"cannot read the IPVS table: {read.stderr_tail()}")
            keys = [s.key for s in lvs.parse_read(read.stdout)[0].values() if rs in s.reals]
            if not keys:
                return []
            done = self.calls.run(director, lvs.membership_script(
                [lvs.delete_real_argv(key, rs) for key in keys]))
            if not done.ok:
                raise RemoteError(f"ipvsadm -d failed: {done.stderr_tail()}")
            still = [s.key for s in lvs.parse_read(done.stdout)[0].values() if rs in s.reals]
            if still:
                raise RemoteError(f"{rs} is still a real server in {', '.join(still)} after ipvsadm -d")
            return keys

        where, problems = [], []
        for outcome in run_parallel(self.directors, one, self.flow.limit, grace=INTERRUPT_GRACE):
            if outcome.ok:
                where += [f"{outcome.host.name} {key}" for key in outcome.value]
            else:
                problems.append(outcome.error_text())
        if where:
            self.flow.bus.emit("lb", host=host.name, status="left",
                               directors=sorted({w.split(" ", 1)[0] for w in where}))
        if problems:
            raise RemoteError(f"{rs} may still be in the pool: " + "; ".join(problems))
        return where


class MaintenanceFileDriver(LvsDriver):
    """keepalived owns IPVS: drain by creating a maintenance file the host's health check
    fails on (keepalived with inhibit_on_failure then sets weight 0); watch the directors."""

    def _touch(self, records: list[dict], create: bool) -> None:
        names = sorted({r["host"] for r in records})
        hosts = [h for h in self.flow.stage.hosts if h.name in names]
        path = self.settings.maintenance_file
        from ..commands.base import q

        line = f"mkdir -p \"$(dirname {q(path)})\" && touch {q(path)}" if create else f"rm -f {q(path)}"
        for outcome in run_parallel(hosts, lambda h: self.flow.backend.run(h, [line]), self.flow.limit):
            if not outcome.ok or not outcome.value.ok:
                raise RemoteError(f"{outcome.host.name}: cannot {'create' if create else 'remove'} {path}")

    def _await(self, records: list[dict], weight_of) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout
        while True:
            tables = self.read_all()
            pending = [r for r in records
                       if tables.get(r["director"], {}).get(r["service"]) is None
                       or tables[r["director"]][r["service"]].reals.get(r["real"]) is None
                       or tables[r["director"]][r["service"]].reals[r["real"]].weight != weight_of(r)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise RemoteError("keepalived did not apply the expected weights within "
                                  f"{self.settings.drain_timeout:g}s: " +
                                  ", ".join(f"{r['real']}@{r['director']}" for r in pending))
            time.sleep(self.settings.poll_interval)

    def drain(self, records: list[dict]) -> None:
        self.ship_journal()  # no director edit carries it here: the copy goes first, on its own
        self._touch(records, True)
        self._await(records, lambda r: 0)

    def restore(self, records: list[dict]) -> None:
        if records:
            self._touch(records, False)
            self._await(records, lambda r: r["weight"])


class HaproxyDriver(NoFleetJournal):
    """HAProxy runtime API over SSH on every lb host: drain, wait sessions 0, ready."""

    def __init__(self, flow, balancers: Sequence[Host], settings: LbSettings):
        self.flow, self.balancers, self.settings = flow, tuple(balancers), settings
        self.calls = DirectorCalls(flow.backend, settings.command_timeout)
        if not self.balancers:
            raise UsageError("lb.driver is 'haproxy' but the stage has no host with role 'lb'")

    def _api(self, commands: list[str]) -> dict[str, str]:
        script = haproxy.api_script(self.settings.haproxy_socket, commands)
        answers, problems = {}, []
        for outcome in run_parallel(self.balancers, lambda b: self.calls.run(b, script), self.flow.limit,
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

    def plan_drain(self, batch: Sequence[Host], cap: int, exempt: frozenset = frozenset()) -> list[dict]:
        problems = []
        for balancer, rows in self._rows().items():
            weights = {name: 1 if haproxy.in_service(row) else 0 for name, row in rows.items()}
            refusal = capacity_refusal(f"{self.settings.haproxy_backend} on {balancer}", weights,
                                       [h.name for h in batch], cap, exempt)
            if refusal:
                problems.append(refusal)
            for name, status in haproxy.taken_out(rows, [h.name for h in batch]).items():
                problems.append(f"{name} is {status} on {balancer}: taken out by hand or by an interrupted run? "
                                f"Set it ready (or run `dsas recover {self.flow.stage.name}`) first; dsas will not "
                                f"put a server into service that it did not take out")
        if problems:
            raise RemoteError("capacity guard: " + "; ".join(problems))
        return [{"host": h.name, "director": b.name, "service": self.settings.haproxy_backend}
                for h in batch for b in self.balancers]

    def drain(self, records: list[dict]) -> None:
        hosts = sorted({r["host"] for r in records})
        self._command([haproxy.set_state(self.settings.haproxy_backend, h, "drain") for h in hosts])
        self._await_status(hosts, lambda status: status.startswith(("DRAIN", "MAINT")), "DRAIN")

    def wait_drained(self, batch: Sequence[Host]) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout
        while True:
            busy = {f"{h.name}@{b}": haproxy.sessions(rows[h.name]) for b, rows in self._rows().items()
                    for h in batch if h.name in rows and haproxy.sessions(rows[h.name])}
            if not busy:
                return
            if time.monotonic() >= deadline:
                if self.settings.on_drain_timeout == "proceed":
                    return
                raise RemoteError(f"drain did not finish: sessions {busy}")
            time.sleep(self.settings.poll_interval)

    def restore(self, records: list[dict]) -> None:
        hosts = sorted({r["host"] for r in records})
        if hosts:
            self._command([haproxy.set_state(self.settings.haproxy_backend, h, "ready") for h in hosts])
            self._await_status(hosts, lambda status: not status.startswith(("DRAIN", "MAINT")), "the servers ready")


def make_driver(flow, settings: Optional[LbSettings]) -> PoolDriver:
    """The driver the stage asks for (no lb section: none)."""
    if settings is None or settings.driver == "none":
        return NullDriver()
    balancers = flow.stage.hosts_with_role("lb")
    if settings.driver == "haproxy":
        return HaproxyDriver(flow, balancers, settings)
    if settings.keepalived == "maintenance_file":
        return MaintenanceFileDriver(flow, balancers, settings)
    return LvsDriver(flow, balancers, settings)

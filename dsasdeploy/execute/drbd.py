"""DRBD status and planned switchover over SSH, safe by default.

Switchover: pre-checks on BOTH nodes (refuse on any doubt), then the steps
    stop services -> unmount -> demote -> drop service IP      (on the primary)
    promote -> mount -> add service IP + gratuitous ARP -> start services -> health   (on the peer)
each one round trip that re-reads what it changed, each timed and reported. A failed
step walks back in reverse to the original primary (the peer is demoted before the
original primary is promoted again, Connected or not: it holds the newest data); if that
fails too: exit 4 with the exact state of both nodes and what a human must do. Never `--force`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..commands import drbd as cmd
from ..commands import fleet_journal as fleet
from ..commands import lock as lockcmd
from ..config.schema import DrbdResource
from ..errors import DsasError, IncompleteRestore, LockHeld, RemoteError, UsageError
from ..inventory import Host
from ..status import ExitStatus
from .context import FlowResult, RunContext
from .journal import Journal, journal_path
from .pool import run_parallel, signals_deferred, signals_held

Builder = Callable[[DrbdResource], list[str]]


@dataclass(frozen=True)
class Step:
    name: str
    on: str  # "source" | "target"
    build: Optional[Builder]  # None: the health check, run from the controller
    undo: Optional[Builder]


STEPS = (
    Step("stop services", "source", cmd.stop_services, cmd.start_services),
    Step("unmount", "source", cmd.unmount, cmd.mount),
    # undone by re-promoting the original primary even when disconnected (see cmd.reclaim)
    Step("demote", "source", cmd.demote, cmd.reclaim),
    Step("drop service IP", "source", cmd.drop_ip, cmd.add_ip),
    Step("promote", "target", cmd.promote, cmd.demote),
    Step("mount", "target", cmd.mount, cmd.unmount),
    Step("add service IP", "target", cmd.add_ip, cmd.drop_ip),
    Step("start services", "target", cmd.start_services, cmd.stop_services),
    Step("health", "target", None, None),
)


def pick_resource(resources: list[DrbdResource], name: Optional[str], stage: str) -> DrbdResource:
    if not resources:
        raise UsageError(f"stage '{stage}' declares no DRBD resource (key drbd:)")
    if name is None:
        if len(resources) > 1:
            raise UsageError(f"stage '{stage}' has several DRBD resources; choose one with --resource "
                             f"({', '.join(r.name for r in resources)})")
        return resources[0]
    for resource in resources:
        if resource.name == name:
            return resource
    raise UsageError(f"--resource: no DRBD resource '{name}' in stage '{stage}' "
                     f"({', '.join(r.name for r in resources)})")


def _roles_text(states) -> str:
    return ", ".join(f"{name}={state.role if state else 'unreachable'}" for name, state in states.items())


class DrbdFlow:
    """`dsas drbd status|switchover|recover` for one resource, on a run's context (connections, events)."""

    def __init__(self, ctx: RunContext, resource: DrbdResource):
        self.ctx, self.resource = ctx, resource
        by_name = {h.name: h for h in ctx.stage.hosts}
        self.nodes = [by_name[n] for n in resource.nodes]
        # the switchover takes the stage lock on both nodes and every release host: no deploy meanwhile
        names = {h.name for h in self.nodes}
        self.lock_hosts = list(self.nodes) + [h for h in ctx.stage.release_hosts() if h.name not in names]
        # the switchover's journal: here, and a copy on each node (the record of a step travels
        # with the step's own script, to the node it runs on): `dsas drbd recover` reads them
        self.journal_name = f"drbd-{ctx.stage.name}-{resource.name}"
        self.journal = Journal(journal_path(ctx.stage.project_dir, self.journal_name))
        self.node_copies: dict[str, list[dict]] = {}  # node -> its copy, when a read brought it along

    # ---- the switchover journal ------------------------------------------------------

    def ship_lines(self, host: Host) -> list[str]:
        """The journal's records not yet on `host`, as lines that go before a step's own."""
        records, fresh = self.journal.take_unshipped()
        return fleet.append_lines(host.deploy_to, self.journal_name, records, fresh)

    def ship_to_nodes(self) -> None:
        """The records not yet on the nodes (begin, end) to both, in one round trip each; best effort."""
        records, fresh = self.journal.take_unshipped()
        if not records:
            return
        for outcome in run_parallel(self.nodes, lambda h: self.ctx.backend.run(
                h, fleet.append_lines(h.deploy_to, self.journal_name, records, fresh)), 2):
            if not outcome.ok or not outcome.value.ok:
                self.ctx.bus.emit("warning", host=outcome.host.name,
                                  message="could not copy the switchover journal here")

    def unfinished_run(self) -> Optional[tuple[str, list[dict]]]:
        """(where, records) of a switchover that never ended: this controller's journal first,
        else the nodes' copies merged (each node holds the steps that ran on it)."""
        records = self.journal.unfinished()
        if records:
            return str(self.journal.path), records
        if not self.node_copies:  # not read along with the state yet: one round trip per node
            for outcome in run_parallel(self.nodes, lambda h: self.ctx.backend.run(
                    h, fleet.read_lines(h.deploy_to, self.journal_name)), 2):
                if outcome.ok and outcome.value.ok:
                    self.node_copies[outcome.host.name] = fleet.parse(outcome.value.stdout)
        copies = {node: fleet.unfinished(records) or [] for node, records in self.node_copies.items()}
        runs = {}
        for node, run in copies.items():
            for record in run:
                runs.setdefault(run[0].get("token"), []).append(record)
        if not runs:
            return None
        token, merged = max(runs.items(), key=lambda item: len(item[1]))
        merged = sorted({json.dumps(r, sort_keys=True): r for r in merged}.values(), key=lambda r: r.get("time", ""))
        return f"the copies on {', '.join(sorted(copies))}", merged

    # ---- reading ---------------------------------------------------------------------

    def read(self, probe_link: bool = False, journal: bool = False) -> dict[str, Optional[cmd.NodeState]]:
        """Both nodes' state; an unreachable node reads as None (`probe_link`: for the verdicts,
        whether each node reaches its peer's replication address now; `journal`: the same round
        trip appends the journal's new records to each node's copy and reads the copy back)."""
        shipment = self.journal.take_unshipped() if journal else ([], False)
        backend = self.ctx.backend

        def one(host: Host) -> cmd.NodeState:
            backend.connect(host)
            extra = fleet.append_lines(host.deploy_to, self.journal_name, *shipment) + \
                fleet.read_lines(host.deploy_to, self.journal_name) if journal else []
            result = backend.run(host, extra + cmd.status_script(self.resource, probe_link))
            if not result.ok:
                raise RemoteError(f"{host.name}: cannot read DRBD state: {result.stderr_tail()}")
            if journal:
                self.node_copies[host.name] = fleet.parse(result.stdout)
            return cmd.parse_status(result.stdout, self.resource)

        states = {}
        for outcome in run_parallel(self.nodes, one, 2):
            states[outcome.host.name] = outcome.value if outcome.ok else None
            if not outcome.ok:
                self.ctx.bus.emit("warning", host=outcome.host.name, message=str(outcome.error).splitlines()[0])
        return states

    @property
    def health_timeout(self) -> float:
        """How long the services may take to answer after a move: their checks' longest timeout."""
        return max((s.check.timeout for s in self.resource.services if s.check), default=0)

    def roles(self, states) -> tuple[Optional[str], Optional[str]]:
        primary = [n for n, s in states.items() if s is not None and s.role == "Primary"]
        source = primary[0] if len(primary) == 1 else None
        target = next((n for n in states if n != source), None) if source else None
        return source, target

    def services_healthy(self, node: str, state: Optional[cmd.NodeState], deadline: float = 0.0) -> list[str]:
        """Problems with the services on `node` (empty: healthy). Retries until `deadline` seconds."""
        started = time.monotonic()
        while True:
            problems = []
            for service in self.resource.services:
                check = service.check
                if check is None:
                    continue
                if check.tcp is not None:
                    address = self.resource.service_ip.address if self.resource.service_ip else \
                        next(h.address for h in self.nodes if h.name == node)
                    try:
                        socket.create_connection((address, check.tcp), timeout=2).close()
                    except OSError as exc:
                        problems.append(f"{service.name}: {address}:{check.tcp} does not answer ({exc.strerror or exc})")
                if check.command and state is not None and not state.services_ok.get(service.name, False):
                    problems.append(f"{service.name}: check command failed on {node}")
            if not problems or time.monotonic() - started >= deadline:
                return problems
            time.sleep(0.3)
            if any(s.check and s.check.command for s in self.resource.services):
                state = self.read().get(node)

    def status(self) -> FlowResult:
        states = self.read(probe_link=True)
        source, target = self.roles(states)
        refusals = cmd.switch_refusals(self.resource, states, source, target) if source and target else \
            [f"no single Primary: {_roles_text(states)}"]
        if source and not refusals:
            refusals += [f"{source}: {p}" for p in self.services_healthy(source, states[source])]
        for name, state in states.items():
            data = {"resource": self.resource.name, "reachable": state is not None}
            if state is not None:
                data.update(role=state.role, peer_role=state.peer_role, cstate=state.cstate, disk=state.disk,
                            peer_disk=state.peer_disk, out_of_sync_kb=state.out_of_sync_kb,
                            sync_done=state.sync_done, mounted=state.mounted, service_ip=state.has_service_ip)
            self.ctx.bus.emit("drbd_state", host=name, message=state.describe() if state else "unreachable", **data)
        verdict = "safe to switch over" if not refusals else "NOT safe to switch over: " + "; ".join(refusals)
        self.ctx.bus.emit("drbd_verdict", status="safe" if not refusals else "unsafe", message=verdict,
                          resource=self.resource.name, primary=source, reasons=refusals)
        return FlowResult(ExitStatus.OK, f"{self.resource.name}: primary {source or '?'}; {verdict}")

    # ---- switching over --------------------------------------------------------------

    def switchover(self, to: Optional[str], dry_run: bool, lock_wait: float) -> FlowResult:
        """Move the Primary (and filesystem, service IP, services) to the peer: see Switchover."""
        return Switchover(self).run(to, dry_run, lock_wait)


class Switchover:
    """One planned switchover of a resource: refuse on any doubt, then the steps, each verified;
    a failed step walks back to the original primary. The stage lock is held throughout."""

    def __init__(self, drbd: DrbdFlow):
        self.drbd, self.ctx, self.resource, self.journal = drbd, drbd.ctx, drbd.resource, drbd.journal
        self.lock = SwitchoverLock(drbd)

    def run(self, to: Optional[str], dry_run: bool, lock_wait: float) -> FlowResult:
        states = self.drbd.read(probe_link=True, journal=True)  # the nodes' journal copies come along
        source, target = self.drbd.roles(states)
        if to is not None and to not in self.resource.nodes:
            raise UsageError(f"--to: '{to}' is not a node of {self.resource.name} ({', '.join(self.resource.nodes)})")
        if to is not None and source is not None and to == source:
            raise RemoteError(f"refusing: {to} is already the Primary of {self.resource.name}; the target must be "
                              f"the Secondary; nothing was changed")
        refusals = cmd.switch_refusals(self.resource, states, source, target) if source and target else \
            [f"no single Primary ({_roles_text(states)})"]
        if source and not refusals:
            refusals += [f"services on {source} are not healthy now: {p}" for p in
                         self.drbd.services_healthy(source, states[source])]
        unfinished = self.drbd.unfinished_run()
        if unfinished:
            where, records = unfinished
            raise LockHeld(f"an earlier switchover of {self.resource.name} never finished (from "
                           f"{records[0].get('source')} to {records[0].get('target')}, since "
                           f"{records[0].get('time', '?')[:19]}; journal: {where}): run `dsas drbd recover "
                           f"{self.ctx.stage.name}` first; nothing was changed")
        refusals += self.lock.problems()
        if refusals:
            raise RemoteError(f"refusing to switch over {self.resource.name}: " + "; ".join(refusals)
                              + "; nothing was changed")
        hosts = {"source": next(h for h in self.drbd.nodes if h.name == source),
                 "target": next(h for h in self.drbd.nodes if h.name == target)}
        self.ctx.bus.emit("drbd_verdict", status="safe", resource=self.resource.name, primary=source, reasons=[],
                          message=f"switching {self.resource.name} from {source} to {target}")
        if dry_run:
            for step in STEPS:
                if step.build is not None:
                    host = hosts[step.on]
                    self.ctx.bus.emit("script", host=host.name, phase=step.name,
                                      script="\n".join(step.build(self.resource)) + "\n")
            return FlowResult(ExitStatus.OK, f"dry run: {self.resource.name} would move from {source} to {target}; "
                              f"nothing was changed")
        started = time.monotonic()
        done: list[Step] = []
        attempted = False  # a step has started: from here on, a failure walks back
        begun = False
        try:
            self.lock.take(lock_wait)
            self.journal.begin(resource=self.resource.name, source=source, target=target, token=self.ctx.token,
                               pid=os.getpid(), controller=socket.gethostname())
            begun = True
            # the state may have moved while we waited for the lock: decide again, under it (the same
            # round trip puts the journal's begin on both nodes)
            states = self.drbd.read(probe_link=True, journal=True)
            again = cmd.switch_refusals(self.resource, states, source, target)
            if again:
                raise RemoteError(f"refusing to switch over {self.resource.name}: " + "; ".join(again)
                                  + "; nothing was changed")
            for step in STEPS:
                attempted = True
                self.run_step(step, hosts)
                done.append(step)
            self.journal.end("switched")  # the unlock below carries it to the nodes
        except BaseException as exc:
            if not attempted:  # refused, or the lock is held: nothing to walk back
                if begun:
                    self.journal.end("refused")
                if isinstance(exc, KeyboardInterrupt):
                    raise RemoteError(f"switchover of {self.resource.name} interrupted before its first "
                                      f"step; nothing was changed") from None
                raise
            with signals_deferred():
                reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc).splitlines()[0]
                self.walk_back(done, exc, hosts, reason)
                self.journal.end("walked_back")
            raise RemoteError(f"switchover of {self.resource.name} failed ({reason}); walked back: {source} is "
                              f"the Primary again, services answer") from None
        finally:
            with signals_deferred():
                self.lock.release()
        seconds = time.monotonic() - started
        return FlowResult(ExitStatus.OK, f"{self.resource.name} switched over from {source} to {target} "
                          f"in {seconds:.1f}s; services answer on the new primary")

    def run_step(self, step: Step, hosts: dict[str, Host], undo: bool = False) -> None:
        host = hosts[step.on]
        name = f"undo {step.name}" if undo else step.name
        started = time.monotonic()
        if step.build is None:  # health
            problems = self.drbd.services_healthy(host.name, self.drbd.read().get(host.name),
                                                  deadline=self.drbd.health_timeout)
            ok, reason = not problems, "; ".join(problems)
        else:
            lines = (step.undo if undo else step.build)(self.resource)
            if not lines:
                return
            self.journal.record("step", name=step.name, on=host.name, undo=undo)
            with signals_held():  # e.g. `drbdadm primary` finishes before any walk back starts
                result = self.ctx.backend.run(host, self.drbd.ship_lines(host) + lines)
            ok, reason = result.ok, result.stderr_tail() or f"exit {result.exit_code}"
        seconds = round(time.monotonic() - started, 3)
        self.ctx.bus.emit("drbd_step", host=host.name, phase=name, status="ok" if ok else "failed",
                          seconds=seconds, message=None if ok else reason)
        if not ok:
            raise RemoteError(f"{name} on {host.name} failed: {reason}")

    def walk_back(self, done: list[Step], failure: BaseException, hosts: dict[str, Host], reason: str) -> None:
        """Undo the completed steps (and the failed one, whose undo is idempotent) in reverse."""
        failed_index = len(done)
        to_undo = list(done)
        if failed_index < len(STEPS) and STEPS[failed_index].undo is not None:
            to_undo.append(STEPS[failed_index])
        problems = []
        for step in reversed(to_undo):
            if step.undo is None:
                continue
            try:
                self.run_step(step, hosts, undo=True)
            except DsasError as exc:
                problems.append(str(exc))
                break
        if not problems:
            source = hosts["source"].name
            health = self.drbd.services_healthy(source, self.drbd.read().get(source),
                                                deadline=self.drbd.health_timeout)
            problems += [f"after walking back, {source}: {p}" for p in health]
        if problems:
            states = self.drbd.read()
            state_text = "; ".join(f"{n}: {s.describe() if s else 'unreachable'}" for n, s in states.items())
            source, target = hosts["source"].name, hosts["target"].name
            raise IncompleteRestore(
                f"switchover of {self.resource.name} failed ({reason}) and walking back failed too: "
                + "; ".join(problems) + f". State now: {state_text}. A human must: make sure {target} is "
                f"Secondary (`drbdadm secondary {self.resource.name}` there); then on {source}, which holds "
                f"the newest data, `drbdadm primary {self.resource.name}` (safe there even while the "
                f"replication link is down; never on {target}, never --force), mount {self.resource.mount}, "
                f"add the service IP and start the services; repair the link after: DRBD reconnects by itself. "
                f"Or fix what failed and run `dsas drbd recover {self.ctx.stage.name}`, which does that and "
                f"closes this switchover's journal.")


class SwitchoverLock:
    """The stage lock a switchover holds on its DrbdFlow's lock_hosts (both nodes and every release
    host): no deploy runs meanwhile. Giving it back carries the journal's last records to the nodes."""

    def __init__(self, drbd: DrbdFlow):
        self.drbd, self.ctx = drbd, drbd.ctx

    def problems(self) -> list[str]:
        """A deploy and a switchover never overlap: the release hosts' lock must be free."""
        ctx = self.ctx
        problems = []

        def read(host: Host):
            ctx.backend.connect(host)
            return ctx.backend.run(host, lockcmd.report_lines(host.paths))

        for outcome in run_parallel(ctx.stage.release_hosts(), read, ctx.limit):
            if outcome.ok and lockcmd.HELD in outcome.value.markers:
                problems.append(f"the stage lock is held on {outcome.host.name} (a deploy is running)")
            elif not outcome.ok:
                problems.append(f"cannot read the stage lock on {outcome.host.name}: {outcome.error}")
        return problems

    def take(self, lock_wait: float) -> None:
        """The stage lock on every lock host (both nodes, the release hosts), or none: waits up to
        `lock_wait` seconds."""
        ctx = self.ctx
        owner = ctx.lock_owner("drbd switchover", self.drbd.resource.name)
        deadline = time.monotonic() + lock_wait

        def take(host: Host):
            lines = lockcmd.create_and_acquire_lines(host.paths, owner)
            return ctx.backend.run(host, lines)

        while True:
            held = []
            for outcome in run_parallel(self.drbd.lock_hosts, take, ctx.limit):
                if outcome.ok and lockcmd.ACQUIRED in outcome.value.markers:
                    ctx.locked.add(outcome.host.name)
                else:
                    held.append(outcome.host.name)
            if not held:
                return
            self.release()
            if time.monotonic() >= deadline:
                raise LockHeld(f"stage '{ctx.stage.name}' is locked on {', '.join(held)}; "
                               f"another deploy or switchover is running")
            time.sleep(1)

    def release(self) -> None:
        """Release our lock; the journal's last records (end) travel to the nodes with it."""
        ctx = self.ctx
        hosts = [h for h in self.drbd.lock_hosts if h.name in ctx.locked]
        shipment = self.drbd.journal.take_unshipped()
        nodes = {h.name for h in self.drbd.nodes}

        def release(host: Host):
            ship = fleet.append_lines(host.deploy_to, self.drbd.journal_name, *shipment) if host.name in nodes else []
            return ctx.backend.run(host, ship + lockcmd.release_lines(host.paths, ctx.token))

        for outcome in run_parallel(hosts, release, ctx.limit):
            if outcome.ok and outcome.value.ok:
                ctx.locked.discard(outcome.host.name)

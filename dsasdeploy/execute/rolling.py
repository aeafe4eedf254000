"""The rolling publish strategy: through the load balancer, batch by batch, with a fleet rollback.

Per batch (canary first): capacity guard on every director -> journal -> drain
(weight 0) -> wait ActiveConn 0 -> switch + restart -> health gate against each
host -> warm gate -> restore the original weights -> journal.

A failed step in batch k switches batch k back, checks it, restores it; then
batches k-1..1 are rolled back the same way (drain, switch back, check, restore).
Hosts whose old release is not healthy stay drained and are reported (exit 4).
Every change is journaled before it is made, so `dsas recover` (rolling_recover.py)
can finish the job after a crash or SIGKILL.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..commands import release as rel
from ..errors import DsasError, IncompleteRestore, LockHeld, RemoteError
from ..inventory import Host
from ..localdirs import state_dir
from ..plan.drain import DrainRecord
from ..plan.release import ReleasePlan, rolling_cap
from .context import RunContext
from .batch_gates import BatchGates
from .journal import Journal, journal_path
from .lb import PoolEnv, make_driver
from .locks import pid_alive
from .pool import signals_deferred, without_host

JOURNAL_GRACE = 5.0  # seconds a live run gets to close its journal once its locks are given back

ScriptOf = Callable[[Host], list[str]]


@dataclass
class InFlight:
    """The batch currently out of the pool (or being taken out)."""

    batch: list[Host]
    records: list[DrainRecord] = field(default_factory=list)
    switched: bool = False


def journal_writer_alive(begin: dict) -> Optional[bool]:
    """Whether the run that began a journal still runs: known only on the controller it ran on."""
    if begin.get("controller") != socket.gethostname() or not str(begin.get("pid", "")).isdigit():
        return None
    return pid_alive(int(begin["pid"]))


def about(hosts: Sequence[Host], exc: BaseException) -> str:
    """An error's text after the names of `hosts`: a lone host is not named twice."""
    return without_host(hosts[0].name, str(exc)) if len(hosts) == 1 else str(exc)


class Rolling:
    """Publishes batch by batch through the stage's load balancer (the Publisher protocol)."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        stage = ctx.stage
        self.driver = make_driver(PoolEnv.of(ctx), stage.settings.lb)
        ctx.also_talk_to(stage.hosts_with_role("lb"))
        state_dir(stage.project_dir).check()  # the journal's home: an unusable one is exit 2, now
        self.journal = Journal(journal_path(stage.project_dir, stage.name))
        self.driver.attach_journal(self.journal)  # its copy on the directors travels with each edit
        self.cap = rolling_cap(stage)
        self.batch_gates = BatchGates(ctx)
        self.done: list[list[Host]] = []
        self.in_flight: Optional[InFlight] = None
        self.left_out: set[str] = set()  # hosts this run keeps drained because they fail their health check

    # ---- before anything changes ----------------------------------------------------------

    def refuse_if_unfinished(self) -> None:
        """Refuse to start after a DEAD run's unfinished rollout; a live run is waited for on
        its lock, like any other deploy."""
        records = self.journal.unfinished()
        if records and journal_writer_alive(records[0]) is not True:
            begin = records[0]
            raise LockHeld(f"an unfinished rolling release of stage '{self.ctx.stage.name}' (release "
                           f"{begin.get('release')}, pid {begin.get('pid')}, since {begin.get('time', '?')[:19]}) "
                           f"left the journal {self.journal.path}; run `dsas recover {self.ctx.stage.name}` first")

    def after_acquire(self, lock_wait: float) -> None:
        """Holding the stage lock, the journal of the run before must be closed: a live run
        closes it as it gives its locks back, so it is waited for a few seconds at least."""
        deadline = time.monotonic() + max(lock_wait, JOURNAL_GRACE)
        while (records := self.journal.unfinished()) and journal_writer_alive(records[0]) is True \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        if records and journal_writer_alive(records[0]) is True:
            raise LockHeld(f"the run that wrote {self.journal.path} (pid {records[0].get('pid')}) is still "
                           f"running without its lock (was it broken with `dsas unlock`?); let it finish")
        self.refuse_if_unfinished()

    def preflight(self) -> None:
        """The pool as the directors see it, and no unfinished rollout in their journal copy."""
        stage = self.ctx.stage
        self.driver.preflight(self.ctx.hosts)
        found = self.driver.fleet_unfinished()  # read by the preflight, no extra round trip
        if found:
            director, records = found
            begin = records[0]
            raise LockHeld(f"the directors hold an unfinished rolling release of stage '{stage.name}' "
                           f"(release {begin.get('release')}, from {begin.get('controller', '?')} pid "
                           f"{begin.get('pid', '?')}, since {begin.get('time', '?')[:19]}; copy on {director}): "
                           f"servers may be drained; run `dsas recover {stage.name}` first (from anywhere)")
        if stage.settings.health is None:
            self.ctx.bus.emit("warning", message="no health check configured (health:): hosts rejoin the pool "
                                                 "as soon as their restart command succeeds")

    def check_plan(self, plan: ReleasePlan) -> None:
        """The capacity guard of every batch against the live pool (read only): a refusal comes
        before the prepare, not after the release was shipped everywhere."""
        for batch in plan.batches:
            self.driver.plan_drain(batch, self.cap)

    def pool_problems(self) -> Optional[list[str]]:
        """For `dsas check`: real servers the stage does not list, an unfinished rollout on a director."""
        try:
            problems = self.driver.pool_problems(self.ctx.hosts)
        except DsasError as exc:
            problems = [f"cannot read the pool: {exc}"]
        found = self.driver.fleet_unfinished()
        if found:
            director, records = found
            problems.append(f"{director} holds an unfinished rolling release (release {records[0].get('release')}, "
                            f"since {records[0].get('time', '?')[:19]}): run `dsas recover {self.ctx.stage.name}`")
        return problems

    # ---- forward ----------------------------------------------------------------------

    def publish(self, plan: ReleasePlan) -> None:
        ctx = self.ctx
        self.journal.begin(stage=ctx.stage.name, command=plan.kind, release=plan.release_id,
                           revision=plan.revision, previous={n: p.context.previous for n, p in plan.hosts.items()},
                           token=ctx.token, pid=os.getpid(), controller=socket.gethostname(),
                           hosts=[h.name for h in ctx.hosts], batches=[[h.name for h in b] for b in plan.batches])
        for index, batch in enumerate(plan.batches):
            label = "canary" if index == 0 and ctx.stage.settings.rollout.canary else f"batch {index + 1}"
            ctx.bus.emit("batch", status="started", name=label, hosts=[h.name for h in batch],
                         index=index + 1, of=len(plan.batches))
            self.roll_batch(list(batch), plan.context, forward=lambda h: plan.script("publish", h),
                            record_gated=plan.kind == "deploy", done=self.done)
            ctx.bus.emit("batch", status="done", name=label, hosts=[h.name for h in batch])
        self.journal.record("published")  # every host is on the new release and in service

    def completed(self, outcome: str) -> None:
        self.journal.end(outcome)
        self.driver.ship_journal()

    def gates(self, batch: Sequence[Host], release_of: Callable[[Host], Optional[str]], warm: bool) -> None:
        """Health (and warm) per host of `batch`; RemoteError naming every host that failed."""
        failures = self.batch_gates.failures(batch, release_of, warm)
        if failures:
            raise RemoteError("; ".join(failures.values()))

    def roll_batch(self, batch: list[Host], context_of: Callable[[Host], rel.ReleaseContext],
                   forward: Optional[ScriptOf], record_gated: bool = False, done: Optional[list] = None,
                   records: Optional[list[DrainRecord]] = None, switch: Optional[set] = None) -> None:
        """Drain, switch (`forward`: each host's publish script; None: back to its previous
        release), gate, restore.

        `records`: drain records already known (recover: from the journal; no capacity guard,
        these hosts are out already). `switch`: only these host names change release.
        `done`: the batch is appended there at the same instant it stops being in flight.
        """
        self.in_flight = InFlight(batch)
        self.in_flight.records = records if records is not None else \
            self.driver.plan_drain(batch, self.cap, frozenset(self.left_out))
        if records is None:
            for record in self.in_flight.records:
                self.journal.record("drain", **record.to_journal())
        self.driver.drain(self.in_flight.records)
        self.driver.wait_drained(batch)
        movers = [h for h in batch if switch is None or h.name in switch]
        for host in movers:
            ctx = context_of(host)
            self.journal.record("switch" if forward else "switch_back", host=host.name,
                                release=ctx.release_id if forward else ctx.previous)
        self.in_flight.switched = bool(movers)
        if movers and forward:
            self.ctx.run_phase("publish", movers, forward)
        elif movers:
            self.switch_back(movers, context_of)
        self.gates(batch, lambda h: context_of(h).release_id if forward else context_of(h).previous,
                   warm=forward is not None)
        if record_gated:
            for host in movers:  # the new release passed its gates here: recover must not call it failed
                self.journal.record("gated", host=host.name)
        self.restore(self.in_flight)
        with signals_deferred():
            if done is not None:
                done.append(batch)
            self.in_flight = None

    def switch_back(self, batch: Sequence[Host], context_of) -> None:
        ctx = self.ctx
        results = ctx.phase("revert", batch, lambda h: rel.revert_script(
            h.paths, context_of(h), ctx.stage.restart_commands(h), None, None), strict=False)
        for host in batch:
            if results[host.name][0]:
                self.journal.record("switched_back", host=host.name)
                ctx.records[host.name].outcome = "reverted"
        ctx.raise_on_failure("revert", results)

    def restore(self, flight: InFlight, keep_out: frozenset = frozenset()) -> None:
        """Original weights back for the batch, except the hosts in `keep_out` (they stay drained)."""
        records = [r for r in flight.records if r.host not in keep_out]
        self.driver.restore(records)
        for host in sorted({r.host for r in records}):
            self.journal.record("restored", host=host)

    # ---- the way back --------------------------------------------------------------------

    def revert(self, contexts: dict[str, rel.ReleaseContext], reason: str, ref: str, mark: bool = True) -> None:
        """Whole-rollout rollback: the batch in flight, then the done batches, newest first."""
        ctx = self.ctx
        ctx.cancel.clear()  # the way back waits for its own gates
        stuck: list[str] = []
        flight, self.in_flight = self.in_flight, None
        if flight is not None:
            stuck += self.undo_in_flight(flight, lambda h: contexts[h.name])
        for batch in reversed(self.done):
            try:
                self.roll_batch(batch, lambda h: contexts[h.name], forward=None)
            except Exception as exc:  # noqa: BLE001 - keep going: every other batch must still go back
                leftover, self.in_flight = self.in_flight, None
                if leftover is not None:
                    stuck += self.undo_in_flight(leftover, lambda h: contexts[h.name], already_back=True)
                stuck.append(f"batch {','.join(h.name for h in batch)}: {about(batch, exc)}")
        first = next(iter(contexts.values()))
        entry = ctx.log_entry("failed", release=first.release_id, revision=first.revision, ref=ref,
                              reason=reason[:120])
        results = ctx.phase("mark_failed", ctx.hosts, strict=False, lines_for=lambda h: rel.log_and_unlock_script(
            h.paths, entry if mark else None, ctx.token))
        for name, (ok, _, _) in results.items():
            if ok:
                ctx.locked.discard(name)
        if stuck:
            raise IncompleteRestore(f"{reason}; rolling back did not finish: " + "; ".join(stuck)
                                    + f". The journal {self.journal.path} keeps the original weights: fix the "
                                    f"hosts, then `dsas recover {ctx.stage.name}`")
        self.journal.end("rolled_back")
        self.driver.ship_journal()

    def undo_rollback(self, contexts: dict[str, rel.ReleaseContext]) -> None:
        self.revert(contexts, "rollback failed", "", mark=False)

    def undo_in_flight(self, flight: InFlight, context_of, already_back: bool = False) -> list[str]:
        """Put a drained batch back: switch back if switched, check the old release, restore.

        No host goes back into the pool unless it answers its health check now (switched or
        not: a host can be drained for its own reason); after a lost host we cannot know
        which release it serves, so only health is required. Returns what is left undone.
        """
        names = ", ".join(h.name for h in flight.batch)
        stuck: list[str] = []
        lost = False
        if flight.switched and not already_back:
            try:
                self.switch_back(flight.batch, context_of)
            except Exception as exc:  # noqa: BLE001
                stuck.append(f"{names}: could not switch back ({exc})")
                lost = True
        try:
            sick = self.batch_gates.failures(flight.batch, (lambda h: None) if lost or not flight.switched
                                       else (lambda h: context_of(h).previous), warm=False)
        except Exception as exc:  # noqa: BLE001
            return stuck + [f"{names} left OUT of the pool (drained): its health could not be checked: {exc}"]
        for name, why in sick.items():
            self.left_out.add(name)
            stuck.append(f"{why}: {name} is left OUT of the pool (drained) until it is healthy")
        try:
            self.restore(flight, keep_out=frozenset(sick))
        except Exception as exc:  # noqa: BLE001
            stuck.append(f"{names} may still be drained: restore failed: {exc}")
        return stuck

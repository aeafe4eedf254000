"""Rolling release through the load balancer, batch by batch, with a fleet rollback.

Per batch (canary first): capacity guard on every director -> journal -> drain
(weight 0) -> wait ActiveConn 0 -> switch + restart -> health gate against each
host -> warm gate -> restore the original weights -> journal.

A failed step in batch k switches batch k back, checks it, restores it; then
batches k-1..1 are rolled back the same way (drain, switch back, check, restore).
Hosts whose old release is not healthy either stay drained and are reported
(exit 4). Every change is journaled before it is made, so `dsas recover` can
finish the job after a crash or SIGKILL.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..commands import release as rel
from ..config.names import split_host_port
from ..errors import DsasError, IncompleteRestore, LockHeld, RemoteError, UsageError
from ..inventory import Host
from ..localdirs import state_dir
from ..plan.hooks import remote_hooks
from ..plan.rollout import max_unavailable, plan_batches
from ..status import ExitStatus
from .flow import FlowResult, HostRecord, ReleaseFlow, pid_alive, without_host
from .gates import direct_opener, health_gate, warm_gate
from .journal import Journal, JournalState, journal_path
from .lb import make_driver
from .pool import run_parallel, signals_deferred

JOURNAL_GRACE = 5.0  # seconds a live run gets to close its journal once its locks are given back


@dataclass
class InFlight:
    """The batch currently out of the pool (or being taken out)."""

    batch: list[Host]
    records: list[dict] = field(default_factory=list)
    switched: bool = False


class RollingFlow(ReleaseFlow):
    """ReleaseFlow whose publish step rolls through the load balancer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = self.stage.settings
        self.driver = make_driver(self, settings.lb)
        names = {h.name for h in self.hosts} | {h.name for h in self.aux_hosts}
        self.aux_hosts += tuple(h for h in self.stage.hosts_with_role("lb") if h.name not in names)
        state_dir(self.stage.project_dir).check()  # the journal's home: an unusable one is exit 2, now
        self.journal = Journal(journal_path(self.stage.project_dir, self.stage.name))
        self.driver.attach_journal(self.journal)  # its copy on the directors travels with each edit
        self.pool_size = len(self.stage.release_hosts())
        self.cap = max_unavailable(settings.rollout, self.pool_size)
        self.done: list[list[Host]] = []
        self.in_flight: Optional[InFlight] = None
        self.left_out: set[str] = set()  # hosts this run keeps drained because they fail their health check

    # ---- entry points ------------------------------------------------------------------

    def deploy(self, revision, ref, archive, lock_wait, dry_run):
        if not dry_run:
            self.refuse_if_unfinished()
        else:
            self.bus.emit("warning", message="dry run: batches would be " + " | ".join(
                ",".join(h.name for h in b) for b in plan_batches(self.hosts, self.stage.settings.rollout,
                                                                   self.pool_size)))
        return super().deploy(revision, ref, archive, lock_wait, dry_run)

    def rollback(self, requested, lock_wait, dry_run):
        if not dry_run:
            self.refuse_if_unfinished()
        return super().rollback(requested, lock_wait, dry_run)

    def check(self) -> FlowResult:
        """The hosts' checks, then the pool's, on every director: real servers the stage does not
        list, and an unfinished rolling release in the directors' copy of the journal."""
        result = super().check()
        try:
            problems = self.driver.pool_problems(self.hosts)
        except DsasError as exc:
            problems = [f"cannot read the pool: {exc}"]
        found = self.driver.fleet_unfinished()
        if found:
            director, records = found
            problems.append(f"{director} holds an unfinished rolling release (release {records[0].get('release')}, "
                            f"since {records[0].get('time', '?')[:19]}): run `dsas recover {self.stage.name}`")
        self.bus.emit("host_state", host="pool", status="failed" if problems else "ok",
                      checks=[["pool", not problems, "; ".join(problems)]])
        if problems:
            return FlowResult(ExitStatus.FAILED_ROLLED_BACK, "; ".join(problems))
        return result

    def refuse_if_unfinished(self) -> None:
        """Refuse to start after a DEAD run's unfinished rollout; a live run is waited for on
        its lock (acquire_locks), like any other deploy."""
        records = self.journal.unfinished()
        if records and journal_writer_alive(records[0]) is not True:
            begin = records[0]
            raise LockHeld(f"an unfinished rolling release of stage '{self.stage.name}' (release "
                           f"{begin.get('release')}, pid {begin.get('pid')}, since {begin.get('time', '?')[:19]}) "
                           f"left the journal {self.journal.path}; run `dsas recover {self.stage.name}` first")

    def acquire_locks(self, owner, lock_wait: float):
        """The stage lock, then (holding it) the journal of the run before must be closed: a live
        run closes it as it gives its locks back, so it is waited for a few seconds at least."""
        deadline = time.monotonic() + max(lock_wait, JOURNAL_GRACE)
        probes = super().acquire_locks(owner, lock_wait)
        try:
            while (records := self.journal.unfinished()) and journal_writer_alive(records[0]) is True \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            if records and journal_writer_alive(records[0]) is True:
                raise LockHeld(f"the run that wrote {self.journal.path} (pid {records[0].get('pid')}) is still "
                               f"running without its lock (was it broken with `dsas unlock`?); let it finish")
            self.refuse_if_unfinished()
        except BaseException:
            with signals_deferred():
                self.release_locks()
            raise
        return probes

    def preflight_pool(self) -> None:
        self.driver.preflight(self.hosts)
        found = self.driver.fleet_unfinished()  # read by the preflight, no extra round trip
        if found:
            director, records = found
            begin = records[0]
            raise LockHeld(f"the directors hold an unfinished rolling release of stage '{self.stage.name}' "
                           f"(release {begin.get('release')}, from {begin.get('controller', '?')} pid "
                           f"{begin.get('pid', '?')}, since {begin.get('time', '?')[:19]}; copy on {director}): "
                           f"servers may be drained; run `dsas recover {self.stage.name}` first (from anywhere)")
        if self.stage.settings.health is None:
            self.bus.emit("warning", message="no health check configured (health:): hosts rejoin the pool "
                                             "as soon as their restart command succeeds")

    def dry_run_checks(self) -> None:
        """The capacity guard of every batch, against the live pool (read only)."""
        for batch in plan_batches(self.hosts, self.stage.settings.rollout, self.pool_size):
            self.driver.plan_drain(batch, self.cap)

    def undo_rollback(self, contexts: dict[str, rel.ReleaseContext]) -> None:
        self._revert(contexts, "rollback failed", "", mark=False)

    def publish(self, contexts: dict[str, rel.ReleaseContext], hook_phase: str = "publish") -> None:
        ctx0 = next(iter(contexts.values()))
        batches = plan_batches(self.hosts, self.stage.settings.rollout, self.pool_size)
        self.journal.begin(stage=self.stage.name, command="rollback" if hook_phase == "rollback" else "deploy",
                           release=ctx0.release_id, revision=ctx0.revision,
                           previous={n: c.previous for n, c in contexts.items()}, token=self.token,
                           pid=os.getpid(), controller=socket.gethostname(), hosts=[h.name for h in self.hosts],
                           batches=[[h.name for h in b] for b in batches])
        for index, batch in enumerate(batches):
            label = "canary" if index == 0 and self.stage.settings.rollout.canary else f"batch {index + 1}"
            self.bus.emit("batch", status="started", name=label, hosts=[h.name for h in batch],
                          index=index + 1, of=len(batches))
            self.roll_batch(batch, lambda h: contexts[h.name], forward=True, hook_phase=hook_phase, done=self.done)
            self.bus.emit("batch", status="done", name=label, hosts=[h.name for h in batch])
        self.journal.record("published")  # every host is on the new release and in service

    def completed(self, outcome: str) -> None:
        self.journal.end(outcome)
        self.driver.ship_journal()

    # ---- one batch ---------------------------------------------------------------------

    def roll_batch(self, batch: list[Host], context_of: Callable[[Host], rel.ReleaseContext],
                   forward: bool, hook_phase: str = "publish", done: Optional[list] = None,
                   records: Optional[list[dict]] = None, switch: Optional[set] = None) -> None:
        """Drain, switch (forward: to the new release; else back), gate, restore.

        `records`: drain records already known (recover: from the journal; no capacity guard,
        these hosts are out already). `switch`: only these host names change release.
        `done`: the batch is appended there at the same instant it stops being in flight.
        """
        self.in_flight = InFlight(batch)
        self.in_flight.records = records if records is not None else \
            self.driver.plan_drain(batch, self.cap, frozenset(self.left_out))
        if records is None:
            for record in self.in_flight.records:
                self.journal.record("drain", **record)
        self.driver.drain(self.in_flight.records)
        self.driver.wait_drained(batch)
        movers = [h for h in batch if switch is None or h.name in switch]
        for host in movers:
            ctx = context_of(host)
            self.journal.record("switch" if forward else "switch_back", host=host.name,
                                release=ctx.release_id if forward else ctx.previous)
        self.in_flight.switched = bool(movers)
        if movers and forward:
            results = self.phase("publish", movers, lambda h: rel.publish_script(
                h.paths, context_of(h), self.stage.restart_commands(h),
                before=remote_hooks(self.stage, "before", hook_phase, h, self.hosts),
                after=remote_hooks(self.stage, "after", hook_phase, h, self.hosts)))
            self._raise_on_failure("publish", results)
        elif movers:
            self.switch_back(movers, context_of)
        self.gates(batch, lambda h: context_of(h).release_id if forward else context_of(h).previous,
                   warm=forward)
        if forward and movers and hook_phase == "publish":
            for host in movers:  # the new release passed its gates here: recover must not call it failed
                self.journal.record("gated", host=host.name)
        self.restore(self.in_flight)
        with signals_deferred():
            if done is not None:
                done.append(batch)
            self.in_flight = None

    def switch_back(self, batch: Sequence[Host], context_of) -> None:
        results = self.phase("revert", batch, lambda h: rel.revert_script(
            h.paths, context_of(h), self.stage.restart_commands(h), None, None), strict=False)
        for host in batch:
            if results[host.name][0]:
                self.journal.record("switched_back", host=host.name)
                self.records[host.name].outcome = "reverted"
        self._raise_on_failure("revert", results)

    def restore(self, flight: InFlight, keep_out: frozenset = frozenset()) -> None:
        """Original weights back for the batch, except the hosts in `keep_out` (they stay drained)."""
        records = [r for r in flight.records if r["host"] not in keep_out]
        self.driver.restore(records)
        for host in sorted({r["host"] for r in records}):
            self.journal.record("restored", host=host)

    def gates(self, batch: Sequence[Host], release_of: Callable[[Host], Optional[str]], warm: bool) -> None:
        """Health (and warm, going forward) per host, against the host itself, in parallel;
        RemoteError naming every host that failed."""
        failures = self.gate_failures(batch, release_of, warm)
        if failures:
            raise RemoteError("; ".join(failures.values()))

    def gate_failures(self, batch: Sequence[Host], release_of: Callable[[Host], Optional[str]],
                      warm: bool) -> dict[str, str]:
        """{host name: why its gate failed} for the hosts of `batch` that failed (empty: all passed)."""
        settings = self.stage.settings
        if settings.health is None and (settings.warm is None or not warm):
            return {}
        port = (settings.health.port if settings.health and settings.health.port else None) or \
            (settings.lb.real_port if settings.lb else 80)

        def opener_for(host: Host):
            if settings.health is not None and settings.health.via == "ssh":
                return self.backend.tcp_opener(host)
            return direct_opener

        def check(host: Host) -> Optional[str]:
            if settings.health is not None:
                result = health_gate(host.address, settings.health, port, release_of(host), opener_for(host),
                                     stop=self.cancel)
                self.bus.emit("gate", host=host.name, name="health", status="ok" if result.ok else "failed",
                              seconds=round(result.seconds, 2), attempts=result.attempts,
                              release=release_of(host), message=result.reason or None)
                if not result.ok:
                    return f"{host.name}: health check failed: {result.reason}"
            if warm and settings.warm is not None:
                result = warm_gate(host.address, port, settings.warm, self.memcached_servers(), opener_for(host))
                self.bus.emit("gate", host=host.name, name="warm", status="ok" if result.ok else "failed",
                              seconds=round(result.seconds, 2), figures=result.figures,
                              message=result.reason or None)
                if not result.ok:
                    return f"{host.name}: warm-up gate failed: {result.reason}"
            return None

        failures = {o.host.name: o.value if o.ok else f"{o.host.name}: gate error: {without_host(o.host.name, str(o.error))}"
                    for o in run_parallel(batch, check, self.limit, cancel=self.cancel)}
        failures = {name: text for name, text in failures.items() if text}
        for name, text in failures.items():
            if name in self.records:
                self.records[name].error = text
        return failures

    def memcached_servers(self) -> list[tuple[str, int]]:
        warm = self.stage.settings.warm
        if warm is not None and warm.memcached:
            return [(host, int(port or 11211)) for host, port in map(split_host_port, warm.memcached)]
        return [(h.address, 11211) for h in self.stage.hosts_with_role("memcached")]

    # ---- the way back --------------------------------------------------------------------

    def _revert(self, contexts: dict[str, rel.ReleaseContext], reason: str, ref: str, mark: bool = True) -> None:
        """Whole-rollout rollback: the batch in flight, then the done batches, newest first."""
        self.cancel.clear()  # the way back waits for its own gates
        stuck: list[str] = []
        flight, self.in_flight = self.in_flight, None
        if flight is not None:
            stuck += self._undo_in_flight(flight, lambda h: contexts[h.name])
        for batch in reversed(self.done):
            try:
                self.roll_batch(batch, lambda h: contexts[h.name], forward=False)
            except Exception as exc:  # noqa: BLE001 - keep going: every other batch must still go back
                leftover, self.in_flight = self.in_flight, None
                if leftover is not None:
                    stuck += self._undo_in_flight(leftover, lambda h: contexts[h.name], already_back=True)
                stuck.append(f"batch {','.join(h.name for h in batch)}: {_about(batch, exc)}")
        ctx0 = next(iter(contexts.values()))
        entry = self.log_entry("failed", release=ctx0.release_id, revision=ctx0.revision, ref=ref,
                               reason=reason[:120])
        results = self.phase("mark_failed", self.hosts, strict=False, lines_for=lambda h: rel.log_and_unlock_script(
            h.paths, entry if mark else None, self.token))
        for name, (ok, _, _) in results.items():
            if ok:
                self.locked.discard(name)
        if stuck:
            raise IncompleteRestore(f"{reason}; rolling back did not finish: " + "; ".join(stuck)
                                    + f". The journal {self.journal.path} keeps the original weights: fix the "
                                    f"hosts, then `dsas recover {self.stage.name}`")
        self.journal.end("rolled_back")
        self.driver.ship_journal()

    def _undo_in_flight(self, flight: InFlight, context_of, already_back: bool = False) -> list[str]:
        """Put a drained batch back: switch back if switched, check the old release, restore.

        A host whose switch back fails (its SSH died) is checked over HTTP: if it still
        serves healthy responses it goes back into the pool, and is reported either way.
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
        # no host goes back into the pool unless it answers its health check now (switched or not:
        # a host can be drained for its own reason); after a lost host we cannot know which release
        # it serves: require health only
        try:
            sick = self.gate_failures(flight.batch, (lambda h: None) if lost or not flight.switched
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

    # ---- recover -------------------------------------------------------------------------

    def recover(self, forward: bool) -> FlowResult:
        """After a crash: every server back in service on one release (the old one by default).

        Works on the hosts the journal names (not on --hosts), drains before it switches,
        and switches + restarts every host the crashed run may have touched.
        """
        records = self.journal.unfinished()
        if not records:  # not here: this may be another checkout or CI workspace; ask the directors
            found = self.driver.fleet_unfinished(fresh_read=True)
            if found:
                director, records = found
                self.journal.adopt(records)
                self.bus.emit("warning", host=director, message=(
                    f"no unfinished run in {self.journal.path}; recovering the one recorded on {director}"))
        if not records:
            last_run = [r.get("token") for r in self.journal.records() if r.get("event") == "begin"][-1:]
            return self.nothing_to_recover(f"no unfinished rolling release of '{self.stage.name}' "
                                           f"(here or on the directors)", own_tokens=last_run)
        state = JournalState.replay(records)
        begin = state.begin
        owner_alive = begin.get("controller") == socket.gethostname() and begin.get("pid") and \
            lock_is_stale_pid(int(begin["pid"])) is False
        if owner_alive:
            raise LockHeld(f"the run that wrote {self.journal.path} (pid {begin['pid']}) is still running; "
                           f"let it finish or stop it first")
        by_name = {h.name: h for h in self.stage.hosts}
        names = begin.get("hosts") or []
        missing = [n for n in names if n not in by_name]
        if missing:
            raise UsageError(f"the journal names hosts no longer in stage '{self.stage.name}': {', '.join(missing)}")
        self.hosts = tuple(by_name[n] for n in names)
        self.records = {n: HostRecord() for n in names}
        self.aux_hosts = tuple(h for h in self.stage.hosts_with_role("lb") if h.name not in names)
        release, revision = begin.get("release"), begin.get("revision", "")
        if "published" in [r.get("event") for r in records]:
            forward = True  # every host was already on the new release and in service
        self.token = begin.get("token", self.token)  # act as the dead run: its lock is ours to release
        self.attempt.update(release=release, revision=revision)
        self.connect_all()
        probes = self.probe_all(None, create=False)
        contexts = {n: rel.ReleaseContext(self.stage.name, release, revision, state.previous.get(n)) for n in names}
        self.bus.emit("recover", status="started", release=release, forward=forward,
                      drained=sorted(state.drained), switched=sorted(state.switched))

        def target(host: Host) -> Optional[str]:
            return release if forward else contexts[host.name].previous

        unknown = [h.name for h in self.hosts if target(h) is None]
        if unknown:
            raise IncompleteRestore(f"{', '.join(unknown)} had no release before the interrupted run: there is "
                                    f"nothing to go back to; use `dsas recover {self.stage.name} --forward`")
        # a host switched and still drained may not have restarted: switch (and restart) it again; a
        # host switched and restored finished its batch: only its `current` decides (no re-drain)
        change = {h.name for h in self.hosts if (h.name in state.switched and h.name in state.drained)
                  or probes[h.name].current != target(h)}
        stuck: list[str] = []
        with signals_deferred():
            drained = [h for h in self.hosts if h.name in state.drained]
            if drained:
                journal_records = [r for h in drained for r in state.drained[h.name]]
                try:
                    self.roll_batch(drained, lambda h: contexts[h.name], forward=forward,
                                    records=journal_records, switch=change)
                except Exception as exc:  # noqa: BLE001
                    leftover, self.in_flight = self.in_flight, None
                    if leftover is not None:
                        stuck += self._undo_in_flight(leftover, lambda h: contexts[h.name])
                    stuck.append(f"{', '.join(h.name for h in drained)}: {_about(drained, exc)}")
            rest = [h for h in self.hosts if h.name not in state.drained and h.name in change]
            for batch in plan_batches(rest, self.stage.settings.rollout, self.pool_size) if rest else []:
                try:
                    self.roll_batch(batch, lambda h: contexts[h.name], forward=forward)
                except Exception as exc:  # noqa: BLE001
                    leftover, self.in_flight = self.in_flight, None
                    if leftover is not None:
                        stuck += self._undo_in_flight(leftover, lambda h: contexts[h.name])
                    stuck.append(f"{', '.join(h.name for h in batch)}: {_about(batch, exc)}")
            was_rollback = begin.get("command") == "rollback"
            event = "deployed" if forward and not was_rollback else ("rolled_back" if forward else "failed")
            # going back from a release that passed every host's gates: it is not a failed release
            # (rollback may still pick it); only one that did not get that far is marked failed
            proven = not forward and set(names) <= state.gated
            entry = None if (was_rollback and not forward) or proven else self.log_entry(
                event, release=release, revision=revision, reason="" if forward else "recovered_after_crash")
            self.phase("finish", self.hosts, strict=False,
                       lines_for=lambda h: rel.log_and_unlock_script(h.paths, entry, self.token))
            if stuck:
                raise IncompleteRestore("; ".join(stuck) + f"; the journal {self.journal.path} is kept")
            self.journal.end("recovered_forward" if forward else "recovered_back")
            self.driver.ship_journal()
        where = f"release {release}" if forward else "the release each host had before"
        for host in self.hosts:
            self.records[host.name].outcome, self.records[host.name].release = "recovered", target(host)
        return FlowResult(ExitStatus.OK, f"recovered: every host in service on {where}", release=target(self.hosts[0]))


def _about(hosts: Sequence[Host], exc: BaseException) -> str:
    """An error's text after the names of `hosts`: a lone host is not named twice."""
    return without_host(hosts[0].name, str(exc)) if len(hosts) == 1 else str(exc)


def journal_writer_alive(begin: dict) -> Optional[bool]:
    """Whether the run that began a journal still runs: known only on the controller it ran on."""
    if begin.get("controller") != socket.gethostname() or not str(begin.get("pid", "")).isdigit():
        return None
    return pid_alive(int(begin["pid"]))


def lock_is_stale_pid(pid: int) -> Optional[bool]:
    """True if no process `pid` exists here, False if one does."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

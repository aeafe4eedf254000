"""The release runner: deploy, rollback, releases, check and unlock over SSH.

Phases run on every host in parallel (bounded), one script per host per phase:

    connect -> probe+lock -> prepare (archive on stdin) -> publish -> finish

Guarantees: nothing is switched unless every host prepared; a failure (or Ctrl-C,
SIGTERM) before the switch discards the new release everywhere; a failure after it
switches every host back to the release it had, restarts it, marks the release failed
and releases the lock. Whatever could not be undone is named, with exit 4.
"""

from __future__ import annotations

import os
import random
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
from ..commands import release as rel
from ..commands.base import last_step
from ..commands.revlog import LogEntry, failed_releases
from ..errors import DsasError, IncompleteRestore, LockHeld, RemoteError, UsageError
from ..identity import operator
from ..inventory import Host, Stage
from ..paths import next_release_id
from ..plan.hooks import local_hooks, remote_hooks, unmatched_remote_hooks
from ..plan.releases import common_releases, releases_to_prune, rollback_target
from ..report.events import EventBus
from ..status import ExitStatus
from .backend import Backend, ExecResult
from .heartbeat import Heartbeat
from .pool import run_parallel, signals_deferred

MIN_FREE_KB = 100 * 1024
UNPACK_FACTOR = 4  # free space wanted per byte of compressed archive


@dataclass
class HostRecord:
    """Per-host outcome for the summary and the --report file."""

    outcome: str = "unchanged"
    release: Optional[str] = None
    previous: Optional[str] = None
    error: Optional[str] = None
    seconds: dict = field(default_factory=dict)


@dataclass
class FlowResult:
    """What a command did, for the summary event and the exit code."""

    status: ExitStatus
    message: str
    release: Optional[str] = None
    revision: Optional[str] = None
    ref: Optional[str] = None


def pid_alive(pid: int) -> Optional[bool]:
    """Whether process `pid` exists on this machine (None: cannot tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return None
    return True


def lock_is_stale(owner: Optional[lockcmd.LockOwner], heartbeat_age: Optional[int] = None) -> Optional[bool]:
    """True if the run holding the lock is gone, False if it is live, None if unknown:
    its pid decides on this controller, its heartbeat's age elsewhere (lockcmd.holder_is_stale)."""
    return lockcmd.holder_is_stale(owner, heartbeat_age, socket.gethostname(), pid_alive)


class ReleaseFlow:
    """Runs one dsas command against the selected hosts of a stage."""

    def __init__(self, stage: Stage, hosts: Sequence[Host], backend: Backend, bus: EventBus,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.stage = stage
        self.hosts = tuple(hosts)
        self.backend = backend
        self.bus = bus
        self.clock = clock
        self.limit = stage.settings.parallelism
        self.token = uuid.uuid4().hex
        self.locked: set[str] = set()
        self.records: dict[str, HostRecord] = {h.name: HostRecord() for h in self.hosts}
        # what this run was about, known even when it fails: release id, revision, ref
        self.attempt: dict[str, Optional[str]] = {"release": None, "revision": None, "ref": None}
        self.outputs: dict[str, ExecResult] = {}  # each host's result of the latest phase
        self.aux_hosts: tuple[Host, ...] = ()  # hosts the run talks to without releasing (directors)
        self.cancel = threading.Event()  # set on Ctrl-C/SIGTERM: waiting loops give up
        self.beats: dict[str, float] = {}  # host name -> when its lock heartbeat was last refreshed
        self.migration_host = self._migration_host()
        if self.migration_host is not None and self.migration_host not in self.hosts:
            self.aux_hosts += (self.migration_host,)

    # ---- building blocks -------------------------------------------------------------

    def host_by_name(self, name: str) -> Host:
        return next(h for h in self.stage.hosts if h.name == name)

    def heartbeat(self) -> Heartbeat:
        """A started heartbeat thread for the locks this run holds (stop it at the end of the run)."""
        def locked() -> list[Host]:
            names = set(self.locked)
            return [h for h in self.stage.hosts if h.name in names]
        return Heartbeat(self.backend, locked, lambda: self.token, self.beats, limit=self.limit).start()

    def connect_all(self) -> None:
        """Open every connection (host keys verified); all must succeed."""
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
                failures.append(_one_line(outcome.error))
                if outcome.host.name in self.records:
                    self.records[outcome.host.name].error = _one_line(outcome.error)
        if failures:
            error = failures[0] if len(failures) == 1 else f"{len(failures)} hosts failed to connect: " + "; ".join(failures)
            kind = type(next(o.error for o in outcomes if not o.ok))
            raise (kind if issubclass(kind, DsasError) else RemoteError)(error + "; nothing was changed")

    def probe_all(self, owner: Optional[lockcmd.LockOwner], create: bool) -> dict[str, rel.HostProbe]:
        linked = self.stage.settings.linked_files
        outcomes = run_parallel(
            self.hosts, lambda h: self.backend.run(h, rel.probe_script(h.paths, linked, owner, create)), self.limit)
        probes, failures = {}, []
        for outcome in outcomes:
            name = outcome.host.name
            if not outcome.ok or not outcome.value.ok:
                failures.append(f"{name}: probe failed: {_reason(outcome)}")
                continue
            probe = rel.parse_probe(outcome.value.markers)
            probes[name] = probe
            if probe.lock == "acquired":
                self.locked.add(name)
                self.beats[name] = time.monotonic()
        if failures:
            self.release_locks()
            raise RemoteError("; ".join(failures) + "; nothing was changed")
        return probes

    def release_locks(self) -> None:
        """Give back every lock this run holds (best effort; leftovers are warned about)."""
        hosts = [h for h in self.hosts if h.name in self.locked]
        outcomes = run_parallel(hosts, lambda h: self.backend.run(h, lockcmd.release_lines(h.paths, self.token)),
                                self.limit)
        for outcome in outcomes:
            if outcome.ok and outcome.value.ok:
                self.locked.discard(outcome.host.name)
                self.bus.emit("lock", host=outcome.host.name, status="released")
            else:
                self.bus.emit("warning", host=outcome.host.name,
                              message=f"could not release the lock: {_reason(outcome)}; run `dsas unlock {self.stage.name}`")

    def lock_owner(self, command: str, revision: str) -> lockcmd.LockOwner:
        return lockcmd.LockOwner(
            token=self.token, owner=operator(), controller=socket.gethostname(),
            pid=os.getpid(), stage=self.stage.name, since=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            revision=revision, command=command)

    def acquire_locks(self, owner: lockcmd.LockOwner, lock_wait: float) -> dict[str, rel.HostProbe]:
        """Take the lock on every host, or none: waits up to `lock_wait` seconds, then exit 3."""
        deadline = time.monotonic() + max(0.0, lock_wait)
        contention_retries = 3
        while True:
            probes = self.probe_all(owner, create=True)
            missing = [n for n, p in probes.items() if p.lock not in ("acquired", "held")]
            if missing:
                self.release_locks()
                raise RemoteError("; ".join(f"{n}: {self.host_by_name(n).deploy_to} does not exist and cannot be "
                                            f"created" for n in missing) + "; nothing was changed")
            held = {name: p for name, p in probes.items() if p.lock != "acquired"}
            for name in probes:
                if name not in held:
                    self.bus.emit("lock", host=name, status="acquired")
            if not held:
                return probes
            self.release_locks()
            name, probe = next(iter(held.items()))
            holder = probe.lock_owner.describe(self.clock()) if probe.lock_owner else "an unknown owner (no owner file)"
            stale = lock_is_stale(probe.lock_owner, probe.lock_heartbeat_age)
            remaining = deadline - time.monotonic()
            started = probe.lock_owner.since_datetime() if probe.lock_owner else None
            racing = started is not None and abs((self.clock() - started).total_seconds()) < 10
            if racing and len(held) < len(probes) and contention_retries > 0:
                # two runs started together and split the hosts between them: both backed off;
                # retry after a random pause so that one of them wins instead of neither
                contention_retries -= 1
                time.sleep(random.uniform(0.1, 0.8))
                continue
            if remaining > 0 and not stale:
                self.bus.emit("lock", host=name, status="waiting", message=holder, seconds_left=round(remaining, 1))
                time.sleep(min(2.0, remaining))
                continue
            self.bus.emit("lock", host=name, status="held", message=holder, stale=bool(stale))
            hint = (f"; it is STALE (that process is gone): break it with `dsas unlock {self.stage.name}`"
                    if stale else f"; wait for it (--lock-wait SECONDS) or, if it is dead, `dsas unlock {self.stage.name}`")
            raise LockHeld(f"stage '{self.stage.name}' is locked on {name} ({len(held)} host(s)) by {holder}{hint}")

    def acquire_locks_safely(self, owner: lockcmd.LockOwner, lock_wait: float) -> dict[str, rel.HostProbe]:
        """acquire_locks, and on Ctrl-C/SIGTERM meanwhile give back whatever was taken."""
        try:
            return self.acquire_locks(owner, lock_wait)
        except KeyboardInterrupt:
            with signals_deferred():
                self.locked = {h.name for h in self.hosts}  # release_lines only removes OUR token
                self.release_locks()
            raise RemoteError("interrupted while taking the lock; nothing was changed") from None

    def phase(self, name: str, hosts: Sequence[Host], lines_for: Callable[[Host], list[str]],
              stdin: Optional[Path] = None, strict: bool = True) -> dict[str, tuple[bool, str, str]]:
        """Run one script per host in parallel; return name -> (ok, failing step, reason)."""
        started = time.monotonic()
        self.bus.emit("phase_started", phase=name, hosts=[h.name for h in hosts])

        def work(host: Host) -> ExecResult:
            lines = lines_for(host)
            if host.name in self.locked:  # every script to a locked host keeps its lock visibly alive
                lines = lockcmd.heartbeat_lines(host.paths, self.token) + lines
                self.beats[host.name] = time.monotonic()
            return self.backend.run(host, lines, stdin=stdin, strict=strict)

        results = {}
        for outcome in run_parallel(hosts, work, self.limit):
            host = outcome.host.name
            value = outcome.value
            if value is not None:
                self.outputs[host] = value
            ok = outcome.ok and value.ok
            step = last_step(value.markers) if value is not None else "connect"
            reason = "" if ok else _reason(outcome)
            seconds = round(value.seconds, 3) if value is not None else 0.0
            self.records.setdefault(host, HostRecord()).seconds[name] = seconds
            self.bus.emit("host_phase", host=host, phase=name, status="ok" if ok else "failed",
                          step=step, seconds=seconds, message=reason or None)
            results[host] = (ok, step, reason)
        failed = [h for h, (ok, _, _) in results.items() if not ok]
        self.bus.emit("phase_finished", phase=name, status="failed" if failed else "ok",
                      seconds=round(time.monotonic() - started, 3), failed=failed)
        return results

    def run_local_hooks(self, when: str, phase: str, env: dict[str, str]) -> None:
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

    def hook_env(self, release_id: str, revision: str) -> dict[str, str]:
        return {"DSAS_STAGE": self.stage.name, "DSAS_RELEASE": release_id, "DSAS_REVISION": revision,
                "DSAS_HOSTS": ",".join(h.name for h in self.hosts), "DSAS_PROJECT": str(self.stage.project_dir)}

    def log_entry(self, event: str, **fields: str) -> LogEntry:
        fields = {k: v for k, v in fields.items() if v}
        return LogEntry(self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"), event,
                        {**fields, "stage": self.stage.name, "by": operator()})

    # ---- deploy ----------------------------------------------------------------------

    def deploy(self, revision: str, ref: str, archive: Path, lock_wait: float, dry_run: bool) -> FlowResult:
        """Ship `archive` (the tree of `revision`) as a new release to every host."""
        settings = self.stage.settings
        self.attempt.update(revision=revision, ref=ref)
        for hook in unmatched_remote_hooks(self.stage, self.hosts):
            self.bus.emit("warning", message=f"hook {hook} names roles no selected host has; it will not run")
        self.connect_all()
        if dry_run:
            return self._dry_run_deploy(revision, ref, archive)
        probes = self.acquire_locks_safely(self.lock_owner("deploy", revision), lock_wait)
        release_id: Optional[str] = None
        switched = False
        contexts: dict[str, rel.ReleaseContext] = {}
        try:
            self._check_ready(probes, archive.stat().st_size)
            self.preflight_pool()
            release_id = next_release_id(self.clock(), {r for p in probes.values() for r in p.releases})
            self.attempt["release"] = release_id
            for host in self.hosts:
                contexts[host.name] = rel.ReleaseContext(self.stage.name, release_id, revision,
                                                         probes[host.name].current)
                self.records[host.name].previous = probes[host.name].current
            env = self.hook_env(release_id, revision)
            self.run_local_hooks("before", "prepare", env)
            results = self.phase("prepare", self.hosts, lambda h: rel.prepare_script(
                h.paths, contexts[h.name], settings.linked_files, settings.linked_dirs,
                before=remote_hooks(self.stage, "before", "prepare", h, self.hosts),
                after=remote_hooks(self.stage, "after", "prepare", h, self.hosts)), stdin=archive)
            self._raise_on_failure("prepare", results)
            self.run_local_hooks("after", "prepare", env)
            self.migrate(contexts, env)
            self.run_local_hooks("before", "publish", env)
            switched = True
            self.publish(contexts)
            self.run_local_hooks("after", "publish", env)
        except BaseException as exc:
            with signals_deferred():
                if switched:
                    reason = _one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
                    self._revert(contexts, reason, ref)
                else:
                    self._discard(release_id)
            if isinstance(exc, KeyboardInterrupt):
                where = "after the switch; every host was switched back" if switched else "before any switch; nothing changed"
                raise RemoteError(f"interrupted {where}") from None
            raise
        with signals_deferred():  # the release is live everywhere: finish, do not undo
            self.completed("deployed")  # the pool is whole: closed before the locks go (a waiting run starts clean)
            unfinished = self._finish(contexts, release_id, revision, ref, probes)
        self.run_local_hooks_quietly("after", "finish", self.hook_env(release_id, revision))
        return self.ended("deployed", f"release {release_id} ({revision[:12]}) is live on {len(self.hosts)} host(s)",
                          unfinished, release=release_id, revision=revision, ref=ref)

    def _migration_host(self) -> Optional[Host]:
        migration = self.stage.settings.migrate
        return self.stage.primary(migration.role) if migration is not None else None

    def migrate(self, contexts: dict[str, rel.ReleaseContext], env: dict[str, str]) -> None:
        """The migration, once on the primary of its role, before any host is switched."""
        migration, host = self.stage.settings.migrate, self.migration_host
        if migration is None or host is None:
            return
        self.run_local_hooks("before", "migrate", env)
        ctx = next(iter(contexts.values()))
        cwd = migration.cwd or host.deploy_to
        results = self.phase("migrate", [host], lambda h: rel.migrate_script(
            ctx, h.paths, cwd, migration.command,
            before=remote_hooks(self.stage, "before", "migrate", h, [h]),
            after=remote_hooks(self.stage, "after", "migrate", h, [h]), fallback_to_root=migration.cwd is None))
        self._raise_on_failure("migrate", results)
        self.run_local_hooks("after", "migrate", env)

    def preflight_pool(self) -> None:
        """Checks of the pool before anything changes (the rolling flow checks the LB)."""

    def dry_run_checks(self) -> None:
        """Read-only checks a dry run adds, of what the real run would refuse later (capacity guard)."""

    def publish(self, contexts: dict[str, rel.ReleaseContext], hook_phase: str = "publish") -> None:
        """Switch every host to its context's release and restart it, all at once.

        (The rolling flow does it in batches through the load balancer.)
        """
        results = self.phase("publish", self.hosts, lambda h: rel.publish_script(
            h.paths, contexts[h.name], self.stage.restart_commands(h),
            before=remote_hooks(self.stage, "before", hook_phase, h, self.hosts),
            after=remote_hooks(self.stage, "after", hook_phase, h, self.hosts)))
        self._raise_on_failure(hook_phase, results)

    def undo_rollback(self, contexts: dict[str, rel.ReleaseContext]) -> None:
        """A rollback failed half-way: every host back on what it had before the rollback."""
        back = {n: rel.ReleaseContext(c.stage, c.release_id, c.revision, c.previous) for n, c in contexts.items()}
        self._revert_without_mark(back)

    def completed(self, outcome: str) -> None:
        """Called once the run's changes are final (the rolling flow closes its journal)."""

    def _check_ready(self, probes: dict[str, rel.HostProbe], archive_bytes: int) -> None:
        """Refuse before any change: missing shared files, read-only or full disks, no tar."""
        problems = []
        need_kb = max(MIN_FREE_KB, archive_bytes * UNPACK_FACTOR // 1024)
        for host in self.hosts:
            probe = probes[host.name]
            if not probe.writable:
                problems.append(f"{host.name}: {host.deploy_to} is not writable")
            if not probe.tar:
                problems.append(f"{host.name}: tar is not installed")
            if probe.missing_linked_files:
                problems.append(f"{host.name}: missing linked file(s) in {host.paths.shared}: "
                                + ", ".join(probe.missing_linked_files))
            if probe.disk_free_kb is not None and probe.disk_free_kb < need_kb:
                problems.append(f"{host.name}: only {probe.disk_free_kb // 1024} MiB free under {host.deploy_to}, "
                                f"need {need_kb // 1024} MiB")
        if problems:
            raise RemoteError("; ".join(problems) + "; nothing was changed")

    def _raise_on_failure(self, phase: str, results: dict[str, tuple[bool, str, str]]) -> None:
        failed = [(h, step, reason) for h, (ok, step, reason) in results.items() if not ok]
        if failed:
            for host, _, reason in failed:
                self.records.setdefault(host, HostRecord()).error = reason
            text = "; ".join(f"{h}: {phase} failed at step '{step}': {reason}" for h, step, reason in failed)
            raise RemoteError(text)

    def _discard(self, release_id: Optional[str]) -> None:
        """Before the switch: remove the new release everywhere, release the locks."""
        hosts = [h for h in self.hosts if h.name in self.locked]
        results = self.phase("discard", hosts, lambda h: rel.discard_script(h.paths, release_id, self.token))
        for name, (ok, _, reason) in results.items():
            self.records[name].outcome = "unchanged" if ok else "discard_failed"
            if ok:
                self.locked.discard(name)
                self.bus.emit("lock", host=name, status="released")
            else:
                self.bus.emit("warning", host=name, message=f"could not remove release {release_id} or the lock: {reason}")

    def _revert(self, contexts: dict[str, rel.ReleaseContext], reason: str, ref: str) -> None:
        """After the switch: every host back on its previous release, restarted; release marked failed."""
        hosts = [h for h in self.hosts if h.name in contexts]
        ctx0 = next(iter(contexts.values()))
        entry = self.log_entry("failed", release=ctx0.release_id, revision=ctx0.revision, ref=ref,
                               reason=reason[:120])
        results = self.phase("revert", hosts, lambda h: rel.revert_script(
            h.paths, contexts[h.name], self.stage.restart_commands(h), entry, self.token), strict=False)
        stuck = []
        for host in hosts:
            ok, _, why = results.get(host.name, (False, "", "not run"))
            record = self.records[host.name]
            if ok:
                record.outcome, record.release = "reverted", contexts[host.name].previous
                self.locked.discard(host.name)
            else:
                record.outcome = "revert_failed"
                stuck.append(f"{host.name}: could not switch back to {contexts[host.name].previous or '(none)'}: {why}")
        if stuck:
            raise IncompleteRestore("; ".join(stuck) + f"; these hosts may serve release {ctx0.release_id}: "
                                    f"check them with `dsas releases {self.stage.name}`, fix, then "
                                    f"`dsas rollback {self.stage.name}` and `dsas unlock {self.stage.name}`")

    def _finish(self, contexts, release_id: str, revision: str, ref: str, probes) -> dict[str, str]:
        """Log, prune, unlock. The release is live: nothing is undone; returns {host: why} for
        the hosts where this could not be done (their lock and log line are missing)."""
        settings = self.stage.settings
        entry = self.log_entry("deployed", release=release_id, revision=revision, ref=ref)

        def prune_for(host: Host) -> list[str]:
            probe = probes[host.name]
            ids = set(probe.releases) | {release_id}
            protected = [release_id, contexts[host.name].previous]
            return releases_to_prune(ids, settings.keep_releases, protected, failed_releases(probe.log))

        results = self.phase("finish", self.hosts, lambda h: rel.finish_script(
            h.paths, entry, prune_for(h), self.token,
            hooks=remote_hooks(self.stage, "before", "finish", h, self.hosts)
            + remote_hooks(self.stage, "after", "finish", h, self.hosts)))
        return self._unfinished(results)

    def _unfinished(self, results: dict[str, tuple[bool, str, str]]) -> dict[str, str]:
        """After the point of no return: {host: why} for each host whose finish phase failed."""
        unfinished = {}
        for name, (ok, step, reason) in results.items():
            if ok:
                self.locked.discard(name)
            else:
                unfinished[name] = f"finishing failed at '{step}': {reason}"
                self.records[name].error = unfinished[name]
        return unfinished

    def ended(self, outcome: str, done: str, unfinished: dict[str, str], **result: Optional[str]) -> FlowResult:
        """The result of a run past its point of no return: exit 0 only if every host finished,
        else exit 4 naming the hosts that did not (outcome `<outcome>_unfinished`)."""
        for name, record in self.records.items():
            record.outcome = f"{outcome}_unfinished" if name in unfinished else outcome
            record.release = result.get("release")
        if unfinished:
            return FlowResult(ExitStatus.NEEDS_HUMAN, self.unfinished_message(done, unfinished), **result)
        return FlowResult(ExitStatus.OK, done, **result)

    def unfinished_message(self, done: str, unfinished: dict[str, str]) -> str:
        """Exit-4 text: what is live, which hosts could not finish, and the commands that fix them."""
        names = ",".join(unfinished)
        details = "; ".join(f"{name}: {why}" for name, why in unfinished.items())
        return (f"{done}, but {len(unfinished)} host(s) could not finish: {details}. On {names} the stage lock "
                f"is still held and the revisions.log line is missing; when the host answers again, check it "
                f"with `dsas releases {self.stage.name} --hosts {names}`, then `dsas unlock {self.stage.name} "
                f"--hosts {names}`")

    def run_local_hooks_quietly(self, when: str, phase: str, env: dict[str, str]) -> None:
        """Hooks after the point of no return: a failure is a warning, not a rollback."""
        try:
            self.run_local_hooks(when, phase, env)
        except DsasError as exc:
            self.bus.emit("warning", message=str(exc))

    def _dry_run_deploy(self, revision: str, ref: str, archive: Path) -> FlowResult:
        """Run the read-only probes for real; print each host's exact scripts; change nothing."""
        settings = self.stage.settings
        probes = self.probe_all(None, create=False)
        release_id = next_release_id(self.clock(), {r for p in probes.values() for r in p.releases})
        problems = []
        try:
            self._check_ready(probes, archive.stat().st_size)
            self.preflight_pool()
            self.dry_run_checks()
        except RemoteError as exc:
            problems.append(str(exc))
        entry = self.log_entry("deployed", release=release_id, revision=revision, ref=ref)
        for host in self.hosts:
            probe = probes[host.name]
            if probe.lock == "held":
                holder = probe.lock_owner.describe(self.clock()) if probe.lock_owner else "unknown owner"
                problems.append(f"{host.name}: lock held by {holder}")
            ctx = rel.ReleaseContext(self.stage.name, release_id, revision, probe.current)
            prune = releases_to_prune(set(probe.releases) | {release_id}, settings.keep_releases,
                                      [release_id, probe.current], failed_releases(probe.log))
            scripts = {
                "prepare": rel.prepare_script(host.paths, ctx, settings.linked_files, settings.linked_dirs,
                                              before=remote_hooks(self.stage, "before", "prepare", host, self.hosts),
                                              after=remote_hooks(self.stage, "after", "prepare", host, self.hosts)),
                "publish": rel.publish_script(host.paths, ctx, self.stage.restart_commands(host),
                                              before=remote_hooks(self.stage, "before", "publish", host, self.hosts),
                                              after=remote_hooks(self.stage, "after", "publish", host, self.hosts)),
                "finish": rel.finish_script(host.paths, entry, prune, "<lock token>"),
            }
            for phase, lines in scripts.items():
                stdin = f" < {archive.name}" if phase == "prepare" else ""
                self.bus.emit("script", host=host.name, phase=phase, script="\n".join(lines) + "\n",
                              stdin=stdin.strip(" <") or None)
        for problem in problems:
            self.bus.emit("warning", message=f"a real deploy would stop: {problem}")
        if problems:  # non-zero, so that CI can gate on a dry run
            return FlowResult(ExitStatus.FAILED_ROLLED_BACK, f"dry run: a real deploy would stop: {problems[0]}"
                              + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""),
                              release=release_id, revision=revision, ref=ref)
        return FlowResult(ExitStatus.OK, f"dry run: would deploy release {release_id} ({revision[:12]}) "
                          f"to {len(self.hosts)} host(s); nothing was changed",
                          release=release_id, revision=revision, ref=ref)

    # ---- rollback --------------------------------------------------------------------

    def rollback(self, requested: Optional[str], lock_wait: float, dry_run: bool) -> FlowResult:
        """Switch every host to an earlier good release (the previous one, or --to)."""
        self.connect_all()
        probes = (self.probe_all(None, create=False) if dry_run
                  else self.acquire_locks_safely(self.lock_owner("rollback", requested or ""), lock_wait))
        try:
            currents = {p.current for p in probes.values() if p.current}
            newest = max(currents) if currents else None
            log = [e for p in probes.values() for e in p.log]
            target = rollback_target(common_releases(p.releases for p in probes.values()), newest, log, requested)
            revision = next((p.releases.get(target, "") for p in probes.values()), "")
            self.attempt.update(release=target, revision=revision)
            contexts = {h.name: rel.ReleaseContext(self.stage.name, target, revision, probes[h.name].current)
                        for h in self.hosts}
            for name, ctx in contexts.items():
                self.records[name].previous = ctx.previous
            entry = self.log_entry("rolled_back", release=target, revision=revision,
                                   **{"from": ",".join(sorted(currents)) or "-"})
            if dry_run:
                for host in self.hosts:
                    ctx = contexts[host.name]
                    self.bus.emit("script", host=host.name, phase="publish", script="\n".join(
                        rel.publish_script(host.paths, ctx, self.stage.restart_commands(host), target=target)) + "\n")
                    self.bus.emit("script", host=host.name, phase="finish", script="\n".join(
                        rel.finish_script(host.paths, entry, [], "<lock token>")) + "\n")
                return FlowResult(ExitStatus.OK, f"dry run: would roll back to {target}; nothing was changed",
                                  release=target, revision=revision)
            env = self.hook_env(target, revision)
            self.preflight_pool()
            self.run_local_hooks("before", "rollback", env)
        except BaseException:
            if not dry_run:
                with signals_deferred():
                    self.release_locks()
            raise
        try:
            self.publish(contexts, hook_phase="rollback")
        except BaseException as exc:
            with signals_deferred():
                self.undo_rollback(contexts)
            if isinstance(exc, KeyboardInterrupt):
                raise RemoteError("rollback interrupted; every host was switched back") from None
            raise
        with signals_deferred():
            self.completed("rolled_back_by_request")  # closed before the locks go, as in deploy
            unfinished = self._unfinished(self.phase(
                "finish", self.hosts, lambda h: rel.finish_script(h.paths, entry, [], self.token)))
        self.run_local_hooks_quietly("after", "rollback", env)
        return self.ended("rolled_back", f"rolled back to release {target} ({revision[:12]}) on {len(self.hosts)} "
                          f"host(s)", unfinished, release=target, revision=revision)

    def _revert_without_mark(self, contexts: dict[str, rel.ReleaseContext]) -> None:
        hosts = list(self.hosts)
        results = self.phase("revert", hosts, lambda h: rel.revert_script(
            h.paths, contexts[h.name], self.stage.restart_commands(h), None, self.token), strict=False)
        stuck = [f"{n}: {why}" for n, (ok, _, why) in results.items() if not ok]
        for name, (ok, _, _) in results.items():
            if ok:
                self.locked.discard(name)
                self.records[name].outcome = "reverted"
        if stuck:
            raise IncompleteRestore("; ".join(stuck) + f"; check `dsas releases {self.stage.name}`")

    # ---- read-only and lock commands ----------------------------------------------------

    def nothing_to_recover(self, why: str, own_tokens: Sequence[str] = ()) -> FlowResult:
        """`recover` found no interrupted run: still, a stage lock may block every deploy.

        A lock of a dead run whose token is in `own_tokens` (the journal's last run) is
        released; any other lock is named with its `dsas unlock` command (exit 3 when it
        is stale or unknown: deploys are refused until it goes; exit 0 when a live run holds it).
        """
        hosts = self.stage.lock_hosts()
        notes: list[str] = []

        def read(host: Host) -> ExecResult:
            self.backend.connect(host)
            return self.backend.run(host, lockcmd.report_lines(host.paths))

        blocking, live = [], []
        for outcome in run_parallel(hosts, read, self.limit):
            name = outcome.host.name
            if not outcome.ok or not outcome.value.ok:
                notes.append(f"{name}: its lock could not be read ({_reason(outcome)})")
                continue
            probe = rel.parse_probe(outcome.value.markers)
            if probe.lock != "held":
                continue
            owner, stale = probe.lock_owner, lock_is_stale(probe.lock_owner, probe.lock_heartbeat_age)
            if stale and owner is not None and owner.token in own_tokens:
                released = self.backend.run(outcome.host, lockcmd.release_lines(outcome.host.paths, owner.token))
                if released.ok and "DSAS lock released" in released.stdout:
                    self.bus.emit("lock", host=name, status="released", message="left by the journal's dead run")
                    continue
            who = owner.describe(self.clock()) if owner else "an unknown owner (no owner file)"
            self.bus.emit("lock", host=name, status="held", message=who, stale=bool(stale))
            (live if stale is False else blocking).append((name, who, stale))
        text = f"nothing to recover: {why}"
        if blocking:
            names = ",".join(n for n, _, _ in blocking)
            name, who, stale = blocking[0]
            state = "STALE (its run is gone)" if stale else "of unknown liveness"
            text += (f"; but the stage lock is held on {names} by {who}, {state}: every deploy is refused until "
                     f"`dsas unlock {self.stage.name} --hosts {names}`")
        elif live:
            text += f"; the stage lock is held on {','.join(n for n, _, _ in live)} by a live run: {live[0][1]}"
        if notes:
            text += "; " + "; ".join(notes)
        return FlowResult(ExitStatus.LOCKED if blocking else ExitStatus.OK, text)


    def releases(self) -> FlowResult:
        """Per host: releases, their revisions, which is current, which failed."""
        self.connect_all()
        probes = self.probe_all(None, create=False)
        for host in self.hosts:
            probe = probes[host.name]
            failed = failed_releases(probe.log)
            self.bus.emit("host_state", host=host.name, current=probe.current, lock=probe.lock, releases=[
                {"id": rid, "revision": probe.releases[rid], "current": rid == probe.current, "failed": rid in failed}
                for rid in probe.release_ids])
        currents = {p.current for p in probes.values()}
        note = "" if len(currents) <= 1 else f"; hosts disagree on the current release: {sorted(map(str, currents))}"
        return FlowResult(ExitStatus.OK, f"{len(self.hosts)} host(s) listed{note}")

    def check(self) -> FlowResult:
        """Reachability, host key, writable deploy_to, free disk, tar, lock state, per host
        (the lock only, on a host that holds the stage lock without receiving releases)."""
        failing = 0
        releasing = set(self.stage.release_hosts(self.hosts))

        def one(host: Host) -> list[tuple[str, bool, str]]:
            checks: list[tuple[str, bool, str]] = []
            try:
                self.backend.connect(host)
            except DsasError as exc:
                return [("ssh", False, _one_line(exc))]
            checks.append(("ssh+host key", True, ""))
            result = self.backend.run(host, rel.probe_script(host.paths, self.stage.settings.linked_files, None, False))
            if not result.ok:
                return checks + [("probe", False, result.stderr_tail())]
            probe = rel.parse_probe(result.markers)
            if host in releasing:  # a DRBD node only holds the stage lock: its lock is all there is to check
                checks.append(("deploy_to writable", probe.writable, host.deploy_to if not probe.writable else ""))
                free = probe.disk_free_kb
                checks.append(("disk", free is not None and free >= MIN_FREE_KB, f"{(free or 0) // 1024} MiB free"))
                checks.append(("tar", probe.tar, "" if probe.tar else "not installed"))
                if probe.missing_linked_files:
                    checks.append(("linked files", False, "missing: " + ", ".join(probe.missing_linked_files)))
            if probe.lock == "held":
                stale = lock_is_stale(probe.lock_owner, probe.lock_heartbeat_age)
                who = probe.lock_owner.describe(self.clock()) if probe.lock_owner else "unknown owner"
                hint = f": `dsas unlock {self.stage.name} --hosts {host.name}`" if stale else ""
                checks.append(("lock", False, f"held by {who}" + (" (STALE)" if stale else "") + hint))
            else:
                checks.append(("lock", True, "free"))
            return checks

        for outcome in run_parallel(self.hosts, one, self.limit):
            checks = outcome.value if outcome.ok else [("probe", False, _one_line(outcome.error))]
            if not all(ok for _, ok, _ in checks):
                failing += 1
            self.bus.emit("host_state", host=outcome.host.name, status="ok" if all(ok for _, ok, _ in checks) else "failed",
                          checks=[list(c) for c in checks])
        if failing:
            return FlowResult(ExitStatus.FAILED_ROLLED_BACK, f"{failing} of {len(self.hosts)} host(s) failed a check")
        return FlowResult(ExitStatus.OK, f"all {len(self.hosts)} host(s) passed every check")

    def unlock(self, confirm: Callable[[str], bool]) -> FlowResult:
        """Break the stage lock where it is held (after confirmation unless stale)."""
        self.connect_all()
        probes = self.probe_all(None, create=False)
        held = [h for h in self.hosts if probes[h.name].lock == "held"]
        if not held:
            return FlowResult(ExitStatus.OK, f"stage '{self.stage.name}' is not locked on any selected host")
        owners = {}
        for host in held:
            owner = probes[host.name].lock_owner
            stale = lock_is_stale(owner, probes[host.name].lock_heartbeat_age)
            who = owner.describe(self.clock()) if owner else "unknown owner"
            owners[host.name] = (who, stale)
            self.bus.emit("lock", host=host.name, status="held", message=who, stale=bool(stale))
        if not all(stale for _, stale in owners.values()):
            who = next(w for w, s in owners.values() if not s)
            if not confirm(f"the lock is held by {who} and may be live; break it on {len(held)} host(s)?"):
                raise UsageError(f"not breaking a lock that may be live (held by {who}); pass --yes to break it anyway")
        results = self.phase("unlock", held, lambda h: lockcmd.break_lines(h.paths))
        for name, (ok, _, _) in results.items():
            if ok:
                self.bus.emit("lock", host=name, status="broken")
        if not all(ok for ok, _, _ in results.values()):
            raise RemoteError("could not break the lock on: " + ", ".join(n for n, (ok, _, _) in results.items() if not ok))
        return FlowResult(ExitStatus.OK, f"lock broken on {len(held)} host(s)")


def _one_line(exc: BaseException) -> str:
    """The first line of an error's text; never empty, never a dangling 'label:'."""
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else ""
    if not line:
        return type(exc).__name__
    if line.endswith(":"):  # a library error without a text (paramiko's EOFError, ...)
        return f"{line} no reason given ({type(exc).__name__}); the SSH connection was probably closed"
    return line


def without_host(name: str, text: str) -> str:
    """`text` without a leading 'NAME: ' (the caller names the host itself: never 'web2: web2: ...')."""
    prefix = f"{name}: "
    while text.startswith(prefix):
        text = text[len(prefix):]
    return text


def _reason(outcome) -> str:
    if outcome.error is not None:
        return without_host(outcome.host.name, _one_line(outcome.error))
    result = outcome.value
    tail = result.stderr_tail()
    return f"exit {result.exit_code}" + (f": {tail}" if tail else "")

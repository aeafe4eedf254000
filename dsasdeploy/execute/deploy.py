"""`dsas deploy`: ship a revision as a new release to every host, all or nothing.

    connect -> probe+lock -> plan -> prepare (archive on stdin) -> migrate -> publish -> finish

Nothing is switched unless every host prepared; a failure (or Ctrl-C, SIGTERM) before the
switch discards the new release everywhere; after it, the publish strategy takes every
host back to the release it had and the release is marked failed. Whatever could not be
undone is named, with exit 4. `--dry-run` prints the same plan the real run would send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..commands import release as rel
from ..errors import RemoteError
from ..paths import next_release_id
from ..plan.hooks import unmatched_remote_hooks
from ..plan.release import DeltaArchive, ReleasePlan, choose_shipments, deploy_plan
from ..status import ExitStatus
from .context import FlowResult, RunContext
from .locks import StageLocks
from .outcome import ended, finished_hosts, ready_problems
from .pool import one_line, signals_deferred
from .publish import Publisher

DRY_RUN_TOKEN = "DRY-RUN-LOCK-TOKEN"  # stands for the real run's token (q() leaves it bare, like a real one)


def migration_host(ctx: RunContext):
    """The primary of the migration's role, where `migrate` runs once (None: no migration)."""
    migration = ctx.stage.settings.migrate
    return ctx.stage.primary(migration.role) if migration is not None else None


class Deploy:
    """Runs one deploy with a publish strategy."""

    def __init__(self, ctx: RunContext, locks: StageLocks, publisher: Publisher,
                 delta_for: Callable[[str], Optional[DeltaArchive]] = lambda base: None, full: bool = False):
        self.ctx, self.locks, self.publisher = ctx, locks, publisher
        self.delta_for, self.full = delta_for, full
        self.migration_host = migration_host(ctx)
        if self.migration_host is not None:
            ctx.also_talk_to([self.migration_host])

    def plan(self, probes: dict[str, rel.HostProbe], revision: str, archive: Path) -> ReleasePlan:
        """The release plan, each host getting a delta on its current release where one can be built."""
        ctx = self.ctx
        release_id = next_release_id(ctx.clock(), {r for p in probes.values() for r in p.releases})
        shipments = choose_shipments(ctx.hosts, probes, archive, self.delta_for, self.full)
        return deploy_plan(ctx.stage, ctx.hosts, probes, release_id, revision, self.migration_host, shipments)

    def run(self, revision: str, ref: str, archive: Path, lock_wait: float, dry_run: bool) -> FlowResult:
        """Ship `revision` (its full `archive`, or deltas) as a new release to every host."""
        ctx = self.ctx
        ctx.attempt.update(revision=revision, ref=ref)
        if not dry_run:
            self.publisher.refuse_if_unfinished()
        for hook in unmatched_remote_hooks(ctx.stage, ctx.hosts):
            ctx.bus.emit("warning", message=f"hook {hook} names roles no selected host has; it will not run")
        ctx.connect_all()
        if dry_run:
            return self.dry_run(revision, ref, archive)
        probes = self.locks.acquire(ctx.lock_owner("deploy", revision), lock_wait)
        plan: Optional[ReleasePlan] = None
        switched = False
        try:
            problems = ready_problems(ctx, probes, archive.stat().st_size)
            if problems:
                raise RemoteError("; ".join(problems) + "; nothing was changed")
            self.publisher.preflight()
            plan = self.plan(probes, revision, archive)
            self.publisher.check_plan(plan)
            ctx.attempt["release"] = plan.release_id
            for host in ctx.hosts:
                record, shipment = ctx.records[host.name], plan.hosts[host.name].shipment
                record.previous, record.shipped = plan.context(host).previous, shipment.kind
                record.bytes_sent = shipment.archive.stat().st_size
            env = ctx.hook_env(plan.release_id, revision)
            ctx.run_local_hooks("before", "prepare", env)
            ctx.run_phase("prepare", ctx.hosts, lambda h: plan.script("prepare", h), stdin_for=plan.stdin)
            ctx.run_local_hooks("after", "prepare", env)
            self.migrate(plan, env)
            ctx.run_local_hooks("before", "publish", env)
            switched = True
            self.publisher.publish(plan)
            ctx.run_local_hooks("after", "publish", env)
        except BaseException as exc:
            with signals_deferred():
                if switched:
                    reason = one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
                    self.publisher.revert({n: p.context for n, p in plan.hosts.items()}, reason, ref)
                else:
                    self.discard(plan.release_id if plan else None)
            if isinstance(exc, KeyboardInterrupt):
                where = "after the switch; every host was switched back" if switched else "before any switch; nothing changed"
                raise RemoteError(f"interrupted {where}") from None
            raise
        with signals_deferred():  # the release is live everywhere: finish, do not undo
            self.publisher.completed("deployed")  # the pool is whole: closed before the locks go
            entry = ctx.log_entry("deployed", release=plan.release_id, revision=revision, ref=ref)
            unfinished = finished_hosts(ctx, ctx.phase("finish", ctx.hosts,
                                                       lambda h: plan.finish_script(h, entry, ctx.token)))
        ctx.run_local_hooks_quietly("after", "finish", ctx.hook_env(plan.release_id, revision))
        return ended(ctx, "deployed", f"release {plan.release_id} ({revision[:12]}) is live on {len(ctx.hosts)} "
                     f"host(s)", unfinished, release=plan.release_id, revision=revision, ref=ref)

    def migrate(self, plan: ReleasePlan, env: dict[str, str]) -> None:
        """The migration, once on the primary of its role, before any host is switched."""
        if plan.migrate is None:
            return
        host, script = plan.migrate
        self.ctx.run_local_hooks("before", "migrate", env)
        self.ctx.run_phase("migrate", [host], lambda h: script)
        self.ctx.run_local_hooks("after", "migrate", env)

    def discard(self, release_id: Optional[str]) -> None:
        """Before the switch: remove the new release everywhere, release the locks."""
        ctx = self.ctx
        hosts = [h for h in ctx.hosts if h.name in ctx.locked]
        results = ctx.phase("discard", hosts, lambda h: rel.discard_script(h.paths, release_id, ctx.token))
        for name, (ok, _, reason) in results.items():
            ctx.records[name].outcome = "unchanged" if ok else "discard_failed"
            if ok:
                ctx.locked.discard(name)
                ctx.bus.emit("lock", host=name, status="released")
            else:
                ctx.bus.emit("warning", host=name, message=f"could not remove release {release_id} or the lock: {reason}")

    def dry_run(self, revision: str, ref: str, archive: Path) -> FlowResult:
        """Run the read-only probes for real; print the plan's exact scripts; change nothing."""
        ctx = self.ctx
        probes = self.locks.probe_all(None, create=False)
        plan = self.plan(probes, revision, archive)
        problems = ready_problems(ctx, probes, archive.stat().st_size)
        try:
            self.publisher.preflight()
            self.publisher.check_plan(plan)
        except RemoteError as exc:
            problems.append(str(exc))
        for host in ctx.hosts:
            probe = probes[host.name]
            if probe.lock == "held":
                holder = probe.lock_owner.describe(ctx.clock()) if probe.lock_owner else "unknown owner"
                problems.append(f"{host.name}: lock held by {holder}")
        print_plan(ctx, plan, ctx.log_entry("deployed", release=plan.release_id, revision=revision, ref=ref))
        for problem in problems:
            ctx.bus.emit("warning", message=f"a real deploy would stop: {problem}")
        result = {"release": plan.release_id, "revision": revision, "ref": ref}
        if problems:  # non-zero, so that CI can gate on a dry run
            return FlowResult(ExitStatus.FAILED_ROLLED_BACK, f"dry run: a real deploy would stop: {problems[0]}"
                              + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""), **result)
        return FlowResult(ExitStatus.OK, f"dry run: would deploy release {plan.release_id} ({revision[:12]}) "
                          f"to {len(ctx.hosts)} host(s); nothing was changed", **result)


def print_plan(ctx: RunContext, plan: ReleasePlan, entry) -> None:
    """One `script` event per host and phase, in the order the real run sends them (prepare's
    with the name of the archive it streams: the full one, or a delta)."""
    if plan.batches:
        ctx.bus.emit("warning", message="dry run: batches would be " + " | ".join(
            ",".join(h.name for h in b) for b in plan.batches))
    for host, phase, lines in plan.scripts_in_order(entry, DRY_RUN_TOKEN):
        shipment = plan.hosts[host].shipment if host in plan.hosts else None
        ctx.bus.emit("script", host=host, phase=phase, script="\n".join(lines) + "\n",
                     stdin=shipment.archive.name if phase == "prepare" and shipment else None)

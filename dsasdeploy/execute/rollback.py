"""`dsas rollback`: every host back to an earlier good release (the previous one, or --to)."""

from __future__ import annotations

from typing import Optional

from ..errors import RemoteError
from ..plan.release import rollback_plan
from ..plan.releases import common_releases, rollback_target
from ..status import ExitStatus
from .context import FlowResult, RunContext
from .deploy import print_plan
from .locks import StageLocks
from .outcome import ended, finished_hosts
from .pool import signals_deferred
from .publish import Publisher


class Rollback:
    """Runs one rollback with a publish strategy (all at once, or rolling)."""

    def __init__(self, ctx: RunContext, locks: StageLocks, publisher: Publisher):
        self.ctx, self.locks, self.publisher = ctx, locks, publisher

    def run(self, requested: Optional[str], lock_wait: float, dry_run: bool) -> FlowResult:
        ctx = self.ctx
        if not dry_run:
            self.publisher.refuse_if_unfinished()
        ctx.connect_all()
        probes = (self.locks.probe_all(None, create=False) if dry_run
                  else self.locks.acquire(ctx.lock_owner("rollback", requested or ""), lock_wait))
        try:
            currents = {p.current for p in probes.values() if p.current}
            newest = max(currents) if currents else None
            log = [e for p in probes.values() for e in p.log]
            target = rollback_target(common_releases(p.releases for p in probes.values()), newest, log, requested)
            revision = next((p.releases.get(target, "") for p in probes.values()), "")
            ctx.attempt.update(release=target, revision=revision)
            plan = rollback_plan(ctx.stage, ctx.hosts, probes, target, revision)
            for host in ctx.hosts:
                ctx.records[host.name].previous = plan.context(host).previous
            entry = ctx.log_entry("rolled_back", release=target, revision=revision,
                                  **{"from": ",".join(sorted(currents)) or "-"})
            if dry_run:
                print_plan(ctx, plan, entry)
                return FlowResult(ExitStatus.OK, f"dry run: would roll back to {target}; nothing was changed",
                                  release=target, revision=revision)
            env = ctx.hook_env(target, revision)
            self.publisher.preflight()
            self.publisher.check_plan(plan)
            ctx.run_local_hooks("before", "rollback", env)
        except BaseException:
            if not dry_run:
                with signals_deferred():
                    self.locks.release()
            raise
        contexts = {n: p.context for n, p in plan.hosts.items()}
        try:
            self.publisher.publish(plan)
        except BaseException as exc:
            with signals_deferred():
                self.publisher.undo_rollback(contexts)
            if isinstance(exc, KeyboardInterrupt):
                raise RemoteError("rollback interrupted; every host was switched back") from None
            raise
        with signals_deferred():
            self.publisher.completed("rolled_back_by_request")  # closed before the locks go, as in deploy
            unfinished = finished_hosts(ctx, ctx.phase("finish", ctx.hosts,
                                                       lambda h: plan.finish_script(h, entry, ctx.token)))
        ctx.run_local_hooks_quietly("after", "rollback", env)
        return ended(ctx, "rolled_back", f"rolled back to release {target} ({revision[:12]}) on {len(ctx.hosts)} "
                     f"host(s)", unfinished, release=target, revision=revision)

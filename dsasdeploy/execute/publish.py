"""Publish strategies: how the prepared release goes live on the hosts, and the way back.

A deploy or rollback runs the same steps whatever the stage looks like; what differs is
the publish: `AllAtOnce` switches and restarts every host in one phase (no load balancer),
`Rolling` (rolling.py) goes batch by batch through the load balancer with gates and a
journal. The runners talk to a strategy only through the `Publisher` protocol.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

from ..commands import release as rel
from ..errors import IncompleteRestore
from ..inventory import Host
from ..plan.release import ReleasePlan
from .context import RunContext
from .lb import NullDriver, PoolDriver


class Publisher(Protocol):
    """What a runner asks of a publish strategy (all at once, or rolling)."""

    driver: PoolDriver

    def refuse_if_unfinished(self) -> None: ...

    def after_acquire(self, lock_wait: float) -> None: ...

    def preflight(self) -> None: ...

    def check_plan(self, plan: ReleasePlan) -> None:
        """Refuse (RemoteError) a plan the pool cannot take now, before anything changes."""

    def publish(self, plan: ReleasePlan) -> None: ...

    def revert(self, contexts: dict[str, rel.ReleaseContext], reason: str, ref: str) -> None: ...

    def undo_rollback(self, contexts: dict[str, rel.ReleaseContext]) -> None: ...

    def completed(self, outcome: str) -> None: ...

    def pool_problems(self) -> Optional[list[str]]:
        """For `dsas check`: what is wrong with the pool (None: no pool to check)."""

    def gates(self, batch: Sequence[Host], release_of: Callable[[Host], Optional[str]], warm: bool) -> None: ...


class AllAtOnce:
    """Every host switched and restarted in one phase; on failure every host switched back."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.driver: PoolDriver = NullDriver()

    def refuse_if_unfinished(self) -> None:
        return None

    def after_acquire(self, lock_wait: float) -> None:
        return None

    def preflight(self) -> None:
        return None

    def check_plan(self, plan: ReleasePlan) -> None:
        return None

    def publish(self, plan: ReleasePlan) -> None:
        self.ctx.raise_on_failure(plan.hook_phase, self.ctx.phase("publish", self.ctx.hosts,
                                                                  lambda h: plan.script("publish", h)))

    def revert(self, contexts: dict[str, rel.ReleaseContext], reason: str, ref: str) -> None:
        """After the switch: every host back on its previous release, restarted; release marked failed."""
        ctx = self.ctx
        hosts = [h for h in ctx.hosts if h.name in contexts]
        first = next(iter(contexts.values()))
        entry = ctx.log_entry("failed", release=first.release_id, revision=first.revision, ref=ref,
                              reason=reason[:120])
        results = ctx.phase("revert", hosts, lambda h: rel.revert_script(
            h.paths, contexts[h.name], ctx.stage.restart_commands(h), entry, ctx.token), strict=False)
        stuck = []
        for host in hosts:
            ok, _, why = results.get(host.name, (False, "", "not run"))
            record = ctx.records[host.name]
            if ok:
                record.outcome, record.release = "reverted", contexts[host.name].previous
                ctx.locked.discard(host.name)
            else:
                record.outcome = "revert_failed"
                stuck.append(f"{host.name}: could not switch back to {contexts[host.name].previous or '(none)'}: {why}")
        if stuck:
            raise IncompleteRestore("; ".join(stuck) + f"; these hosts may serve release {first.release_id}: "
                                    f"check them with `dsas releases {ctx.stage.name}`, fix, then "
                                    f"`dsas rollback {ctx.stage.name}` and `dsas unlock {ctx.stage.name}`")

    def undo_rollback(self, contexts: dict[str, rel.ReleaseContext]) -> None:
        """A rollback failed half-way: every host back on what it had before the rollback."""
        ctx = self.ctx
        results = ctx.phase("revert", ctx.hosts, lambda h: rel.revert_script(
            h.paths, contexts[h.name], ctx.stage.restart_commands(h), None, ctx.token), strict=False)
        stuck = [f"{n}: {why}" for n, (ok, _, why) in results.items() if not ok]
        for name, (ok, _, _) in results.items():
            if ok:
                ctx.locked.discard(name)
                ctx.records[name].outcome = "reverted"
        if stuck:
            raise IncompleteRestore("; ".join(stuck) + f"; check `dsas releases {ctx.stage.name}`")

    def completed(self, outcome: str) -> None:
        return None

    def pool_problems(self) -> Optional[list[str]]:
        return None

    def gates(self, batch: Sequence[Host], release_of: Callable[[Host], Optional[str]], warm: bool) -> None:
        return None

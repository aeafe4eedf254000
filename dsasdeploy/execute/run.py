"""One dsas command's run: its context, its stage locks and its publish strategy, wired once.

Tasks and recipes receive a `Run`; its attributes are the stable surface (docs/architecture.md):
`ctx` (RunContext: stage, hosts, backend, bus, phase and hook helpers), `locks` (StageLocks)
and `publisher` (AllAtOnce, or Rolling when the stage has an `lb:` section).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..inventory import Host, Stage
from ..plan.release import DeltaArchive
from ..report.events import EventBus
from . import inspect
from .backend import Backend
from .context import FlowResult, RunContext, utc_now
from .deploy import Deploy
from .heartbeat import Heartbeat
from .locks import StageLocks
from .publish import AllAtOnce, Publisher
from .rollback import Rollback
from .rolling import Rolling
from .rolling_recover import recover


class Run:
    """The runners of one command over one context."""

    def __init__(self, ctx: RunContext, publisher: Publisher):
        self.ctx, self.publisher = ctx, publisher
        self.locks = StageLocks(ctx, publisher.after_acquire)

    @classmethod
    def for_stage(cls, stage: Stage, hosts: Sequence[Host], backend: Backend, bus: EventBus,
                  clock: Callable[[], datetime] = utc_now) -> "Run":
        """A run over `hosts`: rolling through the load balancer when the stage has `lb:`."""
        ctx = RunContext(stage, tuple(hosts), backend, bus, clock=clock)
        return cls(ctx, Rolling(ctx) if stage.settings.lb is not None else AllAtOnce(ctx))

    @property
    def rolling(self) -> Optional[Rolling]:
        """The rolling strategy, if this stage publishes through a load balancer."""
        return self.publisher if isinstance(self.publisher, Rolling) else None

    def heartbeat(self) -> Heartbeat:
        return self.locks.heartbeat()

    def deploy(self, revision: str, ref: str, archive: Path, lock_wait: float, dry_run: bool,
               delta_for: Callable[[str], Optional[DeltaArchive]] = lambda base: None, full: bool = False) -> FlowResult:
        return Deploy(self.ctx, self.locks, self.publisher, delta_for, full).run(revision, ref, archive, lock_wait,
                                                                                 dry_run)

    def rollback(self, requested: Optional[str], lock_wait: float, dry_run: bool) -> FlowResult:
        return Rollback(self.ctx, self.locks, self.publisher).run(requested, lock_wait, dry_run)

    def releases(self) -> FlowResult:
        return inspect.releases(self.ctx)

    def check(self) -> FlowResult:
        return inspect.check(self.ctx, self.publisher)

    def unlock(self, confirm: Callable[[str], bool]) -> FlowResult:
        return inspect.unlock(self.ctx, confirm)

    def recover(self, forward: bool) -> FlowResult:
        """Finish an interrupted rolling release; without a load balancer, only the locks are looked at."""
        if self.rolling is None:
            return inspect.nothing_to_recover(self.ctx, f"stage '{self.ctx.stage.name}' has no lb section: "
                                                        f"there is no rolling release")
        return recover(self.ctx, self.locks, self.rolling, forward)

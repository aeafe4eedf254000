"""Pool drivers' common ground: what a driver gets from the run, the protocol, the null driver.

Each driver turns the pure builders of commands/lb into round trips on the directors,
verifies what it did by reading the state back, and describes every change as a
DrainRecord the journal keeps before the change is made. A driver gets only a PoolEnv
(the backend, the bus, the limit and what it must know of the stage), never the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

from ..errors import UsageError
from ..inventory import Host
from ..plan.drain import DrainRecord
from ..report.events import EventBus
from .backend import Backend


@dataclass(frozen=True)
class PoolEnv:
    """What a pool driver needs of the run."""

    backend: Backend
    bus: EventBus
    limit: int
    stage_name: str
    stage_hosts: tuple[Host, ...]  # every host the stage lists (a real server it does not know is a stranger)
    max_unavailable: object  # rollout.max_unavailable: a count or a percentage of a service's pool

    @classmethod
    def of(cls, ctx) -> "PoolEnv":
        """The pool environment of a RunContext."""
        stage = ctx.stage
        return cls(ctx.backend, ctx.bus, ctx.limit, stage.name, tuple(stage.hosts),
                   stage.settings.rollout.max_unavailable)


class PoolDriver(Protocol):
    """What the rolling strategy, recover and add-server ask of a load balancer."""

    def preflight(self, hosts: Sequence[Host]) -> None: ...

    def plan_drain(self, batch: Sequence[Host], cap: int, exempt: frozenset = frozenset()) -> list[DrainRecord]: ...

    def drain(self, records: list[DrainRecord]) -> None: ...

    def wait_drained(self, batch: Sequence[Host]) -> None: ...

    def restore(self, records: list[DrainRecord]) -> None: ...

    def attach_journal(self, journal) -> None: ...

    def ship_journal(self) -> None: ...

    def fleet_unfinished(self, fresh_read: bool = False) -> Optional[tuple[str, list[dict]]]: ...

    def pool_problems(self, hosts: Sequence[Host]) -> list[str]: ...

    def join_plan(self, host: Host, peers: Sequence[Host]) -> list[DrainRecord]: ...

    def join(self, records: list[DrainRecord], steps: list[int]) -> None: ...

    def leave(self, host: Host) -> list[str]: ...


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


class NoMembership:
    """Drivers that cannot add a real server to the pool (add-server leaves it to the operator)."""

    what = "this load balancer driver"

    def join_plan(self, host: Host, peers: Sequence[Host]) -> list[DrainRecord]:
        raise UsageError(f"{self.what} cannot add {host.name} to the pool: add it by hand")

    def join(self, records: list[DrainRecord], steps: list[int]) -> None:
        raise UsageError(f"{self.what} cannot add a server to the pool")

    def leave(self, host: Host) -> list[str]:
        return []


class NullDriver(NoFleetJournal, NoMembership):
    """lb.driver none (or no lb section): a plain rolling restart, nothing to drain."""

    what = "lb.driver none"

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

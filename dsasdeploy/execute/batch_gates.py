"""The gates of a batch: health (and warm-up) of every host of it, in parallel, as events."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..config.names import split_host_port
from ..inventory import Host
from .context import RunContext
from .gates import direct_opener, health_gate, warm_gate
from .pool import run_parallel


class BatchGates:
    """Checks hosts against the stage's `health:` and `warm:` settings."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def failures(self, batch: Sequence[Host], release_of: Callable[[Host], Optional[str]],
                 warm: bool) -> dict[str, str]:
        """{host name: why its gate failed} for the hosts of `batch` that failed (empty: all passed)."""
        ctx, settings = self.ctx, self.ctx.stage.settings
        if settings.health is None and (settings.warm is None or not warm):
            return {}
        port = (settings.health.port if settings.health and settings.health.port else None) or \
            (settings.lb.real_port if settings.lb else 80)

        def opener_for(host: Host):
            if settings.health is not None and settings.health.via == "ssh":
                return ctx.backend.tcp_opener(host)
            return direct_opener

        def check(host: Host) -> Optional[str]:
            if settings.health is not None:
                result = health_gate(host.address, settings.health, port, release_of(host), opener_for(host),
                                     stop=ctx.cancel)
                ctx.bus.emit("gate", host=host.name, name="health", status="ok" if result.ok else "failed",
                             seconds=round(result.seconds, 2), attempts=result.attempts,
                             release=release_of(host), message=result.reason or None)
                if not result.ok:
                    return f"{host.name}: health check failed: {result.reason}"
            if warm and settings.warm is not None:
                result = warm_gate(host.address, port, settings.warm, self.memcached_servers(), opener_for(host))
                ctx.bus.emit("gate", host=host.name, name="warm", status="ok" if result.ok else "failed",
                             seconds=round(result.seconds, 2), figures=result.figures,
                             message=result.reason or None)
                if not result.ok:
                    return f"{host.name}: warm-up gate failed: {result.reason}"
            return None

        failures = {o.host.name: o.value if o.ok else f"{o.host.name}: gate error: {o.reason()}"
                    for o in run_parallel(batch, check, ctx.limit, cancel=ctx.cancel)}
        failures = {name: text for name, text in failures.items() if text}
        for name, text in failures.items():
            if name in ctx.records:
                ctx.records[name].error = text
        return failures

    def memcached_servers(self) -> list[tuple[str, int]]:
        """The memcached servers the warm gate reads: `warm.memcached`, else the memcached role's hosts."""
        warm = self.ctx.stage.settings.warm
        if warm is not None and warm.memcached:
            return [(host, int(port or 11211)) for host, port in map(split_host_port, warm.memcached)]
        return [(h.address, 11211) for h in self.ctx.stage.hosts_with_role("memcached")]

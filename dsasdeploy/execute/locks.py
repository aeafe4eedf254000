"""The stage lock on every host of a run: probe (with or without taking it), wait, give back.

The lock itself is a directory on each host (commands/lock.py); taking it rides on the
read-only probe of the host, so it costs no extra round trip.
"""

from __future__ import annotations

import os
import random
import socket
import time
from typing import Callable, Optional

from ..commands import lock as lockcmd
from ..commands import release as rel
from ..errors import LockHeld, RemoteError
from ..inventory import Host
from .context import RunContext
from .heartbeat import Heartbeat
from .pool import run_parallel, signals_deferred


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


class StageLocks:
    """Takes, waits for and gives back the stage lock on the run's hosts (ctx.locked is the truth).

    `after_acquire` runs once every lock is held, before anything changes (the rolling
    strategy waits there for the previous run's journal); if it raises, the locks go back.
    """

    def __init__(self, ctx: RunContext, after_acquire: Callable[[float], None] = lambda lock_wait: None):
        self.ctx = ctx
        self.after_acquire = after_acquire

    def heartbeat(self) -> Heartbeat:
        """A started heartbeat thread for the locks this run holds (stop it at the end of the run)."""
        ctx = self.ctx

        def locked() -> list[Host]:
            names = set(ctx.locked)
            return [h for h in ctx.stage.hosts if h.name in names]
        return Heartbeat(ctx.backend, locked, lambda: ctx.token, ctx.beats, limit=ctx.limit).start()

    def probe_all(self, owner: Optional[lockcmd.LockOwner], create: bool) -> dict[str, rel.HostProbe]:
        """Every host's release state, in one round trip each; with `owner`, the lock is taken too."""
        ctx = self.ctx
        linked = ctx.stage.settings.linked_files
        outcomes = run_parallel(
            ctx.hosts, lambda h: ctx.backend.run(h, rel.probe_script(h.paths, linked, owner, create)), ctx.limit)
        probes, failures = {}, []
        for outcome in outcomes:
            name = outcome.host.name
            if not outcome.ok or not outcome.value.ok:
                failures.append(f"{name}: probe failed: {outcome.reason()}")
                continue
            probe = rel.parse_probe(outcome.value.markers)
            probes[name] = probe
            if probe.lock == "acquired":
                ctx.locked.add(name)
                ctx.beats[name] = time.monotonic()
        if failures:
            self.release()
            raise RemoteError("; ".join(failures) + "; nothing was changed")
        return probes

    def release(self) -> None:
        """Give back every lock this run holds (best effort; leftovers are warned about)."""
        ctx = self.ctx
        hosts = [h for h in ctx.hosts if h.name in ctx.locked]
        outcomes = run_parallel(hosts, lambda h: ctx.backend.run(h, lockcmd.release_lines(h.paths, ctx.token)),
                                ctx.limit)
        for outcome in outcomes:
            if outcome.ok and outcome.value.ok:
                ctx.locked.discard(outcome.host.name)
                ctx.bus.emit("lock", host=outcome.host.name, status="released")
            else:
                ctx.bus.emit("warning", host=outcome.host.name, message=f"could not release the lock: "
                             f"{outcome.reason()}; run `dsas unlock {ctx.stage.name}`")

    def acquire(self, owner: lockcmd.LockOwner, lock_wait: float) -> dict[str, rel.HostProbe]:
        """Take the lock on every host, or none: waits up to `lock_wait` seconds, then exit 3;
        on Ctrl-C/SIGTERM meanwhile, whatever was taken is given back."""
        try:
            probes = self._acquire(owner, lock_wait)
            self.after_acquire(lock_wait)
        except KeyboardInterrupt:
            with signals_deferred():
                self.ctx.locked = {h.name for h in self.ctx.hosts}  # release_lines only removes OUR token
                self.release()
            raise RemoteError("interrupted while taking the lock; nothing was changed") from None
        except BaseException:
            with signals_deferred():
                self.release()
            raise
        return probes

    def _acquire(self, owner: lockcmd.LockOwner, lock_wait: float) -> dict[str, rel.HostProbe]:
        ctx = self.ctx
        deadline = time.monotonic() + max(0.0, lock_wait)
        contention_retries = 3
        while True:
            probes = self.probe_all(owner, create=True)
            missing = [n for n, p in probes.items() if p.lock not in ("acquired", "held")]
            if missing:
                self.release()
                raise RemoteError("; ".join(f"{n}: {ctx.host_by_name(n).deploy_to} does not exist and cannot be "
                                            f"created" for n in missing) + "; nothing was changed")
            held = {name: p for name, p in probes.items() if p.lock != "acquired"}
            for name in probes:
                if name not in held:
                    ctx.bus.emit("lock", host=name, status="acquired")
            if not held:
                return probes
            self.release()
            name, probe = next(iter(held.items()))
            holder = probe.lock_owner.describe(ctx.clock()) if probe.lock_owner else "an unknown owner (no owner file)"
            stale = lock_is_stale(probe.lock_owner, probe.lock_heartbeat_age)
            remaining = deadline - time.monotonic()
            started = probe.lock_owner.since_datetime() if probe.lock_owner else None
            racing = started is not None and abs((ctx.clock() - started).total_seconds()) < 10
            if racing and len(held) < len(probes) and contention_retries > 0:
                # two runs started together and split the hosts between them: both backed off;
                # retry after a random pause so that one of them wins instead of neither
                contention_retries -= 1
                time.sleep(random.uniform(0.1, 0.8))
                continue
            if remaining > 0 and not stale:
                ctx.bus.emit("lock", host=name, status="waiting", message=holder, seconds_left=round(remaining, 1))
                time.sleep(min(2.0, remaining))
                continue
            ctx.bus.emit("lock", host=name, status="held", message=holder, stale=bool(stale))
            hint = (f"; it is STALE (that process is gone): break it with `dsas unlock {ctx.stage.name}`"
                    if stale else f"; wait for it (--lock-wait SECONDS) or, if it is dead, `dsas unlock {ctx.stage.name}`")
            raise LockHeld(f"stage '{ctx.stage.name}' is locked on {name} ({len(held)} host(s)) by {holder}{hint}")

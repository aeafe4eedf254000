"""Read-only and lock commands: releases, check, unlock, and recover's "nothing to recover"."""

from __future__ import annotations

from typing import Callable, Sequence

from ..commands import lock as lockcmd
from ..commands import release as rel
from ..commands.revlog import failed_releases
from ..errors import DsasError, RemoteError, UsageError
from ..inventory import Host
from ..status import ExitStatus
from .backend import ExecResult
from .context import FlowResult, RunContext
from .locks import StageLocks, lock_is_stale
from .outcome import MIN_FREE_KB
from .pool import one_line, run_parallel
from .publish import Publisher


def nothing_to_recover(ctx: RunContext, why: str, own_tokens: Sequence[str] = ()) -> FlowResult:
    """`recover` found no interrupted run: still, a stage lock may block every deploy.

    A lock of a dead run whose token is in `own_tokens` (the journal's last run) is
    released; any other lock is named with its `dsas unlock` command (exit 3 when it
    is stale or unknown: deploys are refused until it goes; exit 0 when a live run holds it).
    """
    hosts = ctx.stage.lock_hosts()
    notes: list[str] = []

    def read(host: Host) -> ExecResult:
        ctx.backend.connect(host)
        return ctx.backend.run(host, lockcmd.report_lines(host.paths))

    blocking, live = [], []
    for outcome in run_parallel(hosts, read, ctx.limit):
        name = outcome.host.name
        if not outcome.ok or not outcome.value.ok:
            notes.append(f"{name}: its lock could not be read ({outcome.reason()})")
            continue
        probe = rel.parse_probe(outcome.value.markers)
        if probe.lock != "held":
            continue
        owner, stale = probe.lock_owner, lock_is_stale(probe.lock_owner, probe.lock_heartbeat_age)
        if stale and owner is not None and owner.token in own_tokens:
            released = ctx.backend.run(outcome.host, lockcmd.release_lines(outcome.host.paths, owner.token))
            if released.ok and lockcmd.RELEASED in released.markers:
                ctx.bus.emit("lock", host=name, status="released", message="left by the journal's dead run")
                continue
        who = owner.describe(ctx.clock()) if owner else "an unknown owner (no owner file)"
        ctx.bus.emit("lock", host=name, status="held", message=who, stale=bool(stale))
        (live if stale is False else blocking).append((name, who, stale))
    text = f"nothing to recover: {why}"
    if blocking:
        names = ",".join(n for n, _, _ in blocking)
        name, who, stale = blocking[0]
        state = "STALE (its run is gone)" if stale else "of unknown liveness"
        text += (f"; but the stage lock is held on {names} by {who}, {state}: every deploy is refused until "
                 f"`dsas unlock {ctx.stage.name} --hosts {names}`")
    elif live:
        text += f"; the stage lock is held on {','.join(n for n, _, _ in live)} by a live run: {live[0][1]}"
    if notes:
        text += "; " + "; ".join(notes)
    return FlowResult(ExitStatus.LOCKED if blocking else ExitStatus.OK, text)


def releases(ctx: RunContext) -> FlowResult:
    """Per host: releases, their revisions, which is current, which failed."""
    ctx.connect_all()
    probes = StageLocks(ctx).probe_all(None, create=False)
    for host in ctx.hosts:
        probe = probes[host.name]
        failed = failed_releases(probe.log)
        ctx.bus.emit("host_state", host=host.name, current=probe.current, lock=probe.lock, releases=[
            {"id": rid, "revision": probe.releases[rid], "current": rid == probe.current, "failed": rid in failed}
            for rid in probe.release_ids])
    currents = {p.current for p in probes.values()}
    note = "" if len(currents) <= 1 else f"; hosts disagree on the current release: {sorted(map(str, currents))}"
    return FlowResult(ExitStatus.OK, f"{len(ctx.hosts)} host(s) listed{note}")


def check(ctx: RunContext, publisher: Publisher) -> FlowResult:
    """Reachability, host key, writable deploy_to, free disk, tar, lock state, per host
    (the lock only, on a host that holds the stage lock without receiving releases); then the
    pool's problems the publish strategy finds (rolling: on every director)."""
    failing = 0
    releasing = set(ctx.stage.release_hosts(ctx.hosts))

    def one(host: Host) -> list[tuple[str, bool, str]]:
        checks: list[tuple[str, bool, str]] = []
        try:
            ctx.backend.connect(host)
        except DsasError as exc:
            return [("ssh", False, one_line(exc))]
        checks.append(("ssh+host key", True, ""))
        result = ctx.backend.run(host, rel.probe_script(host.paths, ctx.stage.settings.linked_files, None, False))
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
            who = probe.lock_owner.describe(ctx.clock()) if probe.lock_owner else "unknown owner"
            hint = f": `dsas unlock {ctx.stage.name} --hosts {host.name}`" if stale else ""
            checks.append(("lock", False, f"held by {who}" + (" (STALE)" if stale else "") + hint))
        else:
            checks.append(("lock", True, "free"))
        return checks

    for outcome in run_parallel(ctx.hosts, one, ctx.limit):
        checks = outcome.value if outcome.ok else [("probe", False, one_line(outcome.error))]
        if not all(ok for _, ok, _ in checks):
            failing += 1
        ctx.bus.emit("host_state", host=outcome.host.name, status="ok" if all(ok for _, ok, _ in checks) else "failed",
                     checks=[list(c) for c in checks])
    pool = publisher.pool_problems()
    if pool is not None:
        ctx.bus.emit("host_state", host="pool", status="failed" if pool else "ok",
                     checks=[["pool", not pool, "; ".join(pool)]])
    if pool:
        return FlowResult(ExitStatus.FAILED_ROLLED_BACK, "; ".join(pool))
    if failing:
        return FlowResult(ExitStatus.FAILED_ROLLED_BACK, f"{failing} of {len(ctx.hosts)} host(s) failed a check")
    return FlowResult(ExitStatus.OK, f"all {len(ctx.hosts)} host(s) passed every check")


def unlock(ctx: RunContext, confirm: Callable[[str], bool]) -> FlowResult:
    """Break the stage lock where it is held (after confirmation unless stale)."""
    ctx.connect_all()
    probes = StageLocks(ctx).probe_all(None, create=False)
    held = [h for h in ctx.hosts if probes[h.name].lock == "held"]
    if not held:
        return FlowResult(ExitStatus.OK, f"stage '{ctx.stage.name}' is not locked on any selected host")
    owners = {}
    for host in held:
        owner = probes[host.name].lock_owner
        stale = lock_is_stale(owner, probes[host.name].lock_heartbeat_age)
        who = owner.describe(ctx.clock()) if owner else "unknown owner"
        owners[host.name] = (who, stale)
        ctx.bus.emit("lock", host=host.name, status="held", message=who, stale=bool(stale))
    if not all(stale for _, stale in owners.values()):
        who = next(w for w, s in owners.values() if not s)
        if not confirm(f"the lock is held by {who} and may be live; break it on {len(held)} host(s)?"):
            raise UsageError(f"not breaking a lock that may be live (held by {who}); pass --yes to break it anyway")
    results = ctx.phase("unlock", held, lambda h: lockcmd.break_lines(h.paths))
    for name, (ok, _, _) in results.items():
        if ok:
            ctx.bus.emit("lock", host=name, status="broken")
    if not all(ok for ok, _, _ in results.values()):
        raise RemoteError("could not break the lock on: " + ", ".join(n for n, (ok, _, _) in results.items() if not ok))
    return FlowResult(ExitStatus.OK, f"lock broken on {len(held)} host(s)")

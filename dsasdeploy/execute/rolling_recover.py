"""`dsas recover`: after a crash, every server back in service on one release.

Reads the rolling journal (here, or the directors' copy when this controller has none),
drains before it switches, and switches + restarts every host the crashed run may have
touched: back to the release each host had (default) or forward to the new one.
"""

from __future__ import annotations

import socket
from typing import Optional

from ..commands import release as rel
from ..errors import IncompleteRestore, LockHeld, UsageError
from ..inventory import Host
from ..plan.release import publish_script_for, rolling_batches
from ..status import ExitStatus
from .context import FlowResult, RunContext
from .inspect import nothing_to_recover
from .journal import JournalState
from .locks import StageLocks, pid_alive
from .pool import signals_deferred
from .rolling import Rolling, about


def unfinished_records(ctx: RunContext, rolling: Rolling) -> Optional[list[dict]]:
    """The journal of an unfinished rolling release: this controller's, else a director's copy."""
    records = rolling.journal.unfinished()
    if not records:  # not here: this may be another checkout or CI workspace; ask the directors
        found = rolling.driver.fleet_unfinished(fresh_read=True)
        if found:
            director, records = found
            rolling.journal.adopt(records)
            ctx.bus.emit("warning", host=director, message=(
                f"no unfinished run in {rolling.journal.path}; recovering the one recorded on {director}"))
    return records


def recover(ctx: RunContext, locks: StageLocks, rolling: Rolling, forward: bool) -> FlowResult:
    """Works on the hosts the journal names (not on --hosts)."""
    records = unfinished_records(ctx, rolling)
    if not records:
        last_run = [r.get("token") for r in rolling.journal.records() if r.get("event") == "begin"][-1:]
        return nothing_to_recover(ctx, f"no unfinished rolling release of '{ctx.stage.name}' "
                                       f"(here or on the directors)", own_tokens=last_run)
    state = JournalState.replay(records)
    begin = state.begin
    if begin.get("controller") == socket.gethostname() and str(begin.get("pid", "")).isdigit() \
            and pid_alive(int(begin["pid"])) is True:
        raise LockHeld(f"the run that wrote {rolling.journal.path} (pid {begin['pid']}) is still running; "
                       f"let it finish or stop it first")
    by_name = {h.name: h for h in ctx.stage.hosts}
    names = begin.get("hosts") or []
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UsageError(f"the journal names hosts no longer in stage '{ctx.stage.name}': {', '.join(missing)}")
    ctx.act_on([by_name[n] for n in names])
    ctx.aux_hosts = tuple(h for h in ctx.stage.hosts_with_role("lb") if h.name not in names)
    release, revision = begin.get("release"), begin.get("revision", "")
    if "published" in [r.get("event") for r in records]:
        forward = True  # every host was already on the new release and in service
    ctx.token = begin.get("token", ctx.token)  # act as the dead run: its lock is ours to release
    ctx.attempt.update(release=release, revision=revision)
    ctx.connect_all()
    probes = locks.probe_all(None, create=False)
    contexts = {n: rel.ReleaseContext(ctx.stage.name, release, revision, state.previous.get(n)) for n in names}
    ctx.bus.emit("recover", status="started", release=release, forward=forward,
                 drained=sorted(state.drained), switched=sorted(state.switched))

    def target(host: Host) -> Optional[str]:
        return release if forward else contexts[host.name].previous

    unknown = [h.name for h in ctx.hosts if target(h) is None]
    if unknown:
        raise IncompleteRestore(f"{', '.join(unknown)} had no release before the interrupted run: there is "
                                f"nothing to go back to; use `dsas recover {ctx.stage.name} --forward`")
    # a host switched and still drained may not have restarted: switch (and restart) it again; a
    # host switched and restored finished its batch: only its `current` decides (no re-drain)
    change = {h.name for h in ctx.hosts if (h.name in state.switched and h.name in state.drained)
              or probes[h.name].current != target(h)}
    script = (lambda h: publish_script_for(ctx.stage, h, ctx.hosts, contexts[h.name], "publish")) if forward else None
    stuck: list[str] = []
    with signals_deferred():
        drained = [h for h in ctx.hosts if h.name in state.drained]
        batches = [(drained, [r for h in drained for r in state.drained[h.name]])] if drained else []
        rest = [h for h in ctx.hosts if h.name not in state.drained and h.name in change]
        batches += [(list(b), None) for b in (rolling_batches(ctx.stage, rest) if rest else ())]
        for batch, journal_records in batches:
            try:
                rolling.roll_batch(batch, lambda h: contexts[h.name], forward=script, record_gated=forward,
                                   records=journal_records, switch=change if journal_records else None)
            except Exception as exc:  # noqa: BLE001 - every other batch must still be recovered
                leftover, rolling.in_flight = rolling.in_flight, None
                if leftover is not None:
                    stuck += rolling.undo_in_flight(leftover, lambda h: contexts[h.name])
                stuck.append(f"{', '.join(h.name for h in batch)}: {about(batch, exc)}")
        was_rollback = begin.get("command") == "rollback"
        event = "deployed" if forward and not was_rollback else ("rolled_back" if forward else "failed")
        # going back from a release that passed every host's gates: it is not a failed release
        # (rollback may still pick it); only one that did not get that far is marked failed
        proven = not forward and set(names) <= state.gated
        entry = None if (was_rollback and not forward) or proven else ctx.log_entry(
            event, release=release, revision=revision, reason="" if forward else "recovered_after_crash")
        ctx.phase("finish", ctx.hosts, strict=False,
                  lines_for=lambda h: rel.log_and_unlock_script(h.paths, entry, ctx.token))
        if stuck:
            raise IncompleteRestore("; ".join(stuck) + f"; the journal {rolling.journal.path} is kept")
        rolling.journal.end("recovered_forward" if forward else "recovered_back")
        rolling.driver.ship_journal()
    where = f"release {release}" if forward else "the release each host had before"
    for host in ctx.hosts:
        ctx.records[host.name].outcome, ctx.records[host.name].release = "recovered", target(host)
    return FlowResult(ExitStatus.OK, f"recovered: every host in service on {where}", release=target(ctx.hosts[0]))

"""`dsas drbd recover`: after a switchover that died (SIGKILL, a lost controller), one Primary
serving again, the stage lock it held released, its journal closed.

Which node may be promoted is decided from what the nodes say now and what the journal (this
controller's, or the copies on the nodes) says happened:
- one node is Primary: it serves (mount, service IP, services; the peer holds none of them);
- none is: the journal's source (the original primary) is promoted. Connected and UpToDate on
  both sides, any node is safe (`--to` may choose); disconnected, only the source, and only if
  the target never began its promote (the source then holds the newest data);
- both are: split brain, a human must choose the victim (never --force, never automatic).
"""

from __future__ import annotations

from typing import Optional

from ..commands import drbd as cmd
from ..commands import lock as lockcmd
from ..errors import IncompleteRestore, RemoteError, UsageError
from ..inventory import Host
from ..status import ExitStatus
from .context import FlowResult
from .drbd import DrbdFlow
from .pool import run_parallel, signals_deferred


def choose_primary(states: dict, records: list[dict], to: Optional[str]) -> tuple[str, bool]:
    """(node to serve on, whether it must be promoted first); RemoteError when no safe choice."""
    primaries = [n for n, s in states.items() if s is not None and s.role == "Primary"]
    if len(primaries) > 1:
        raise IncompleteRestore(f"both nodes are Primary ({', '.join(primaries)}): split brain; a human must "
                                f"choose the victim (`drbdadm secondary` + `connect --discard-my-data` there)")
    if primaries:
        if to is not None and to != primaries[0]:
            raise RemoteError(f"--to {to}: {primaries[0]} is the Primary; recover serves on it (switch over later)")
        return primaries[0], False
    begin = records[0] if records else {}
    candidate = to or begin.get("source")
    if candidate is None:
        raise RemoteError("no node is Primary and no switchover journal says which held the newest data: choose "
                          "one with --to NODE after checking both (`drbdadm dstate`, the data itself)")
    if candidate not in states:
        raise UsageError(f"--to: '{candidate}' is not a node of this resource ({', '.join(states)})")
    state = states[candidate]
    if state is None:
        raise RemoteError(f"{candidate} is unreachable: it cannot be promoted")
    other = next(n for n in states if n != candidate)
    connected = state.cstate == "Connected" and (state.disk, state.peer_disk) == ("UpToDate", "UpToDate")
    if not connected:
        target_promoted = any(r.get("event") == "step" and r.get("name") == "promote" and r.get("on") == other
                              and not r.get("undo") for r in records)
        if candidate != begin.get("source") or target_promoted:
            raise RemoteError(
                f"{candidate} is not Connected/UpToDate ({state.describe()}) and the journal does not prove it "
                f"holds the newest data" + (f" ({other} began a promote)" if target_promoted else "")
                + ": check both nodes' data, then promote one by hand (never --force)")
    return candidate, True


def recover(flow: DrbdFlow, to: Optional[str]) -> FlowResult:
    """Bring the resource back to one Primary serving; close the journal; release the lock."""
    found = flow.unfinished_run()
    where, records = found if found else ("", [])
    states = flow.read(probe_link=True)
    serve_on, promote = choose_primary(states, records, to)
    hosts = {h.name: h for h in flow.nodes}
    others = [h for h in flow.nodes if h.name != serve_on and states.get(h.name) is not None]
    flow.ctx.bus.emit("recover", status="started", resource=flow.resource.name, primary=serve_on,
                  message=f"serving {flow.resource.name} on {serve_on}" + (f" (journal: {where})" if where else ""))
    with signals_deferred():
        # the peer first: it must not hold the service IP or the mount when the primary takes them
        for host in others:
            _run(flow, host, "release the service", cmd.stop_services(flow.resource) + cmd.drop_ip(flow.resource))
        if promote:
            _run(flow, hosts[serve_on], "promote", cmd.reclaim(flow.resource))
        _run(flow, hosts[serve_on], "serve", cmd.mount(flow.resource) + cmd.add_ip(flow.resource)
             + cmd.start_services(flow.resource))
        problems = flow.services_healthy(serve_on, flow.read().get(serve_on), deadline=flow.health_timeout)
        if problems:
            raise IncompleteRestore(f"{flow.resource.name} is Primary on {serve_on} but its services do not "
                                    f"answer: {'; '.join(problems)}; the journal is kept")
        token = records[0].get("token") if records else None
        if token:
            _release_lock(flow, token)
        if records:
            if not flow.journal.unfinished():
                flow.journal.adopt(records)
            flow.journal.end("recovered")
            flow.ship_to_nodes()
    what = "promoted and serving" if promote else "serving"
    return FlowResult(ExitStatus.OK, f"recovered: {flow.resource.name} Primary on {serve_on}, {what}; services answer"
                      + ("" if records else " (no unfinished switchover was recorded)"))


def _run(flow: DrbdFlow, host: Host, name: str, lines: list[str]) -> None:
    result = flow.ctx.backend.run(host, lines)
    flow.ctx.bus.emit("drbd_step", host=host.name, phase=f"recover: {name}", status="ok" if result.ok else "failed",
                  seconds=round(result.seconds, 3), message=None if result.ok else result.stderr_tail())
    if not result.ok:
        raise IncompleteRestore(f"recover of {flow.resource.name}: {name} on {host.name} failed: "
                                f"{result.stderr_tail() or f'exit {result.exit_code}'}; the journal is kept")


def _release_lock(flow: DrbdFlow, token: str) -> None:
    """The stage lock the dead switchover took (its token only), on the nodes and release hosts."""
    ctx = flow.ctx
    for outcome in run_parallel(flow.lock_hosts, lambda h: ctx.backend.run(h, lockcmd.release_lines(h.paths, token)),
                                ctx.limit):
        if outcome.ok and outcome.value.ok and lockcmd.RELEASED in outcome.value.markers:
            ctx.bus.emit("lock", host=outcome.host.name, status="released",
                          message="released the lock of the dead switchover")

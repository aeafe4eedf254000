"""What runners share about a run's start and end: readiness checks, the finish, the result."""

from __future__ import annotations

from typing import Optional

from ..commands import release as rel
from ..status import ExitStatus
from .context import FlowResult, PhaseResults, RunContext

MIN_FREE_KB = 100 * 1024
UNPACK_FACTOR = 4  # free space wanted per byte of compressed archive


def ready_problems(ctx: RunContext, probes: dict[str, rel.HostProbe], archive_bytes: int) -> list[str]:
    """Why a host cannot take a release (missing shared files, read-only or full disk, no tar)."""
    problems = []
    need_kb = max(MIN_FREE_KB, archive_bytes * UNPACK_FACTOR // 1024)
    for host in ctx.hosts:
        probe = probes[host.name]
        if not probe.writable:
            problems.append(f"{host.name}: {host.deploy_to} is not writable")
        if not probe.tar:
            problems.append(f"{host.name}: tar is not installed")
        if probe.missing_linked_files:
            problems.append(f"{host.name}: missing linked file(s) in {host.paths.shared}: "
                            + ", ".join(probe.missing_linked_files))
        if probe.disk_free_kb is not None and probe.disk_free_kb < need_kb:
            problems.append(f"{host.name}: only {probe.disk_free_kb // 1024} MiB free under {host.deploy_to}, "
                            f"need {need_kb // 1024} MiB")
    return problems


def finished_hosts(ctx: RunContext, results: PhaseResults) -> dict[str, str]:
    """After the point of no return: {host: why} for each host whose finish phase failed
    (the others gave their lock back)."""
    unfinished = {}
    for name, (ok, step, reason) in results.items():
        if ok:
            ctx.locked.discard(name)
        else:
            unfinished[name] = f"finishing failed at '{step}': {reason}"
            ctx.records[name].error = unfinished[name]
    return unfinished


def ended(ctx: RunContext, outcome: str, done: str, unfinished: dict[str, str],
          **result: Optional[str]) -> FlowResult:
    """The result of a run past its point of no return: exit 0 only if every host finished,
    else exit 4 naming the hosts that did not (outcome `<outcome>_unfinished`)."""
    for name, record in ctx.records.items():
        record.outcome = f"{outcome}_unfinished" if name in unfinished else outcome
        record.release = result.get("release")
    if unfinished:
        return FlowResult(ExitStatus.NEEDS_HUMAN, unfinished_message(ctx.stage.name, done, unfinished), **result)
    return FlowResult(ExitStatus.OK, done, **result)


def unfinished_message(stage: str, done: str, unfinished: dict[str, str]) -> str:
    """Exit-4 text: what is live, which hosts could not finish, and the commands that fix them."""
    names = ",".join(unfinished)
    details = "; ".join(f"{name}: {why}" for name, why in unfinished.items())
    return (f"{done}, but {len(unfinished)} host(s) could not finish: {details}. On {names} the stage lock "
            f"is still held and the revisions.log line is missing; when the host answers again, check it "
            f"with `dsas releases {stage} --hosts {names}`, then `dsas unlock {stage} --hosts {names}`")

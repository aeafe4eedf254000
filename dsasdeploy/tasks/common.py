"""What every dsas command shares: options, config loading, reporter, summary, exit code.

Tasks only wire arguments: they load the stage, pick hosts and call the run (execute/run.py).
One place (here) turns a DsasError into its exit code and a final summary event.

Building the command list imports every task module: they import the configuration, the
runner (Fabric, paramiko), the reporters and the rest inside the functions that use them,
so that `dsas config STAGE` loads none of the SSH code.
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from invoke import Exit

from ..environment import Environment, current_environment
from ..errors import DsasError, UsageError
from ..status import ExitStatus

if TYPE_CHECKING:
    from ..execute.context import FlowResult
    from ..execute.run import Run
    from ..inventory import Host, Stage

COMMON_HELP = {
    "stage": "Stage to act on: the name of a file in stages/ (e.g. production).",
    "hosts": "Only these hosts: comma-separated names or addresses, globs allowed (web*).",
    "roles": "Only hosts with these roles: comma-separated, globs allowed.",
    "dry-run": "Run the read-only probes for real, print each host's exact scripts, change nothing.",
    "yes": "Answer yes to confirmations (needed without a terminal, e.g. in CI).",
    "json": "Print one JSON event per line on stdout (schema: docs/events.md).",
    "report": "Write a final JSON summary to this file (for CI artifacts).",
    "lock-wait": "Seconds to wait for another deploy's lock before giving up (exit 3).",
    "accept-new-host-keys": "Trust and record host keys not yet in known_hosts (a CHANGED key is always refused).",
    "revision": "Branch, tag or commit to deploy (default: the stage's branch).",
}


@dataclass(frozen=True)
class Options:
    """The options common to remote commands."""

    hosts: Optional[str] = None
    roles: Optional[str] = None
    dry_run: bool = False
    yes: bool = False
    json: bool = False
    report: Optional[str] = None
    lock_wait: int = 0
    accept_new_host_keys: bool = False


def interactive(env: Optional[Environment] = None) -> bool:
    """A person at a terminal (not CI, not a pipe), as the run's environment says."""
    return bool((env or current_environment()).is_terminal)


def confirmer(options: Options, reporter, env: Optional[Environment] = None) -> Callable[[str], bool]:
    """Ask on a terminal; without one, only --yes says yes (never a hanging prompt)."""
    env = env or current_environment()

    def confirm(question: str) -> bool:
        if options.yes:
            return True
        if not interactive(env):
            raise UsageError(f"{question} -- needs confirmation: pass --yes (no terminal to ask on)")
        suspend = getattr(reporter, "close", None)
        if suspend:
            suspend()
        return env.ask(question)
    return confirm


def load(stage_name: str) -> Stage:
    from ..config.load import find_project_dir, load_stage

    return load_stage(stage_name, find_project_dir())


def run_remote(command: str, stage_name: str, options: Options,
               body: Callable[[Run, Stage, Callable[[str], bool]], FlowResult],
               release_hosts_only: bool = True,
               pick_hosts: Optional[Callable[[Stage], tuple[Host, ...]]] = None, read_only: bool = False,
               lock_hosts: bool = False) -> None:
    """Load, select hosts, run `body` with a Run; summary + report + exit code always.

    The selected hosts are those that receive releases, or with `lock_hosts` every host that
    can hold the stage lock (the DRBD nodes too: `dsas drbd switchover` locks them).

    An unexpected error (a bug) exits 4 only when a host may have been changed: not for a
    `read_only` command or a dry run, nor before the first remote command; else it exits 1."""
    from ..execute.context import FlowResult
    from ..execute.run import Run
    from ..inventory import select_hosts, split_list
    from ..report.console import make_reporter
    from ..report.events import EventBus

    read_only = read_only or options.dry_run
    env = current_environment()
    reporter = make_reporter(options.json, env.stdout)
    bus = EventBus(stage_name, reporter)
    backend = None
    run: Optional[Run] = None
    heartbeat = None
    result = FlowResult(ExitStatus.NEEDS_HUMAN, "internal error")
    try:
        stage = load(stage_name)
        hosts = select_hosts(stage, split_list(options.hosts), split_list(options.roles))
        if pick_hosts is not None:
            hosts = pick_hosts(stage)
        elif lock_hosts:
            hosts = stage.lock_hosts(hosts)
            if not hosts:
                raise UsageError(f"no selected host of stage '{stage_name}' can hold the stage lock "
                                 f"(a host with a role that receives releases, or a DRBD node)")
        elif release_hosts_only:
            hosts = stage.release_hosts(hosts)
            if not hosts:
                raise UsageError(f"no selected host of stage '{stage_name}' has a role that receives releases")
        backend = env.backend_factory(stage, options.accept_new_host_keys)
        for warning in backend.warnings:
            bus.emit("warning", message=warning)
        run = Run.for_stage(stage, hosts, backend, bus)
        if not read_only:
            heartbeat = run.heartbeat()  # keeps the locks this run takes visibly alive
        result = body(run, stage, confirmer(options, reporter, env))
    except DsasError as exc:
        result = FlowResult(exc.exit_status, str(exc), **(run.ctx.attempt if run else {}))
    except KeyboardInterrupt:
        result = FlowResult(ExitStatus.FAILED_ROLLED_BACK, "interrupted", **(run.ctx.attempt if run else {}))
    except Exception as exc:  # a bug: exit 4 only if a host may have been changed
        changed = not read_only and backend is not None and sum(backend.exec_counts.values()) > 0
        result = FlowResult(ExitStatus.NEEDS_HUMAN if changed else ExitStatus.FAILED_ROLLED_BACK,
                            f"internal error: {type(exc).__name__}: {exc}", **(run.ctx.attempt if run else {}))
        exc.dsas_nothing_changed = not changed  # read by the top-level handler (cli_program.py)
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if backend is not None:
            backend.close()
        summary = _summary(command, result, run, backend)
        bus.emit("summary", status="ok" if result.status == 0 else "failed", message=result.message, **summary)
        bus.close()
        if options.report:
            _write_report(Path(options.report), stage_name, command, result, summary)
    if result.status != ExitStatus.OK:
        raise Exit(_prefixed(result.message), code=int(result.status))


def _prefixed(message: str) -> str:
    return "\n".join(f"dsas: error: {line}" for line in message.splitlines())


def _summary(command: str, result: FlowResult, run: Optional[Run], backend) -> dict:
    data = {"command": command, "exit_code": int(result.status), "release": result.release,
            "revision": result.revision, "ref": result.ref}
    if run is not None:
        data["hosts"] = {name: {k: v for k, v in vars(rec).items() if v not in (None, {}, "")}
                         for name, rec in run.ctx.records.items()}
    if backend is not None:
        data["round_trips"] = dict(backend.exec_counts)
        if backend.beat_counts:
            data["heartbeats"] = dict(backend.beat_counts)
    return {k: v for k, v in data.items() if v is not None}


def _write_report(path: Path, stage: str, command: str, result: FlowResult, summary: dict) -> None:
    report = {"schema": 1, "stage": stage, "status": "ok" if result.status == 0 else "failed",
              "message": result.message, **summary}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(jsonlib.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        print(f"dsas: warning: could not write report {path}: {exc.strerror}", file=sys.stderr)

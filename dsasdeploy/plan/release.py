"""Pure: the release plan of a deploy or a rollback, from the stage and the hosts' probes.

Per host: its release context, its prune list and the exact script of each phase with its
hooks; for the run: the migration (host + script) and the batches of a rolling publish.
The runner only runs what is here, and `--dry-run` prints the same plan, so the two cannot
drift. The finish script is built when it is sent (`finish_script`): its revisions.log
line carries the time the release went live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..commands import release as rel
from ..commands.revlog import LogEntry, failed_releases
from ..inventory import Host, Stage
from .hooks import remote_hooks
from .releases import releases_to_prune
from .rollout import max_unavailable, plan_batches


@dataclass(frozen=True)
class DeltaArchive:
    """What a host on commit `base` needs to hold `new`: the archive of the changed files, and
    every changed or deleted path to remove from the copy of its release first (delta.py)."""

    base: str
    new: str
    archive: Path
    remove: tuple[str, ...]
    changed: int


@dataclass(frozen=True)
class Shipment:
    """What prepare streams to one host: the full archive, or a delta on its current release."""

    archive: Path
    delta: Optional[rel.Delta] = None

    @property
    def kind(self) -> str:
        return f"delta from {self.delta.base}" if self.delta else "full"


@dataclass(frozen=True)
class HostPlan:
    """One host's part of a release: where it goes from, and the scripts that take it there."""

    host: Host
    context: rel.ReleaseContext
    prune: tuple[str, ...] = ()
    scripts: dict[str, list[str]] = field(default_factory=dict)  # phase -> script lines (prepare, publish)
    shipment: Optional[Shipment] = None


@dataclass(frozen=True)
class ReleasePlan:
    """Everything a deploy (`kind` deploy) or a rollback (`kind` rollback) will send."""

    kind: str
    release_id: str
    revision: str
    hosts: dict[str, HostPlan]
    finish_hooks: dict[str, list[tuple[str, str]]]  # host name -> its before/after finish hooks
    migrate: Optional[tuple[Host, list[str]]] = None
    batches: tuple[tuple[Host, ...], ...] = ()

    @property
    def hook_phase(self) -> str:
        """The hook phase of the publish step: `publish`, or `rollback` when rolling back."""
        return "rollback" if self.kind == "rollback" else "publish"

    def script(self, phase: str, host: Host) -> list[str]:
        return self.hosts[host.name].scripts[phase]

    def context(self, host: Host) -> rel.ReleaseContext:
        return self.hosts[host.name].context

    def stdin(self, host: Host) -> Path:
        """What prepare streams to `host`."""
        return self.hosts[host.name].shipment.archive

    def finish_script(self, host: Host, entry: LogEntry, lock_token: str) -> list[str]:
        """Log `entry`, prune, run the finish hooks and give back the lock."""
        return rel.finish_script(host.paths, entry, list(self.hosts[host.name].prune), lock_token,
                                 hooks=self.finish_hooks.get(host.name, []))

    def scripts_in_order(self, entry: LogEntry, lock_token: str) -> list[tuple[str, str, list[str]]]:
        """(host, phase, script) of every script the run sends, in the order it sends them per host."""
        out = []
        for name, plan in self.hosts.items():
            for phase, lines in plan.scripts.items():
                if phase == "publish" and self.migrate is not None and self.migrate[0].name == name:
                    out.append((name, "migrate", self.migrate[1]))
                out.append((name, phase, lines))
            out.append((name, "finish", self.finish_script(plan.host, entry, lock_token)))
        if self.migrate is not None and self.migrate[0].name not in self.hosts:
            out.append((self.migrate[0].name, "migrate", self.migrate[1]))
        return out


def rolling_batches(stage: Stage, hosts: Sequence[Host]) -> tuple[tuple[Host, ...], ...]:
    """The batches a rolling publish takes `hosts` out of the pool in (none without `lb:`)."""
    if stage.settings.lb is None:
        return ()
    pool = len(stage.release_hosts())
    return tuple(tuple(b) for b in plan_batches(hosts, stage.settings.rollout, pool))


def rolling_cap(stage: Stage) -> int:
    """How many servers of the pool may be out of service at once."""
    return max_unavailable(stage.settings.rollout, len(stage.release_hosts()))


def publish_script_for(stage: Stage, host: Host, hosts: Sequence[Host], ctx: rel.ReleaseContext,
                       hook_phase: str) -> list[str]:
    """Switch `host` to `ctx`'s release and restart it, with the hooks of `hook_phase` around."""
    return rel.publish_script(host.paths, ctx, stage.restart_commands(host),
                              before=remote_hooks(stage, "before", hook_phase, host, hosts),
                              after=remote_hooks(stage, "after", hook_phase, host, hosts))


def choose_shipments(hosts: Sequence[Host], probes: dict[str, rel.HostProbe], full: Path,
                     delta_for: Callable[[str], Optional[DeltaArchive]], force_full: bool = False) -> dict[str, Shipment]:
    """Per host: a delta on its current release when that release is intact (its manifest holds)
    and its revision is known (`delta_for(revision)`: None if not, or not worth it), else the full
    archive (first deploy, unknown or changed base, `force_full`). Each delta is built once."""
    deltas: dict[str, Optional[DeltaArchive]] = {}
    shipments = {}
    for host in hosts:
        probe = probes[host.name]
        base_revision = probe.releases.get(probe.current or "", "")
        if force_full or not probe.base_intact or not base_revision:
            shipments[host.name] = Shipment(full)
            continue
        if base_revision not in deltas:
            deltas[base_revision] = delta_for(base_revision)
        found = deltas[base_revision]
        shipments[host.name] = Shipment(full) if found is None else \
            Shipment(found.archive, rel.Delta(probe.current, found.remove))
    return shipments


def deploy_plan(stage: Stage, hosts: Sequence[Host], probes: dict[str, rel.HostProbe], release_id: str,
                revision: str, migration_host: Optional[Host] = None,
                shipments: Optional[dict[str, Shipment]] = None) -> ReleasePlan:
    """The plan of deploying `revision` as release `release_id` to `hosts`, as probed; what
    each host's prepare receives is in `shipments` (default: nothing known, no delta)."""
    settings = stage.settings
    plans, finish_hooks = {}, {}
    for host in hosts:
        probe = probes[host.name]
        shipment = (shipments or {}).get(host.name)
        ctx = rel.ReleaseContext(stage.name, release_id, revision, probe.current)
        prune = releases_to_prune(set(probe.releases) | {release_id}, settings.keep_releases,
                                  [release_id, probe.current], failed_releases(probe.log))
        scripts = {
            "prepare": rel.prepare_script(host.paths, ctx, settings.linked_files, settings.linked_dirs,
                                          before=remote_hooks(stage, "before", "prepare", host, hosts),
                                          after=remote_hooks(stage, "after", "prepare", host, hosts),
                                          delta=shipment.delta if shipment else None),
            "publish": publish_script_for(stage, host, hosts, ctx, "publish"),
        }
        plans[host.name] = HostPlan(host, ctx, tuple(prune), scripts, shipment)
        finish_hooks[host.name] = (remote_hooks(stage, "before", "finish", host, hosts)
                                   + remote_hooks(stage, "after", "finish", host, hosts))
    migrate = None
    if settings.migrate is not None and migration_host is not None:
        first = next(iter(plans.values())).context
        cwd = settings.migrate.cwd or migration_host.deploy_to
        migrate = (migration_host, rel.migrate_script(
            first, migration_host.paths, cwd, settings.migrate.command,
            before=remote_hooks(stage, "before", "migrate", migration_host, [migration_host]),
            after=remote_hooks(stage, "after", "migrate", migration_host, [migration_host]),
            fallback_to_root=settings.migrate.cwd is None))
    return ReleasePlan("deploy", release_id, revision, plans, finish_hooks, migrate, rolling_batches(stage, hosts))


def rollback_plan(stage: Stage, hosts: Sequence[Host], probes: dict[str, rel.HostProbe], target: str,
                  revision: str) -> ReleasePlan:
    """The plan of switching `hosts` back to release `target` (nothing pruned, no finish hooks)."""
    plans = {}
    for host in hosts:
        ctx = rel.ReleaseContext(stage.name, target, revision, probes[host.name].current)
        plans[host.name] = HostPlan(host, ctx, (), {"publish": publish_script_for(stage, host, hosts, ctx, "rollback")})
    return ReleasePlan("rollback", target, revision, plans, {}, None, rolling_batches(stage, hosts))

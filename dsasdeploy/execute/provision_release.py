"""add-server's release steps: the live release on the new host, then the new host in the pool.

`deploy` takes the stage lock on the peers and the new host (held to the end of add-server,
so no deploy can start that would miss the new host), rebuilds the release the peers serve
(same id, same revision), publishes it on the new host alone and runs the stage's health
and warm gates on it. `join_pool` adds it to every director's virtual services that serve
a peer, at weight 0, then ramps it to the peers' weight; `leave_pool` takes it out again.
"""

from __future__ import annotations

from typing import Optional

from ..commands import release as rel
from ..errors import DsasError, RemoteError, UsageError
from ..inventory import Host
from ..scm import build_archive, open_repository, resolve
from .pool import signals_deferred
from .provision_journal import ProvisionJournal
from .run import Run


class ReleaseJoin:
    """The new host serving the peers' live release behind the load balancer, through `run`
    (its hosts: the peers and the new host)."""

    def __init__(self, run: Run, new_host: Host, peers: tuple[Host, ...], journal: ProvisionJournal,
                 lock_wait: float):
        self.run, self.new_host, self.peers = run, new_host, peers
        self.journal, self.lock_wait = journal, lock_wait

    # ---- 1. validate (its load balancer part) -------------------------------------------
    def refuse_unsupported_pool(self) -> None:
        """UsageError for a pool add-server cannot add a server to."""
        lb = self.run.ctx.stage.settings.lb
        if lb is not None and lb.driver == "haproxy":
            raise UsageError("lb.driver haproxy: add-server cannot add a server to a HAProxy backend at runtime; "
                             "add a (disabled) server line for it to the HAProxy configuration first")
        if lb is not None and lb.driver == "lvs" and lb.keepalived == "maintenance_file":
            raise UsageError("lb.keepalived maintenance_file: keepalived owns the pool and would undo a raw "
                             "ipvsadm -a; add the real server to keepalived.conf (with its health check) instead")

    def pool_problems(self) -> list[str]:
        """Read-only, now: an install must not end in a pool that cannot take the host."""
        lb = self.run.ctx.stage.settings.lb
        if lb is None or lb.driver != "lvs" or self.journal.done("join_pool"):
            return []
        try:
            self.run.publisher.driver.join_plan(self.new_host, self.peers)
        except DsasError as exc:
            return [f"load balancer: {exc}"]
        return []

    # ---- 8. the live release ------------------------------------------------------------
    def lock(self) -> dict[str, rel.HostProbe]:
        self.run.publisher.refuse_if_unfinished()  # an interrupted rolling release may have peers drained
        self.run.ctx.connect_all()
        return self.run.locks.acquire(self.run.ctx.lock_owner("add-server", ""), self.lock_wait)

    def live_release(self, probes: dict[str, rel.HostProbe]) -> tuple[Optional[str], Optional[str]]:
        """(release id, revision) the peers serve; (None, None) if they serve none yet."""
        new = self.new_host.name
        currents = {p.current.rsplit("/", 1)[-1] for n, p in probes.items() if n != new and p.current}
        if not currents:
            return None, None
        if len(currents) > 1:
            raise RemoteError(f"the peers serve different releases ({', '.join(sorted(currents))}): finish or roll "
                              f"back that deploy first")
        release = currents.pop()
        peer = next(p for n, p in probes.items() if n != new and p.current)
        revision = peer.releases.get(release, "")
        if not revision:
            raise RemoteError(f"release {release} has no REVISION file on the peers: cannot rebuild it")
        return release, revision

    def deploy(self) -> str:
        return self.deploy_from(self.lock())

    def deploy_from(self, probes: dict[str, rel.HostProbe]) -> str:
        """The peers' live release on the new host (prepared unless it has it), published, its gates passed."""
        ctx = self.run.ctx
        stage, new = ctx.stage, self.new_host
        release, revision = self.live_release(probes)
        if release is None:
            ctx.bus.emit("warning", host=new.name, message="the peers have no release yet: nothing to deploy")
            return "no live release"
        settings = stage.settings
        context = rel.ReleaseContext(stage.name, release, revision, None)
        # the scripts without hooks, on purpose: add-server runs no deploy hooks
        if release not in probes[new.name].releases:
            repo = open_repository(settings.repo, stage.project_dir, stage.blame("repo"))
            archive = build_archive(repo, resolve(repo, revision, "the peers' revision"), settings.application)
            ctx.run_phase("prepare", [new], lambda h: rel.prepare_script(
                h.paths, context, settings.linked_files, settings.linked_dirs, before=[], after=[]), stdin=archive)
        # always: a resumed run must not trust a restart that failed last time
        ctx.run_phase("publish", [new], lambda h: rel.publish_script(
            h.paths, context, stage.restart_commands(h), before=[], after=[]))
        self.run.publisher.gates([new], lambda h: release, warm=True)
        entry = ctx.log_entry("deployed", release=release, revision=revision, ref="add-server")
        result = ctx.backend.run(new, rel.log_lines(new.paths, entry))
        if not result.ok:
            ctx.bus.emit("warning", host=new.name, message="could not write revisions.log on the new host")
        self.journal.save(release=release, revision=revision)
        return f"release {release} ({revision[:12]}) live on {new.name}, gates passed"

    # ---- 9. load balancer ---------------------------------------------------------------
    def join_pool(self) -> str:
        ctx = self.run.ctx
        lb = ctx.stage.settings.lb
        if lb is None or lb.driver == "none":
            return "no load balancer configured"
        if not ctx.locked:  # a resumed run: the lock was let go since `deploy`
            probes = self.lock()
            release, _ = self.live_release(probes)
            current = (probes[self.new_host.name].current or "").rsplit("/", 1)[-1]
            if release and current != release:
                ctx.bus.emit("warning", host=self.new_host.name, message=f"the peers now serve {release}, "
                             f"{self.new_host.name} has {current or 'nothing'}: deploying it first")
                self.deploy_from(probes)
        driver = self.run.publisher.driver
        records = driver.join_plan(self.new_host, self.peers)
        steps = lb.restore_steps if len(lb.restore_steps) > 1 else [25, 50, 100]
        try:
            driver.join(records, steps)
        except BaseException:
            with signals_deferred():
                self.leave_pool()
            raise
        self.journal.save(pool=[{"director": r.director, "service": r.service, "weight": r.weight} for r in records])
        return ", ".join(f"{r.director} {r.service} weight {r.weight}" for r in records)

    def leave_pool(self) -> bool:
        """Out of every director's pool; False (and a warning saying so) if that is not proven."""
        try:
            self.run.publisher.driver.leave(self.new_host)
            return True
        except DsasError as exc:
            self.run.ctx.bus.emit("warning", host=self.new_host.name, message=f"could not take "
                                  f"{self.new_host.address} out of the pool: {exc}; remove it by hand")
            return False

"""`dsas add-server`: from a racked machine to a host serving the live release behind the LB.

Steps (plan/provision.STEPS), each idempotent and recorded in a per-host journal
(<state>/provision/<stage>-<name>.json) as soon as it is done, so `--resume` goes on where a
failure or a crash stopped:

  validate     request vs stage; boot server dirs, DHCP conflicts; BMC answers; IP not in use
  boot_files   answer file, DHCP reservation, per-MAC boot file: atomic, read back by sha256
  power_on     BMC: bootdev pxe (read back: ipmitool exits 0 on failure), then on or cycle
  install      wait for the installer's callback (token + MAC must match), pin its host key
  pxe_cleanup  one-shot: per-MAC boot file, answer file and callback removed; bootdev disk
  bootstrap    SSH with the pinned key; layout, deploy user, shared files from a peer
  deploy       the release the peers serve now (same id and revision), health + warm gates
  join_pool    every director: the peers' services, weight 0, then ramped to the peers' weight
  stage_file   the host written into stages/<stage>.yaml (comments kept)

A failure names the step; the host is never left in the pool and the stage file is only
written by the last step. The stage lock is held from `deploy` to the end, so no deploy can
start that would miss the new host.

AddServer runs the steps, journals them and writes the stage file; the steps themselves are
done by NetInstall and Bootstrap (provision_machine.py: up to a host dsas can log in to) and
ReleaseJoin (provision_release.py: the live release and the pool).
"""

from __future__ import annotations

import socket
import time
from typing import Callable, Optional

from ..config.load import load_stage
from ..config.stagefile import replace_atomically, with_host
from ..errors import DsasError, RemoteError, UsageError
from ..inventory import Host, Stage
from ..plan import provision as plan
from ..report.events import EventBus
from ..status import ExitStatus
from .backend import Backend
from .context import FlowResult
from .ipmi import Bmc
from .pool import one_line, signals_deferred
from .provision_journal import ProvisionJournal
from .provision_machine import Bootstrap, NetInstall, boot_server
from .provision_release import ReleaseJoin
from .run import Run


class AddServer:
    """Runs the add-server steps for one request, in order, each journaled as it ends."""

    def __init__(self, stage: Stage, request: plan.AddRequest, backend: Backend, bus: EventBus, bmc: Bmc,
                 journal: ProvisionJournal, reinstall: bool = False, lock_wait: float = 0,
                 install_timeout: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        self.stage, self.request, self.bmc, self.journal = stage, request, bmc, journal
        self.reinstall, self.clock = reinstall, clock
        server = boot_server(stage)
        self.new_host = Host(
            name=request.name, address=request.ip, port=stage.settings.ssh.port,
            user=stage.settings.ssh.user or "root", roles=request.roles, primary_roles=frozenset(),
            deploy_to=stage.settings.deploy_to.rstrip("/") or "/", mac=request.mac)
        self.peers = tuple(h for h in stage.release_hosts() if set(h.roles) & set(request.roles))
        self.run = Run.for_stage(stage, self.peers + (self.new_host,), backend, bus)
        self.install = NetInstall(self.run.ctx, server, request, self.new_host, bmc, journal, install_timeout)
        self.bootstrap = Bootstrap(self.run.ctx, self.new_host, self.peers)
        self.release = ReleaseJoin(self.run, self.new_host, self.peers, journal, lock_wait)

    # ---- the run ------------------------------------------------------------------------
    def add(self, dry_run: bool = False) -> FlowResult:
        if dry_run:
            return self.dry_run()
        steps: dict[str, Callable[[], Optional[str]]] = {
            "validate": self.validate, "boot_files": self.install.install_boot_files,
            "power_on": self.install.power_on, "install": self.install.wait_install,
            "pxe_cleanup": self.install.pxe_cleanup, "bootstrap": self.bootstrap.run,
            "deploy": self.release.deploy, "join_pool": self.release.join_pool, "stage_file": self.write_stage_file}
        failed_step = "validate"
        if self.journal.done("install") and self.journal.data.get("hostkey"):
            # pinned in an earlier run; with $DSAS_KNOWN_HOSTS the pin lived in memory only
            self.run.ctx.backend.pin_host_key(self.new_host.known_hosts_name, self.journal.data["hostkey"])
        try:
            for name in plan.STEPS:
                rerun = name == "boot_files" and not self.journal.done("install")  # idempotent; picks up fixes
                if name != "validate" and self.journal.done(name) and not rerun:
                    self.run.ctx.bus.emit("provision_step", host=self.request.name, phase=name, status="skipped",
                                          message="done in an earlier run")
                    continue
                failed_step = name
                self._step(name, steps[name])
                if name == "validate":
                    self.journal.save(request=self.request.as_dict())
        except BaseException:
            with signals_deferred():
                if failed_step in ("join_pool", "stage_file") or (
                        self.journal.done("join_pool") and not self.journal.done("stage_file")):
                    # never in the pool without being in the stage file (a deploy would miss it)
                    if self.release.leave_pool():
                        self.journal.unmark("join_pool")
                self.run.locks.release()
                if failed_step == "validate" and not self.journal.data.get("done") \
                        and not self.journal.data.get("token"):
                    self.journal.discard()  # nothing was done: a plain rerun is fine
            raise
        with signals_deferred():
            self.run.locks.release()
            self.journal.finish()
        release = self.journal.data.get("release") or "none"
        return FlowResult(ExitStatus.OK, f"{self.request.name} ({self.request.ip}) installed and serving release "
                          f"{release}; added to stages/{self.stage.name}.yaml", release=self.journal.data.get("release"),
                          revision=self.journal.data.get("revision"))

    def _step(self, name: str, body: Callable[[], Optional[str]]) -> None:
        bus = self.run.ctx.bus
        bus.emit("provision_step", host=self.request.name, phase=name, status="started")
        started = self.clock()
        try:
            detail = body()
        except BaseException as exc:
            seconds = round(self.clock() - started, 2)
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else one_line(exc)
            with signals_deferred():
                try:
                    self.journal.save(failed={"step": name, "message": reason})
                except OSError as save_error:
                    bus.emit("warning", message=f"could not write {self.journal.path}: {save_error}")
                bus.emit("provision_step", host=self.request.name, phase=name, status="failed",
                         seconds=seconds, message=reason)
            hint = (f"; fix it and run `dsas add-server {self.stage.name} --name {self.request.name} --resume`"
                    if name != "validate" else "")
            if isinstance(exc, KeyboardInterrupt):
                raise RemoteError(f"add-server {self.request.name}: interrupted in step '{name}'; the host is not in "
                                  f"the pool and stages/{self.stage.name}.yaml is unchanged{hint}") from None
            if isinstance(exc, DsasError):
                exc.args = (f"add-server {self.request.name}: step '{name}' failed: {exc}{hint}",)
                raise
            raise RemoteError(f"add-server {self.request.name}: step '{name}' failed: {reason}{hint}") from exc
        seconds = round(self.clock() - started, 2)
        if name != "validate":
            self.journal.mark(name)
        bus.emit("provision_step", host=self.request.name, phase=name, status="ok", seconds=seconds,
                 message=detail or None)

    # ---- 1. validate --------------------------------------------------------------------
    def validate(self) -> str:
        """Request vs stage: the pool can take the host, the boot server and BMC are ready, the address is free."""
        self.release.refuse_unsupported_pool()
        problems, power = self.install.problems()
        problems += self.release.pool_problems()
        powered = self.journal.done("install") or self.journal.done("power_on")  # then what answers may be ours
        if not powered and self._ssh_answers() and not self.reinstall:
            problems.append(f"{self.request.ip}:{self.new_host.port} already answers SSH: that address is in use "
                            f"(pass --reinstall to wipe the machine that answers there)")
        if problems:
            raise UsageError("; ".join(problems))
        return f"boot server {self.install.boot_server.name} ready, {self.bmc.label} power {power}"

    def _ssh_answers(self) -> bool:
        try:
            socket.create_connection((self.request.ip, self.new_host.port), timeout=1.0).close()
            return True
        except OSError:
            return False

    # ---- 10. stage file -----------------------------------------------------------------
    def write_stage_file(self) -> str:
        path = self.stage.project_dir / "stages" / f"{self.stage.name}.yaml"
        original = path.read_text()
        entry = {"name": self.request.name, "address": self.request.ip, "port": self.new_host.port,
                 "roles": list(self.request.roles), "mac": self.request.mac,
                 "bmc": f"{self.request.bmc_host}:{self.request.bmc_port}", "profile": self.request.profile}
        if self.new_host.port == 22 and "port:" not in original:
            del entry["port"]
        try:
            text = with_host(original, entry, f"stages/{self.stage.name}.yaml")
            replace_atomically(path, text)
            load_stage(self.stage.name, self.stage.project_dir)
        except BaseException:
            with signals_deferred():
                if self.journal.done("join_pool") and self.release.leave_pool():  # first: out of the pool
                    self.journal.unmark("join_pool")
                try:
                    replace_atomically(path, original)
                except OSError as exc:
                    self.run.ctx.bus.emit("warning", message=f"could not restore {path}: {exc}")
            raise
        return f"stages/{self.stage.name}.yaml gained {self.request.name}"

    # ---- dry run ------------------------------------------------------------------------
    def dry_run(self) -> FlowResult:
        self.validate()
        boot_file = self.install.show()
        return FlowResult(ExitStatus.OK, f"dry run: {self.request.name} would boot {boot_file}; "
                          "nothing was changed")

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
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import jinja2

from ..commands import bootstrap, pxe
from ..commands.base import mark, q
from ..commands import release as rel
from ..config.load import load_stage
from ..config.stagefile import replace_atomically, with_host
from ..errors import DsasError, HostKeyError, RemoteError, UsageError
from ..inventory import Host, Stage
from ..localdirs import state_dir
from ..plan import provision as plan
from ..report.events import EventBus
from ..scm import build_archive, open_repository, resolve
from ..status import ExitStatus
from .backend import Backend
from .flow import FlowResult, ReleaseFlow, _one_line
from .hostkeys import fingerprint, key_from_line
from .ipmi import Bmc
from .pool import signals_deferred

POLL_SECONDS = 2.0
PLACEHOLDER_TOKEN = "not-yet-issued-token"  # renders the templates before a token exists


def state_path(project_dir: Path, stage: str, name: str) -> Path:
    return state_dir(project_dir).path / "provision" / f"{stage}-{name}.json"


class ProvisionJournal:
    """The add-server state of one host: the request, the token, the steps done. Atomic writes."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data: dict = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: unreadable add-server journal ({exc}); look at it, then remove it") from None

    @property
    def exists(self) -> bool:
        return bool(self.data)

    def done(self, step: str) -> bool:
        return step in self.data.get("done", [])

    def save(self, **fields) -> None:
        self.data.update(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as out:
            json.dump(self.data, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def mark(self, step: str, **fields) -> None:
        done = [s for s in self.data.get("done", []) if s != step] + [step]
        self.save(done=done, failed=None, **fields)

    def unmark(self, *steps: str) -> None:
        self.save(done=[s for s in self.data.get("done", []) if s not in steps])

    def discard(self) -> None:
        self.data = {}
        self.path.unlink(missing_ok=True)

    def finish(self) -> None:
        self.save(finished=True)
        self.path.replace(self.path.with_name(self.path.name + ".done"))


class AddServer:
    """Runs the add-server steps for one request."""

    def __init__(self, stage: Stage, request: plan.AddRequest, backend: Backend, bus: EventBus, bmc: Bmc,
                 journal: ProvisionJournal, reinstall: bool = False, lock_wait: float = 0,
                 install_timeout: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        self.stage, self.request, self.backend, self.bus, self.bmc = stage, request, backend, bus, bmc
        self.journal, self.reinstall, self.lock_wait = journal, reinstall, lock_wait
        self.provision = stage.settings.provision
        self.profile = self.provision.profiles[request.profile]
        self.install_timeout = install_timeout or self.provision.install_timeout
        self.clock = clock
        self.boot_server = self._boot_server()
        self.new_host = Host(
            name=request.name, address=request.ip, port=stage.settings.ssh.port,
            user=stage.settings.ssh.user or "root", roles=request.roles, primary_roles=frozenset(),
            deploy_to=stage.settings.deploy_to.rstrip("/") or "/", mac=request.mac)
        self.peers = tuple(h for h in stage.release_hosts() if set(h.roles) & set(request.roles))
        self.flow = self._release_flow()

    # ---- helpers ----------------------------------------------------------------------
    def _boot_server(self) -> Host:
        if self.provision.boot_server:
            return next(h for h in self.stage.hosts if h.name == self.provision.boot_server)
        servers = self.stage.hosts_with_role("pxe")
        if len(servers) != 1:
            raise UsageError(f"stage '{self.stage.name}' has {len(servers)} hosts with role pxe: set "
                             f"provision.boot_server to the one that boots new machines")
        return servers[0]

    def _release_flow(self) -> ReleaseFlow:
        from .rolling import RollingFlow
        cls = RollingFlow if self.stage.settings.lb is not None else ReleaseFlow
        return cls(self.stage, self.peers + (self.new_host,), self.backend, self.bus)

    def _run(self, host: Host, lines: list[str], what: str, stdin: Optional[Path] = None):
        result = self.backend.run(host, lines, stdin=stdin)
        if not result.ok:
            raise RemoteError(f"{host.name}: {what} failed: {result.stderr_tail() or f'exit {result.exit_code}'}")
        return result

    def token(self) -> str:
        if not self.journal.data.get("token"):
            self.journal.save(token=secrets.token_urlsafe(24))
        return self.journal.data["token"]

    def boot_files(self, token: Optional[str] = None) -> plan.BootFiles:
        try:
            return plan.render_boot_files(self.stage.project_dir, self.request, self.provision,
                                          token or self.token(), self.backend.public_key_line())
        except jinja2.TemplateNotFound as exc:
            raise UsageError(f"{plan.TEMPLATES_DIR}/{exc.name}: template not found (profile "
                             f"'{self.request.profile}')") from None
        except jinja2.TemplateError as exc:
            where = f"{plan.TEMPLATES_DIR}/{getattr(exc, 'name', None) or '?'}"
            line = getattr(exc, "lineno", None)
            raise UsageError(f"{where}{f':{line}' if line else ''}: {exc}") from None

    def callback_path(self) -> str:
        return f"{self.provision.callback_dir.rstrip('/')}/{self.token()}"

    # ---- the run ------------------------------------------------------------------------
    def run(self, dry_run: bool = False) -> FlowResult:
        if dry_run:
            return self.dry_run()
        steps: dict[str, Callable[[], Optional[str]]] = {
            "validate": self.validate, "boot_files": self.install_boot_files, "power_on": self.power_on,
            "install": self.wait_install, "pxe_cleanup": self.pxe_cleanup, "bootstrap": self.bootstrap,
            "deploy": self.deploy, "join_pool": self.join_pool, "stage_file": self.write_stage_file}
        failed_step = "validate"
        if self.journal.done("install") and self.journal.data.get("hostkey"):
            # pinned in an earlier run; with $DSAS_KNOWN_HOSTS the pin lived in memory only
            self.backend.pin_host_key(self.new_host.known_hosts_name, self.journal.data["hostkey"])
        try:
            for name in plan.STEPS:
                rerun = name == "boot_files" and not self.journal.done("install")  # idempotent; picks up fixes
                if name != "validate" and self.journal.done(name) and not rerun:
                    self.bus.emit("provision_step", host=self.request.name, phase=name, status="skipped",
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
                    if self._leave_pool():
                        self.journal.unmark("join_pool")
                self.flow.release_locks()
                if failed_step == "validate" and not self.journal.data.get("done") \
                        and not self.journal.data.get("token"):
                    self.journal.discard()  # nothing was done: a plain rerun is fine
            raise
        with signals_deferred():
            self.flow.release_locks()
            self.journal.finish()
        release = self.journal.data.get("release") or "none"
        return FlowResult(ExitStatus.OK, f"{self.request.name} ({self.request.ip}) installed and serving release "
                          f"{release}; added to stages/{self.stage.name}.yaml", release=self.journal.data.get("release"),
                          revision=self.journal.data.get("revision"))

    def _step(self, name: str, body: Callable[[], Optional[str]]) -> None:
        self.bus.emit("provision_step", host=self.request.name, phase=name, status="started")
        started = self.clock()
        try:
            detail = body()
        except BaseException as exc:
            seconds = round(self.clock() - started, 2)
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _one_line(exc)
            with signals_deferred():
                try:
                    self.journal.save(failed={"step": name, "message": reason})
                except OSError as save_error:
                    self.bus.emit("warning", message=f"could not write {self.journal.path}: {save_error}")
                self.bus.emit("provision_step", host=self.request.name, phase=name, status="failed",
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
        self.bus.emit("provision_step", host=self.request.name, phase=name, status="ok", seconds=seconds,
                      message=detail or None)

    # ---- 1. validate --------------------------------------------------------------------
    def validate(self) -> str:
        lb = self.stage.settings.lb
        if lb is not None and lb.driver == "haproxy":
            raise UsageError("lb.driver haproxy: add-server cannot add a server to a HAProxy backend at runtime; "
                             "add a (disabled) server line for it to the HAProxy configuration first")
        if lb is not None and lb.driver == "lvs" and lb.keepalived == "maintenance_file":
            raise UsageError("lb.keepalived maintenance_file: keepalived owns the pool and would undo a raw "
                             "ipvsadm -a; add the real server to keepalived.conf (with its health check) instead")
        files = self.boot_files(token=self.journal.data.get("token") or PLACEHOLDER_TOKEN)
        problems = []
        installed = self.journal.done("install")
        state = self.probe_boot_server(files)
        problems += [f"{self.boot_server.name}: missing or not writable: {m}" for m in state.missing]
        problems += pxe.dhcp_conflicts(state.dhcp_entries, self.request.mac, self.request.ip, files.dhcp_host.path)
        if files.boot_config.path in state.existing and not self.journal.data.get("token"):
            problems.append(f"{self.boot_server.name}: {files.boot_config.path} already exists: another install "
                            f"of this MAC is under way (or was left behind); remove it or use --resume")
        power = self.bmc.power_status()
        if lb is not None and lb.driver == "lvs" and not self.journal.done("join_pool"):
            try:  # read-only, now: an install must not end in a pool that cannot take the host
                self.flow.driver.join_plan(self.new_host, self.peers)
            except DsasError as exc:
                problems.append(f"load balancer: {exc}")
        powered = installed or self.journal.done("power_on")  # then what answers may be our installer
        if not powered and self._ssh_answers() and not self.reinstall:
            problems.append(f"{self.request.ip}:{self.new_host.port} already answers SSH: that address is in use "
                            f"(pass --reinstall to wipe the machine that answers there)")
        if problems:
            raise UsageError("; ".join(problems))
        return f"boot server {self.boot_server.name} ready, {self.bmc.label} power {power}"

    def probe_boot_server(self, files: plan.BootFiles) -> pxe.BootServerState:
        prov = self.provision
        dirs = [("tftp_root", prov.tftp_root), ("dhcp_hostsdir", prov.dhcp_hostsdir), ("http_root", prov.http_root),
                ("callback_dir", prov.callback_dir)]
        tftp = prov.tftp_root.rstrip("/")
        required = [f"{tftp}/{self.profile.kernel}", f"{tftp}/{self.profile.initrd}"]
        if self.profile.firmware == "bios":
            required.append(f"{tftp}/pxelinux.0")
        result = self._run(self.boot_server, pxe.probe_script(dirs, required, prov.dhcp_hostsdir,
                                                               [files.boot_config.path]), "boot server probe")
        return pxe.parse_probe(result.markers)

    def _ssh_answers(self) -> bool:
        try:
            socket.create_connection((self.request.ip, self.new_host.port), timeout=1.0).close()
            return True
        except OSError:
            return False

    # ---- 2. + 3. boot files and DHCP reservation ----------------------------------------
    def install_boot_files(self) -> str:
        files = self.boot_files()
        shipped = [(f.path, f.content, f.mode) for f in files.all]
        result = self._run(self.boot_server, pxe.install_files_script(shipped), "installing the boot files")
        bad = pxe.verify_sums(result.markers, shipped)
        if bad:
            raise RemoteError(f"{self.boot_server.name}: read-back differs for {', '.join(bad)}")
        return f"{files.boot_config.path}, {files.answer.path}, {files.dhcp_host.path}"

    # ---- 4. IPMI ------------------------------------------------------------------------
    def power_on(self) -> str:
        efiboot = self.profile.firmware == "uefi"
        device = self.bmc.set_boot_device("pxe", efiboot)
        if device != "pxe":
            raise RemoteError(f"{self.bmc.label}: boot device reads back as '{device}' after `bootdev pxe`: "
                              f"the BMC did not accept it; not powering on")
        state = self.bmc.power_status()
        self.bmc.power("cycle" if state == "on" else "on")
        self.journal.save(powered_at=time.time())
        return f"bootdev pxe (read back), power {'cycle' if state == 'on' else 'on'}"

    # ---- 5. callback + host key ---------------------------------------------------------
    def wait_install(self) -> str:
        deadline = self.journal.data.get("powered_at", time.time()) + self.install_timeout
        path = self.callback_path()
        last_note = time.time()
        text = None
        while True:
            try:
                result = self._run(self.boot_server, pxe.read_callback_script(path), "reading the install callback")
                text = pxe.parse_callback_marker(result.markers)
            except DsasError as exc:  # a boot-server hiccup is not the end of a 30-minute install
                self.bus.emit("warning", host=self.request.name, message=f"{_one_line(exc)}; retrying")
            if text is not None:
                break
            if time.time() > deadline:
                self.bus.emit("warning", host=self.request.name, message="no callback: powering the machine off")
                try:
                    self.bmc.power("off")
                finally:
                    self.journal.unmark("power_on")
                raise RemoteError(f"no install callback within {self.install_timeout:g}s of power-on (the per-MAC "
                                  f"boot file stays for a retry; check the console over the BMC's serial-over-LAN "
                                  f"and {self.boot_server.name}'s DHCP/TFTP log)")
            if time.time() - last_note > 30:
                last_note = time.time()
                self.bus.emit("provision_step", host=self.request.name, phase="install", status="waiting",
                              message=f"{int(deadline - time.time())}s left")
            time.sleep(POLL_SECONDS)
        # the install is over either way: the machine must not reinstall itself on its next boot
        boot_file = self.boot_files().boot_config.path
        removed = self._run(self.boot_server, pxe.remove_files_script([boot_file]), "removing the boot file")
        if pxe.gone(removed.markers, [boot_file]):
            raise RemoteError(f"{self.boot_server.name}: could not remove {boot_file}")
        try:
            callback = plan.parse_callback(text)
        except ValueError as exc:
            raise RemoteError(f"the install callback is malformed ({exc}); not trusting it") from None
        problems = plan.check_callback(callback, self.request, self.token())
        if problems:
            raise RemoteError("the install callback does not come from this install: " + "; ".join(problems))
        replaced = self.backend.pin_host_key(self.new_host.known_hosts_name, callback.hostkey)
        if replaced:
            self.bus.emit("warning", host=self.request.name,
                          message=f"replaced the old pinned key {replaced} of {self.new_host.known_hosts_name}")
        key = callback.hostkey.split()
        fp = fingerprint(key_from_line(callback.hostkey, self.new_host.known_hosts_name))
        self.journal.save(hostkey=callback.hostkey, fingerprint=fp)
        return f"callback from {callback.mac}; pinned host key {key[0]} {fp}"

    # ---- 6. one-shot cleanup ------------------------------------------------------------
    def pxe_cleanup(self) -> str:
        files = self.boot_files()
        paths = [files.boot_config.path, files.answer.path, self.callback_path()]
        result = self._run(self.boot_server, pxe.remove_files_script(paths), "removing the one-shot boot files")
        left = pxe.gone(result.markers, paths)
        if left:
            raise RemoteError(f"{self.boot_server.name}: could not remove {', '.join(left)}")
        try:
            device = self.bmc.set_boot_device("disk", self.profile.firmware == "uefi")
            note = f"bootdev {device}"
        except RemoteError as exc:  # the per-MAC file is gone already: a PXE boot now gets local boot
            self.bus.emit("warning", host=self.request.name, message=f"could not set the next boot to disk: {exc}")
            note = "bootdev unchanged"
        return f"removed {', '.join(paths)}; {note}"

    # ---- 7. bootstrap -------------------------------------------------------------------
    def wait_ssh(self, host: Host) -> None:
        deadline = time.time() + self.provision.ssh_timeout
        while True:
            try:
                self.backend.connect(host)
                return
            except HostKeyError:
                raise  # the key was pinned from the callback: anything else is not our machine
            except DsasError:
                if time.time() > deadline:
                    raise
            time.sleep(1.0)

    def bootstrap(self) -> str:
        """As root (the installer authorized the deploy key for root): layout, deploy user, shared files."""
        root = self.new_host if self.new_host.user == "root" else dataclasses.replace(
            self.new_host, user="root", name=self.new_host.name + "/root")  # its own cached connection
        self.wait_ssh(root)
        shared = self._shared_files()
        paths = self.new_host.paths
        dirs = [paths.releases, paths.shared] + [paths.shared_path(d) for d in self.stage.settings.linked_dirs]
        self._run(root, bootstrap.bootstrap_script(
            self.request.name, self.new_host.user, paths.deploy_to, dirs,
            {paths.shared_path(name): item for name, item in shared.items()}), "bootstrap")
        if self.new_host.user != "root":
            self.wait_ssh(self.new_host)  # the deploy user logs in too
        return f"layout under {paths.deploy_to}; shared files: {', '.join(shared) or 'none'}"

    def _shared_files(self) -> dict[str, tuple[str, str]]:
        """name -> (content, mode) of each shared file, read from the first peer."""
        names = list(dict.fromkeys(self.stage.settings.linked_files + self.provision.shared_files))
        if not names:
            return {}
        if not self.peers:
            raise RemoteError(f"no peer with role {'/'.join(self.request.roles)} to copy shared files from")
        peer = self.peers[0]
        lines = [f"[ -f {q(peer.paths.shared_path(n))} ] && " + mark(
            "file", f"{n} $(stat -c %a {q(peer.paths.shared_path(n))}) "
                    f"$(base64 < {q(peer.paths.shared_path(n))} | tr -d '\\n')") for n in names]
        result = self.backend.run(peer, lines, strict=False)
        found = {}
        for m in result.markers:
            if m.key == "file":
                name, mode, data = (m.value.split(" ", 2) + ["", ""])[:3]
                mode = mode if mode.isdigit() and len(mode) in (3, 4) else "640"
                found[name] = (base64.b64decode(data).decode(), mode)
        missing = [n for n in names if n not in found]
        if missing:
            raise RemoteError(f"{peer.name}: shared file(s) {', '.join(missing)} missing; cannot copy them")
        return found

    # ---- 8. the live release ------------------------------------------------------------
    def lock(self) -> dict[str, rel.HostProbe]:
        refuse = getattr(self.flow, "refuse_if_unfinished", None)
        if refuse is not None:
            refuse()  # an interrupted rolling release may have peers drained: recover it first
        self.flow.connect_all()
        return self.flow.acquire_locks_safely(self.flow.lock_owner("add-server", ""), self.lock_wait)

    def live_release(self, probes: dict[str, rel.HostProbe]) -> tuple[Optional[str], Optional[str]]:
        currents = {p.current.rsplit("/", 1)[-1] for n, p in probes.items() if n != self.new_host.name and p.current}
        if not currents:
            return None, None
        if len(currents) > 1:
            raise RemoteError(f"the peers serve different releases ({', '.join(sorted(currents))}): finish or roll "
                              f"back that deploy first")
        release = currents.pop()
        peer = next(p for n, p in probes.items() if n != self.new_host.name and p.current)
        revision = peer.releases.get(release, "")
        if not revision:
            raise RemoteError(f"release {release} has no REVISION file on the peers: cannot rebuild it")
        return release, revision

    def deploy(self) -> str:
        return self._deploy(self.lock())

    def _deploy(self, probes: dict[str, rel.HostProbe]) -> str:
        release, revision = self.live_release(probes)
        if release is None:
            self.bus.emit("warning", host=self.request.name, message="the peers have no release yet: nothing to deploy")
            return "no live release"
        settings = self.stage.settings
        new = self.new_host
        ctx = rel.ReleaseContext(self.stage.name, release, revision, None)
        if release not in probes[new.name].releases:
            repo = open_repository(settings.repo, self.stage.project_dir, self.stage.blame("repo"))
            archive = build_archive(repo, resolve(repo, revision, "the peers' revision"), settings.application)
            results = self.flow.phase("prepare", [new], lambda h: rel.prepare_script(
                h.paths, ctx, settings.linked_files, settings.linked_dirs, before=[], after=[]), stdin=archive)
            self.flow._raise_on_failure("prepare", results)  # noqa: SLF001
        # always: a resumed run must not trust a restart that failed last time
        results = self.flow.phase("publish", [new], lambda h: rel.publish_script(
            h.paths, ctx, self.stage.restart_commands(h), before=[], after=[]))
        self.flow._raise_on_failure("publish", results)  # noqa: SLF001
        gates = getattr(self.flow, "gates", None)
        if gates is not None:
            gates([new], lambda h: release, warm=True)
        entry = self.flow.log_entry("deployed", release=release, revision=revision, ref="add-server")
        result = self.backend.run(new, rel.log_lines(new.paths, entry))
        if not result.ok:
            self.bus.emit("warning", host=new.name, message="could not write revisions.log on the new host")
        self.journal.save(release=release, revision=revision)
        return f"release {release} ({revision[:12]}) live on {new.name}, gates passed"

    # ---- 9. load balancer ---------------------------------------------------------------
    def join_pool(self) -> str:
        lb = self.stage.settings.lb
        if lb is None or lb.driver == "none":
            return "no load balancer configured"
        if not self.flow.locked:  # a resumed run: the lock was let go since `deploy`
            probes = self.lock()
            release, _ = self.live_release(probes)
            current = (probes[self.new_host.name].current or "").rsplit("/", 1)[-1]
            if release and current != release:
                self.bus.emit("warning", host=self.request.name, message=f"the peers now serve {release}, "
                              f"{self.request.name} has {current or 'nothing'}: deploying it first")
                self._deploy(probes)
        driver = self.flow.driver
        records = driver.join_plan(self.new_host, self.peers)
        steps = lb.restore_steps if len(lb.restore_steps) > 1 else [25, 50, 100]
        try:
            driver.join(records, steps)
        except BaseException:
            with signals_deferred():
                self._leave_pool()
            raise
        self.journal.save(pool=[{k: r[k] for k in ("director", "service", "weight")} for r in records])
        return ", ".join(f"{r['director']} {r['service']} weight {r['weight']}" for r in records)

    def _leave_pool(self) -> bool:
        """Out of every director's pool; False (and a warning saying so) if that is not proven."""
        driver = getattr(self.flow, "driver", None)
        if driver is None or not hasattr(driver, "leave"):
            return True
        try:
            driver.leave(self.new_host)
            return True
        except DsasError as exc:
            self.bus.emit("warning", host=self.request.name,
                          message=f"could not take {self.request.ip} out of the pool: {exc}; remove it by hand")
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
                if self.journal.done("join_pool") and self._leave_pool():  # first: out of the pool
                    self.journal.unmark("join_pool")
                try:
                    replace_atomically(path, original)
                except OSError as exc:
                    self.bus.emit("warning", message=f"could not restore {path}: {exc}")
            raise
        return f"stages/{self.stage.name}.yaml gained {self.request.name}"

    # ---- dry run ------------------------------------------------------------------------
    def dry_run(self) -> FlowResult:
        self.validate()
        files = self.boot_files(token=PLACEHOLDER_TOKEN)
        for f in files.all:
            self.bus.emit("script", host=self.boot_server.name, phase="boot_files", script=f"# {f.path}\n{f.content}")
        efi = " options=efiboot" if self.profile.firmware == "uefi" else ""
        self.bus.emit("script", host=self.bmc.label, phase="power_on",
                      script=f"ipmitool -I lanplus -H {self.bmc.host} -p {self.bmc.port} -U {self.bmc.settings.user} "
                             f"-E chassis bootdev pxe{efi}; ... chassis bootparam get 5; ... chassis power on|cycle")
        return FlowResult(ExitStatus.OK, f"dry run: {self.request.name} would boot {files.boot_config.path}; "
                          "nothing was changed")


"""add-server's machine steps: from a racked machine to a host dsas can log in to.

`NetInstall` (steps boot_files .. pxe_cleanup) installs it over the network: its boot files
and DHCP reservation on the boot server, the BMC's boot device and power, the installer's
callback and host key, then the one-shot files removed. `Bootstrap` (step bootstrap) logs
in as root with the pinned key and lays out the deploy user, directories and shared files.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Optional

import jinja2

from ..commands import bootstrap, pxe
from ..errors import DsasError, HostKeyError, RemoteError, UsageError
from ..inventory import Host, Stage
from ..plan import provision as plan
from .backend import Backend, ExecResult
from .context import RunContext
from .hostkeys import fingerprint, key_from_line
from .ipmi import Bmc
from .pool import one_line
from .provision_journal import ProvisionJournal

POLL_SECONDS = 2.0
PLACEHOLDER_TOKEN = "not-yet-issued-token"  # renders the templates before a token exists


def boot_server(stage: Stage) -> Host:
    """The host that network-boots new machines: provision.boot_server, else the one host with role pxe."""
    provision = stage.settings.provision
    if provision.boot_server:
        return next(h for h in stage.hosts if h.name == provision.boot_server)
    servers = stage.hosts_with_role("pxe")
    if len(servers) != 1:
        raise UsageError(f"stage '{stage.name}' has {len(servers)} hosts with role pxe: set "
                         f"provision.boot_server to the one that boots new machines")
    return servers[0]


def run_checked(backend: Backend, host: Host, lines: list[str], what: str) -> ExecResult:
    """One script on `host`; RemoteError naming `what` if it fails."""
    result = backend.run(host, lines)
    if not result.ok:
        raise RemoteError(f"{host.name}: {what} failed: {result.stderr_tail() or f'exit {result.exit_code}'}")
    return result


class NetInstall:
    """Installs the new machine by PXE through its BMC; the install's token lives in the journal."""

    def __init__(self, ctx: RunContext, server: Host, request: plan.AddRequest, new_host: Host, bmc: Bmc,
                 journal: ProvisionJournal, install_timeout: Optional[float] = None):
        self.ctx, self.boot_server, self.request, self.new_host = ctx, server, request, new_host
        self.bmc, self.journal = bmc, journal
        self.provision = ctx.stage.settings.provision
        self.profile = self.provision.profiles[request.profile]
        self.install_timeout = install_timeout or self.provision.install_timeout

    def token(self) -> str:
        if not self.journal.data.get("token"):
            self.journal.save(token=secrets.token_urlsafe(24))
        return self.journal.data["token"]

    def boot_files(self, token: Optional[str] = None) -> plan.BootFiles:
        try:
            return plan.render_boot_files(self.ctx.stage.project_dir, self.request, self.provision,
                                          token or self.token(), self.ctx.backend.public_key_line())
        except jinja2.TemplateNotFound as exc:
            raise UsageError(f"{plan.TEMPLATES_DIR}/{exc.name}: template not found (profile "
                             f"'{self.request.profile}')") from None
        except jinja2.TemplateSyntaxError as exc:
            where = f"{plan.TEMPLATES_DIR}/{exc.name or '?'}"
            raise UsageError(f"{where}{f':{exc.lineno}' if exc.lineno else ''}: {exc}") from None
        except jinja2.TemplateError as exc:  # while rendering (an undefined value, ...): no file or line known
            raise UsageError(f"{plan.TEMPLATES_DIR}/?: {exc}") from None

    def callback_path(self) -> str:
        return f"{self.provision.callback_dir.rstrip('/')}/{self.token()}"

    def _run(self, lines: list[str], what: str) -> ExecResult:
        return run_checked(self.ctx.backend, self.boot_server, lines, what)

    # ---- 1. validate (its boot server and BMC part) ------------------------------------
    def problems(self) -> tuple[list[str], str]:
        """What keeps the boot server from booting this machine (read-only), and the BMC's power state."""
        files = self.boot_files(token=self.journal.data.get("token") or PLACEHOLDER_TOKEN)
        state = self.probe_boot_server(files)
        problems = [f"{self.boot_server.name}: missing or not writable: {m}" for m in state.missing]
        problems += pxe.dhcp_conflicts(state.dhcp_entries, self.request.mac, self.request.ip, files.dhcp_host.path)
        if files.boot_config.path in state.existing and not self.journal.data.get("token"):
            problems.append(f"{self.boot_server.name}: {files.boot_config.path} already exists: another install "
                            f"of this MAC is under way (or was left behind); remove it or use --resume")
        return problems, self.bmc.power_status()

    def probe_boot_server(self, files: plan.BootFiles) -> pxe.BootServerState:
        prov = self.provision
        dirs = [("tftp_root", prov.tftp_root), ("dhcp_hostsdir", prov.dhcp_hostsdir), ("http_root", prov.http_root),
                ("callback_dir", prov.callback_dir)]
        tftp = prov.tftp_root.rstrip("/")
        required = [f"{tftp}/{self.profile.kernel}", f"{tftp}/{self.profile.initrd}"]
        if self.profile.firmware == "bios":
            required.append(f"{tftp}/pxelinux.0")
        result = self._run(pxe.probe_script(dirs, required, prov.dhcp_hostsdir, [files.boot_config.path]),
                           "boot server probe")
        return pxe.parse_probe(result.markers)

    # ---- 2. + 3. boot files and DHCP reservation ----------------------------------------
    def install_boot_files(self) -> str:
        files = self.boot_files()
        shipped = [(f.path, f.content, f.mode) for f in files.all]
        result = self._run(pxe.install_files_script(shipped), "installing the boot files")
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
        bus = self.ctx.bus
        deadline = self.journal.data.get("powered_at", time.time()) + self.install_timeout
        path = self.callback_path()
        last_note = time.time()
        text = None
        while True:
            try:
                result = self._run(pxe.read_callback_script(path), "reading the install callback")
                text = pxe.parse_callback_marker(result.markers)
            except DsasError as exc:  # a boot-server hiccup is not the end of a 30-minute install
                bus.emit("warning", host=self.request.name, message=f"{one_line(exc)}; retrying")
            if text is not None:
                break
            if time.time() > deadline:
                bus.emit("warning", host=self.request.name, message="no callback: powering the machine off")
                try:
                    self.bmc.power("off")
                finally:
                    self.journal.unmark("power_on")
                raise RemoteError(f"no install callback within {self.install_timeout:g}s of power-on (the per-MAC "
                                  f"boot file stays for a retry; check the console over the BMC's serial-over-LAN "
                                  f"and {self.boot_server.name}'s DHCP/TFTP log)")
            if time.time() - last_note > 30:
                last_note = time.time()
                bus.emit("provision_step", host=self.request.name, phase="install", status="waiting",
                         message=f"{int(deadline - time.time())}s left")
            time.sleep(POLL_SECONDS)
        # the install is over either way: the machine must not reinstall itself on its next boot
        boot_file = self.boot_files().boot_config.path
        removed = self._run(pxe.remove_files_script([boot_file]), "removing the boot file")
        if pxe.gone(removed.markers, [boot_file]):
            raise RemoteError(f"{self.boot_server.name}: could not remove {boot_file}")
        return self._trust(text)

    def _trust(self, text: str) -> str:
        """The installer's callback checked against this install; its host key pinned."""
        try:
            callback = plan.parse_callback(text)
        except ValueError as exc:
            raise RemoteError(f"the install callback is malformed ({exc}); not trusting it") from None
        problems = plan.check_callback(callback, self.request, self.token())
        if problems:
            raise RemoteError("the install callback does not come from this install: " + "; ".join(problems))
        replaced = self.ctx.backend.pin_host_key(self.new_host.known_hosts_name, callback.hostkey)
        if replaced:
            self.ctx.bus.emit("warning", host=self.request.name,
                              message=f"replaced the old pinned key {replaced} of {self.new_host.known_hosts_name}")
        key = callback.hostkey.split()
        fp = fingerprint(key_from_line(callback.hostkey, self.new_host.known_hosts_name))
        self.journal.save(hostkey=callback.hostkey, fingerprint=fp)
        return f"callback from {callback.mac}; pinned host key {key[0]} {fp}"

    # ---- 6. one-shot cleanup ------------------------------------------------------------
    def pxe_cleanup(self) -> str:
        files = self.boot_files()
        paths = [files.boot_config.path, files.answer.path, self.callback_path()]
        result = self._run(pxe.remove_files_script(paths), "removing the one-shot boot files")
        left = pxe.gone(result.markers, paths)
        if left:
            raise RemoteError(f"{self.boot_server.name}: could not remove {', '.join(left)}")
        try:
            device = self.bmc.set_boot_device("disk", self.profile.firmware == "uefi")
            note = f"bootdev {device}"
        except RemoteError as exc:  # the per-MAC file is gone already: a PXE boot now gets local boot
            self.ctx.bus.emit("warning", host=self.request.name, message=f"could not set the next boot to disk: {exc}")
            note = "bootdev unchanged"
        return f"removed {', '.join(paths)}; {note}"

    # ---- dry run ------------------------------------------------------------------------
    def show(self) -> str:
        """The boot files and the BMC commands a real run would use, as script events; the boot file's path."""
        files = self.boot_files(token=PLACEHOLDER_TOKEN)
        for f in files.all:
            self.ctx.bus.emit("script", host=self.boot_server.name, phase="boot_files",
                              script=f"# {f.path}\n{f.content}")
        efi = " options=efiboot" if self.profile.firmware == "uefi" else ""
        self.ctx.bus.emit("script", host=self.bmc.label, phase="power_on",
                          script=f"ipmitool -I lanplus -H {self.bmc.host} -p {self.bmc.port} "
                                 f"-U {self.bmc.settings.user} -E chassis bootdev pxe{efi}; ... chassis bootparam "
                                 f"get 5; ... chassis power on|cycle")
        return files.boot_config.path


class Bootstrap:
    """The first login: as root (the installer authorized the deploy key for root), the deploy
    layout, the deploy user and the shared files copied from a peer; then the deploy user logs in."""

    def __init__(self, ctx: RunContext, new_host: Host, peers: tuple[Host, ...]):
        self.ctx, self.new_host, self.peers = ctx, new_host, peers
        self.provision = ctx.stage.settings.provision

    def wait_ssh(self, host: Host) -> None:
        deadline = time.time() + self.provision.ssh_timeout
        while True:
            try:
                self.ctx.backend.connect(host)
                return
            except HostKeyError:
                raise  # the key was pinned from the callback: anything else is not our machine
            except DsasError:
                if time.time() > deadline:
                    raise
            time.sleep(1.0)

    def run(self) -> str:
        new = self.new_host
        root = new if new.user == "root" else dataclasses.replace(
            new, user="root", name=new.name + "/root")  # its own cached connection
        self.wait_ssh(root)
        shared = self.shared_files()
        paths = new.paths
        dirs = [paths.releases, paths.shared] + [paths.shared_path(d) for d in self.ctx.stage.settings.linked_dirs]
        run_checked(self.ctx.backend, root, bootstrap.bootstrap_script(
            new.name, new.user, paths.deploy_to, dirs,
            {paths.shared_path(name): item for name, item in shared.items()}), "bootstrap")
        if new.user != "root":
            self.wait_ssh(new)  # the deploy user logs in too
        return f"layout under {paths.deploy_to}; shared files: {', '.join(shared) or 'none'}"

    def shared_files(self) -> dict[str, tuple[str, str]]:
        """name -> (content, mode) of each shared file, read from the first peer."""
        names = list(dict.fromkeys(self.ctx.stage.settings.linked_files + self.provision.shared_files))
        if not names:
            return {}
        if not self.peers:
            raise RemoteError(f"no peer with role {'/'.join(self.new_host.roles)} to copy shared files from")
        peer = self.peers[0]
        result = self.ctx.backend.run(peer, bootstrap.read_shared_files_script(peer.paths, names), strict=False)
        found = bootstrap.parse_shared_files(result.markers)
        missing = [n for n in names if n not in found]
        if missing:
            raise RemoteError(f"{peer.name}: shared file(s) {', '.join(missing)} missing; cannot copy them")
        return found

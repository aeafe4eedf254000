"""Local SSH test hosts: real OpenSSH sshd processes on loopback, one per host.

Each host has its own port, host key, config, pid file and deploy root; a project
directory (dsas.yaml + stages/<stage>.yaml + known_hosts + client key) points dsas
at them. Used by the test suite, the benchmark and `dsas devhosts` demos; the lab
(`dsas lab`) is the full data center with namespaces, IPVS and DRBD.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"

SSHD_CONFIG = """\
# dsas local test host {name}
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 50
LogLevel ERROR
Subsystem sftp internal-sftp
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_shell_wrapper(argv: list[str]) -> list[str]:
    """As root, run sshd in a private mount namespace where ~/.bashrc is empty.

    Debian's bash sources ~/.bashrc for every command sshd runs; on a developer box
    that file may start pyenv & co (0.2 s per command here), which a clean server
    would not. The host's files are untouched: the bind mount exists only in the
    namespace. Without root (or unshare) sshd runs as is.
    """
    bashrc = Path.home() / ".bashrc"
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None or not bashrc.is_file():
        return argv
    inner = f"mount --bind /dev/null {shlex.quote(str(bashrc))} && exec {shlex.join(argv)}"
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", inner]


def keygen(path: Path, comment: str) -> None:
    if not path.exists():
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


@dataclass
class DevHost:
    """One sshd on 127.0.0.1 with its own host key and deploy root."""

    name: str
    port: int
    root: Path  # this host's private directory (config, keys, deploy root)
    process: Optional[subprocess.Popen] = None
    authorized_keys: Optional[Path] = None

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def deploy_to(self) -> Path:
        return self.root / "srv" / "app"

    def known_hosts_line(self) -> str:
        public = (self.root / "ssh_host_ed25519_key.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    def start(self, authorized_keys: Path) -> None:
        self.authorized_keys = authorized_keys
        self.root.mkdir(parents=True, exist_ok=True)
        keygen(self.host_key, f"dsas-devhost-{self.name}")
        config = self.root / "sshd_config"
        config.write_text(SSHD_CONFIG.format(name=self.name, port=self.port, host_key=self.host_key,
                                             pid_file=self.root / "sshd.pid", authorized_keys=authorized_keys))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        self.process = subprocess.Popen(_clean_shell_wrapper([SSHD, "-D", "-e", "-f", str(config)]),
                                        stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"))

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = (self.root / "sshd.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"sshd for {self.name} exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd for {self.name} not ready on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP the sshd: connections hang (a host that stopped answering)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def regenerate_host_key(self) -> None:
        """A reinstalled host (or a man in the middle): a new key on the same address."""
        self.host_key.unlink()
        (self.root / "ssh_host_ed25519_key.pub").unlink()
        keygen(self.host_key, f"dsas-devhost-{self.name}-new")
        self.stop()
        self.start(self.authorized_keys)
        self.wait_ready()


@dataclass
class DevHosts:
    """N sshd test hosts sharing one client key; stop() stops only what start() started."""

    base: Path
    count: int
    hosts: list[DevHost] = field(default_factory=list)

    @property
    def client_key(self) -> Path:
        return self.base / "client" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.base / "client" / "known_hosts"

    def start(self) -> "DevHosts":
        client = self.base / "client"
        client.mkdir(parents=True, exist_ok=True)
        keygen(self.client_key, "dsas-devhosts-client")
        authorized = client / "authorized_keys"
        authorized.write_text((client / "id_ed25519.pub").read_text())
        for index in range(1, self.count + 1):
            host = DevHost(f"web{index}", free_port(), self.base / f"web{index}")
            host.start(authorized)
            self.hosts.append(host)
        for host in self.hosts:
            host.wait_ready()
        self.write_known_hosts()
        return self

    def write_known_hosts(self) -> None:
        self.known_hosts.write_text("".join(h.known_hosts_line() for h in self.hosts))

    def stop(self) -> None:
        for host in self.hosts:
            host.thaw()
            host.stop()

    def stage_yaml(self, roles: tuple[str, ...] = ("web",), count: Optional[int] = None) -> str:
        """A stage file listing these hosts (each with its own deploy root)."""
        lines = ["hosts:"]
        for host in self.hosts[: count or len(self.hosts)]:
            lines += [f"  - name: {host.name}", "    address: 127.0.0.1", f"    port: {host.port}",
                      f"    roles: [{', '.join(roles)}]", f"    deploy_to: {host.deploy_to}"]
        return "\n".join(lines) + "\n"

    def ssh_yaml(self) -> str:
        return (f"ssh:\n  user: {os.environ.get('USER') or _whoami()}\n  identity_file: {self.client_key}\n"
                f"  known_hosts: {self.known_hosts}\n  connect_timeout: 5\n")


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name

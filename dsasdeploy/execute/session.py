"""Fabric Connections built from the stage only, with host keys verified.

What reaches a host is decided by the stage: no ~/.ssh/config, no /etc/fabric.yml,
no agent unless `ssh.allow_agent`. A stage may name its own ssh_config file.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import paramiko
from fabric import Config, Connection
from paramiko.config import SSHConfig

from ..config.names import parse_gateway
from ..config.schema import SshSettings
from ..errors import HostKeyError, RemoteError, UsageError
from ..inventory import Host
from .hostkeys import PinnedHostKeys

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
_CONSTRUCTION = threading.Lock()
# CI credentials (docs/ci.md): key material and known_hosts from the environment, never echoed
ENV_KEY = "DSAS_SSH_PRIVATE_KEY"
ENV_KEY_FILE = "DSAS_SSH_KEY_FILE"
ENV_KEY_PASSPHRASE = "DSAS_SSH_KEY_PASSPHRASE"
ENV_KNOWN_HOSTS = "DSAS_KNOWN_HOSTS"
ENV_KNOWN_HOSTS_FILE = "DSAS_KNOWN_HOSTS_FILE"


def load_key_from_env() -> Optional[paramiko.PKey]:
    """The private key in $DSAS_SSH_PRIVATE_KEY (OpenSSH or PEM text), kept in memory only."""
    text = os.environ.get(ENV_KEY)
    if not text:
        return None
    passphrase = os.environ.get(ENV_KEY_PASSPHRASE) or None
    text = text.replace("\\n", "\n").strip() + "\n"  # CI variables sometimes hold literal \n
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text), password=passphrase)
        except (paramiko.SSHException, ValueError):
            continue
    raise UsageError(f"${ENV_KEY} does not hold a usable private key (ed25519, ecdsa or rsa; "
                     f"set ${ENV_KEY_PASSPHRASE} if it is encrypted)")


def resolve_path(value: Optional[str], project_dir: Path) -> Optional[Path]:
    """~ and relative paths (relative to the project directory)."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (project_dir / path)


@dataclass
class SessionFactory:
    """Makes one Connection per host for a whole run; all share one host-key policy."""

    ssh: SshSettings
    project_dir: Path
    accept_new_host_keys: bool = False
    policy: PinnedHostKeys = field(init=False)
    _config: Config = field(init=False)
    _gateway: Optional[Connection] = field(init=False, default=None)
    _gateway_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        accept_new = self.accept_new_host_keys or self.ssh.accept_new_host_keys
        known_text = os.environ.get(ENV_KNOWN_HOSTS)
        if known_text:
            self.policy = PinnedHostKeys.from_text(known_text, ENV_KNOWN_HOSTS, accept_new=accept_new)
        else:
            known = resolve_path(os.environ.get(ENV_KNOWN_HOSTS_FILE) or self.ssh.known_hosts or DEFAULT_KNOWN_HOSTS,
                                 self.project_dir)
            self.policy = PinnedHostKeys(known, accept_new=accept_new)
        ssh_config_path = resolve_path(self.ssh.ssh_config, self.project_dir)
        if ssh_config_path is not None and not ssh_config_path.is_file():
            raise UsageError(f"ssh.ssh_config: {ssh_config_path} does not exist")
        ssh_config = SSHConfig.from_path(str(ssh_config_path)) if ssh_config_path else SSHConfig()
        self._ssh_config = ssh_config
        # lazy=True: do not read /etc/fabric.yml or ~/.fabric.yml; an explicit SSHConfig
        # object: do not read ~/.ssh/config or /etc/ssh/ssh_config either.
        self._config = Config(lazy=True, ssh_config=ssh_config)
        self._pkey = load_key_from_env()
        identity = resolve_path(os.environ.get(ENV_KEY_FILE) or self.ssh.identity_file, self.project_dir)
        if self._pkey is None and identity is not None and not identity.is_file():
            raise UsageError(f"ssh.identity_file: {identity} does not exist")
        self._identity = None if self._pkey is not None else identity

    def public_key_line(self) -> str:
        """The authorized_keys line of the key dsas logs in with (for a new host's installer)."""
        key = self._pkey
        if key is None and self._identity is not None:
            pub = self._identity.with_name(self._identity.name + ".pub")
            if pub.is_file():
                return " ".join(pub.read_text().split()[:2])
            passphrase = os.environ.get(ENV_KEY_PASSPHRASE) or None
            for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
                try:
                    key = kind.from_private_key_file(str(self._identity), password=passphrase)
                    break
                except (paramiko.SSHException, ValueError):
                    continue
        if key is None:
            raise UsageError("add-server needs the deploy key (ssh.identity_file or $DSAS_SSH_PRIVATE_KEY) to "
                             "install it on the new host")
        return f"{key.get_name()} {key.get_base64()}"

    def _connect_kwargs(self) -> dict:
        kwargs = {
            "look_for_keys": False,
            "allow_agent": self.ssh.allow_agent,
            "banner_timeout": self.ssh.connect_timeout,
            "auth_timeout": self.ssh.connect_timeout,
            "channel_timeout": self.ssh.connect_timeout,
        }
        if self._pkey is not None:
            kwargs["pkey"] = self._pkey
        elif self._identity is not None:
            kwargs["key_filename"] = [str(self._identity)]
        return kwargs

    def _new(self, address: str, port: int, user: str, gateway: Optional[Connection]) -> Connection:
        with _CONSTRUCTION:  # Connection() reads and clones the shared invoke Config: not thread-safe
            return self._new_unlocked(address, port, user, gateway)

    def _new_unlocked(self, address: str, port: int, user: str, gateway: Optional[Connection]) -> Connection:
        found = self._ssh_config.lookup(address)
        if "proxyjump" in found or "proxycommand" in found:
            # Fabric would build those hops itself, with AutoAddPolicy: their host keys unchecked
            raise UsageError(f"ssh.ssh_config: ProxyJump/ProxyCommand for {address} is not supported (jump hosts "
                             f"would not have their host keys verified); use ssh.gateway instead")
        cxn = Connection(
            address, user=user, port=port, config=self._config, gateway=gateway,
            connect_timeout=self.ssh.connect_timeout, connect_kwargs=self._connect_kwargs(),
        )
        # Fabric installed AutoAddPolicy; replace it before the first open().
        cxn.client.set_missing_host_key_policy(self.policy)
        return cxn

    def gateway(self) -> Optional[Connection]:
        """The bastion connection (opened once, shared by every host)."""
        if not self.ssh.gateway:
            return None
        with self._gateway_lock:
            if self._gateway is None:
                user, address, port = parse_gateway(self.ssh.gateway)  # checked by the config rules
                self._gateway = self._new(address, port, user or self.ssh.user or "root", None)
                open_connection(self._gateway, f"gateway {self.ssh.gateway}")
            return self._gateway

    def connect(self, host: Host) -> Connection:
        """An open Connection to `host`, or a RemoteError/HostKeyError naming it."""
        cxn = self._new(host.address, host.port, host.user, self.gateway())
        open_connection(cxn, host.name)
        return cxn

    def close(self) -> None:
        if self._gateway is not None:
            self._gateway.close()


def open_connection(cxn: Connection, label: str) -> None:
    """Open with every failure turned into one line naming the host."""
    where = f"{label} ({cxn.user}@{cxn.host}:{cxn.port})"
    try:
        cxn.open()
    except HostKeyError as exc:
        raise HostKeyError(f"{label}: {exc}") from None
    except paramiko.BadHostKeyException as exc:
        raise HostKeyError(f"{where}: host key changed, refusing: {exc}") from None
    except paramiko.AuthenticationException as exc:
        raise RemoteError(f"{where}: SSH authentication failed ({exc})") from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        reason = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
        raise RemoteError(f"{where}: unreachable: {reason}") from None
    except (socket.timeout, TimeoutError):
        raise RemoteError(f"{where}: unreachable: connect timed out") from None
    except paramiko.SSHException as exc:
        raise RemoteError(f"{where}: SSH error: {exc}") from None
    except OSError as exc:
        raise RemoteError(f"{where}: unreachable: {exc.strerror or exc}") from None

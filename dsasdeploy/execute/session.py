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
from typing import Callable, Optional

import paramiko
from fabric import Config, Connection
from paramiko.config import SSHConfig

from ..config.names import parse_gateway
from ..config.schema import SshSettings
from ..credentials import secret
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


KEY_KINDS = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def parse_private_key(text: str, source: str) -> paramiko.PKey:
    """A private key (OpenSSH or PEM text), decrypted with $DSAS_SSH_KEY_PASSPHRASE if it is set;
    a UsageError naming `source` (the variable or the key) if it is not a usable key."""
    passphrase = secret(ENV_KEY_PASSPHRASE)
    encrypted = False
    for kind in KEY_KINDS:
        try:
            return kind.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            encrypted = True
        except (paramiko.SSHException, ValueError):
            continue
    if encrypted and not passphrase:
        raise UsageError(f"{source}: the private key is encrypted: set ${ENV_KEY_PASSPHRASE}")
    raise UsageError(f"{source}: not a usable private key (ed25519, ecdsa or rsa"
                     + (f"; or ${ENV_KEY_PASSPHRASE} is wrong)" if passphrase else ")"))


def load_key_from_env() -> Optional[paramiko.PKey]:
    """The private key in $DSAS_SSH_PRIVATE_KEY, kept in memory only."""
    text = secret(ENV_KEY)
    if not text:
        return None
    # CI variables sometimes hold literal \n
    return parse_private_key(text.replace("\\n", "\n").strip() + "\n", f"${ENV_KEY}")


def load_key_file(path: Path, source: str) -> paramiko.PKey:
    """The private key in the file at `path`, read and checked now, before any host is touched."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{source}: {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{source}: {path} is not a private key file") from None
    return parse_private_key(text, f"{source}: {path}")


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
    blame: Callable[[str], str] = str  # key -> how an error names it, e.g. 'dsas.yaml:9: ssh.identity_file'
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
            source, value = self._setting(ENV_KNOWN_HOSTS_FILE, "ssh.known_hosts", self.ssh.known_hosts)
            if value is None:
                source, value = f"{DEFAULT_KNOWN_HOSTS} (the default; set ssh.known_hosts)", DEFAULT_KNOWN_HOSTS
            self.policy = PinnedHostKeys.from_file(resolve_path(value, self.project_dir), source,
                                                   accept_new=accept_new)
        ssh_config_path = resolve_path(self.ssh.ssh_config, self.project_dir)
        ssh_config = self._read_ssh_config(ssh_config_path) if ssh_config_path else SSHConfig()
        self._ssh_config = ssh_config
        # lazy=True: do not read /etc/fabric.yml or ~/.fabric.yml; an explicit SSHConfig
        # object: do not read ~/.ssh/config or /etc/ssh/ssh_config either.
        self._config = Config(lazy=True, ssh_config=ssh_config)
        self._pkey = load_key_from_env()
        source, value = self._setting(ENV_KEY_FILE, "ssh.identity_file", self.ssh.identity_file)
        identity = resolve_path(value, self.project_dir)
        if self._pkey is None and identity is not None:
            self._pkey = load_key_file(identity, source)

    def _setting(self, variable: str, key: str, configured: Optional[str]) -> tuple[str, Optional[str]]:
        """(how errors name the source, value): the environment variable wins over the key."""
        if os.environ.get(variable):
            return f"${variable}", os.environ[variable]
        return self.blame(key), configured

    def _read_ssh_config(self, path: Path) -> SSHConfig:
        source = self.blame("ssh.ssh_config")
        try:
            return SSHConfig.from_text(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{source}: {path} does not exist") from None
        except OSError as exc:
            raise UsageError(f"{source}: cannot read {path}: {exc.strerror}") from None
        except (UnicodeDecodeError, paramiko.ssh_exception.ConfigParseError, ValueError) as exc:
            raise UsageError(f"{source}: {path} is not a usable ssh_config: {_first_line(exc)}") from None

    def public_key_line(self) -> str:
        """The authorized_keys line of the key dsas logs in with (for a new host's installer)."""
        if self._pkey is None:
            raise UsageError("add-server needs the deploy key (ssh.identity_file or $DSAS_SSH_PRIVATE_KEY) to "
                             "install it on the new host")
        return f"{self._pkey.get_name()} {self._pkey.get_base64()}"

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


KEEPALIVE_SECONDS = 5  # a dead peer shows as a dead transport, not as a command that never ends


def open_connection(cxn: Connection, label: str) -> None:
    """Open with every failure turned into one line naming the host; SSH keepalives on."""
    where = f"{label} ({cxn.user}@{cxn.host}:{cxn.port})"
    try:
        cxn.open()
        transport = cxn.client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_SECONDS)
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""Pure: a validated stage and its hosts, every default applied (what load_stage returns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..paths import ReleasePaths
from .schema import BUILTIN_ROLES, Settings


@dataclass(frozen=True)
class Host:
    """One host as dsas will reach it: every default already applied."""

    name: str
    address: str
    port: int
    user: str
    roles: tuple[str, ...]
    primary_roles: frozenset[str]
    deploy_to: str
    mac: Optional[str] = None  # the boot NIC, for hosts installed by `dsas add-server`

    @property
    def paths(self) -> ReleasePaths:
        """The release layout under this host's deploy_to."""
        return ReleasePaths(self.deploy_to)

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH and paramiko name this host in known_hosts."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def is_primary(self, role: str) -> bool:
        """Whether the stage file marks this host primary for `role`."""
        return role in self.primary_roles


@dataclass(frozen=True)
class Stage:
    """A validated stage: its name, the project settings as merged, and its hosts."""

    name: str
    project_dir: Path
    settings: Settings
    hosts: tuple[Host, ...]
    known_stages: tuple[str, ...] = field(default=())
    sources: dict[str, str] = field(default_factory=dict, compare=False)  # 'ssh.known_hosts' -> 'dsas.yaml:12'

    def blame(self, key: str) -> str:
        """How an error names a configuration key: 'stages/production.yaml:3: branch'."""
        where = self.sources.get(key)
        return f"{where}: {key}" if where else key

    def role_gets_release(self, role: str) -> bool:
        """Whether hosts with `role` receive releases (the stage's roles, else the built-in ones)."""
        spec = self.settings.roles.get(role)
        return spec.release if spec is not None else BUILTIN_ROLES.get(role, False)

    def release_hosts(self, hosts: Optional[Iterable[Host]] = None) -> tuple[Host, ...]:
        """Hosts holding at least one role that receives releases."""
        pool = self.hosts if hosts is None else tuple(hosts)
        return tuple(h for h in pool if any(self.role_gets_release(r) for r in h.roles))

    def lock_hosts(self, hosts: Optional[Iterable[Host]] = None) -> tuple[Host, ...]:
        """Hosts that can hold the stage lock: those receiving releases, and every DRBD node
        (`dsas drbd switchover` locks both nodes besides the release hosts)."""
        pool = self.hosts if hosts is None else tuple(hosts)
        nodes = {name for resource in self.settings.drbd for name in resource.nodes}
        releasing = set(self.release_hosts(pool))
        return tuple(h for h in pool if h in releasing or h.name in nodes)

    def hosts_with_role(self, role: str) -> tuple[Host, ...]:
        """The hosts holding `role`, in stage order."""
        return tuple(h for h in self.hosts if role in h.roles)

    def primary(self, role: str) -> Optional[Host]:
        """The host marked primary for `role`, else the first host with it."""
        holders = self.hosts_with_role(role)
        for host in holders:
            if host.is_primary(role):
                return host
        return holders[0] if holders else None

    def restart_commands(self, host: Host) -> list[tuple[str, str]]:
        """(role, command) for each role of `host` that has a restart command."""
        return [(r, self.settings.restart[r]) for r in host.roles if r in self.settings.restart]

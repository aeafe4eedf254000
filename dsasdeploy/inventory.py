"""Pure: the resolved hosts of a stage, their roles, `primary`, and host filters."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .config.schema import BUILTIN_ROLES, Settings
from .errors import UsageError
from .paths import ReleasePaths


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
        return ReleasePaths(self.deploy_to)

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH and paramiko name this host in known_hosts."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def is_primary(self, role: str) -> bool:
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


def select_hosts(
    stage: Stage, host_globs: Optional[list[str]] = None, role_globs: Optional[list[str]] = None
) -> tuple[Host, ...]:
    """Hosts matching every given filter (--hosts names/addresses, --roles), stage order.

    A filter that matches nothing is a usage error: a typo must never mean "no hosts".
    """
    selected = list(stage.hosts)
    if host_globs:
        for pattern in host_globs:
            if not any(_host_matches(h, pattern) for h in stage.hosts):
                names = ", ".join(h.name for h in stage.hosts)
                raise UsageError(f"--hosts: '{pattern}' matches no host of stage '{stage.name}' (hosts: {names})")
        selected = [h for h in selected if any(_host_matches(h, p) for p in host_globs)]
    if role_globs:
        all_roles = sorted({r for h in stage.hosts for r in h.roles})
        for pattern in role_globs:
            if not any(fnmatch.fnmatchcase(r, pattern) for r in all_roles):
                raise UsageError(f"--roles: '{pattern}' matches no role of stage '{stage.name}' (roles: {', '.join(all_roles)})")
        selected = [h for h in selected if any(fnmatch.fnmatchcase(r, p) for r in h.roles for p in role_globs)]
    if not selected:
        raise UsageError("--hosts and --roles together select no host")
    return tuple(selected)


def _host_matches(host: Host, pattern: str) -> bool:
    return fnmatch.fnmatchcase(host.name, pattern) or fnmatch.fnmatchcase(host.address, pattern)


def split_list(value: Optional[str]) -> list[str]:
    """'web1,web2 web3' -> ['web1', 'web2', 'web3'] (CLI list options)."""
    if not value:
        return []
    return [part for chunk in value.split(",") for part in chunk.split() if part]

"""Pure: which hosts of a stage a command runs on (--hosts, --roles), and CLI host lists.

Host and Stage are configuration: they live in config/stage.py and are re-exported
here, so `from ..inventory import Host, Stage` keeps working.
"""

from __future__ import annotations

import fnmatch
from typing import Optional

from .config.stage import Host, Stage
from .errors import UsageError

__all__ = ["Host", "Stage", "select_hosts", "split_list"]


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

"""Rules that span keys, checked after the shapes are valid. Pure."""

from __future__ import annotations

import posixpath
import re
from typing import Iterator, Optional

from .messages import did_you_mean
from .names import (CONTROL, check_address, check_deploy_to, check_endpoint, check_name, check_url_path,
                    check_user, parse_gateway, shown)
from .schema import BUILTIN_ROLES, StageSpec

Problem = tuple[tuple, str]


def check_rules(spec: StageSpec) -> list[Problem]:
    """(key path, message) for every cross-key problem of a merged stage."""
    return [*_names(spec), *_paths(spec), *_roles(spec), *_hosts(spec), *_rollout(spec), *_gates(spec),
            *_drbd(spec), *_provision(spec)]


def _names(spec: StageSpec) -> Iterator[Problem]:
    """Names are names (file names, never paths); user names are login names; addresses are addresses."""
    problem = check_name(spec.application)
    if problem:
        yield ("application",), problem
    if spec.ssh.user is not None and check_user(spec.ssh.user):
        yield ("ssh", "user"), check_user(spec.ssh.user)
    if spec.ssh.gateway is not None:
        try:
            parse_gateway(spec.ssh.gateway)
        except ValueError as exc:
            yield ("ssh", "gateway"), str(exc)
    for index, host in enumerate(spec.hosts):
        for key, check in (("name", check_name), ("user", check_user),
                           ("address", check_address)):
            value = getattr(host, key)
            if value is not None and check(value):
                yield ("hosts", index, key), check(value)
    if spec.provision is not None and check_user(spec.provision.bmc.user):
        yield ("provision", "bmc", "user"), check_user(spec.provision.bmc.user)


def _gates(spec: StageSpec) -> Iterator[Problem]:
    """Health and warm gates, and the load balancer's hosts: checked now, not at connect time."""
    if spec.health is not None:
        if check_url_path(spec.health.path):
            yield ("health", "path"), check_url_path(spec.health.path)
        for index, status in enumerate(spec.health.expect_status):
            if not 100 <= status <= 599:
                yield ("health", "expect_status", index), f"expected an HTTP status 100-599, got {status}"
        if isinstance(spec.health.fail_fast, list):
            for index, status in enumerate(spec.health.fail_fast):
                if not 100 <= status <= 599 or status in spec.health.expect_status:
                    yield ("health", "fail_fast", index), (f"expected an HTTP status 100-599 that is not in "
                                                           f"expect_status, got {status}")
        header = spec.health.host_header
        if header is not None and (not header or re.search(r"[\s\x00-\x1f\x7f]", header)):
            yield ("health", "host_header"), f"expected a host name without spaces, got {shown(header)}"
    if spec.warm is not None:
        for index, url in enumerate(spec.warm.urls):
            if check_url_path(url):
                yield ("warm", "urls", index), check_url_path(url)
        for index, endpoint in enumerate(spec.warm.memcached):
            if check_endpoint(endpoint):
                yield ("warm", "memcached", index), check_endpoint(endpoint)
    if spec.lb is not None and spec.lb.driver != "none" and not any("lb" in h.roles for h in spec.hosts):
        yield ("lb", "driver"), f"lb.driver '{spec.lb.driver}' needs a host with role 'lb' in the stage"


def _drbd(spec: StageSpec) -> Iterator[Problem]:
    names = {h.name for h in spec.hosts}
    seen = set()
    for index, resource in enumerate(spec.drbd):
        problem = check_name(resource.name)  # it names the switchover journal's files too
        if problem:
            yield ("drbd", index, "name"), problem
        if resource.name in seen:
            yield ("drbd", index, "name"), f"duplicate DRBD resource '{resource.name}'"
        seen.add(resource.name)
        for n_index, node in enumerate(resource.nodes):
            if node not in names:
                yield ("drbd", index, "nodes", n_index), (
                    f"unknown host '{node}'{did_you_mean(node, sorted(names))}")
        if resource.nodes[0] == resource.nodes[-1]:
            yield ("drbd", index, "nodes"), "needs two different hosts"
        if not posixpath.isabs(resource.mount):
            yield ("drbd", index, "mount"), f"must be an absolute path, got '{resource.mount}'"


def _provision(spec: StageSpec) -> Iterator[Problem]:
    prov = spec.provision
    if prov is None:
        return
    for key in ("tftp_root", "dhcp_hostsdir", "http_root", "callback_dir"):
        if not posixpath.isabs(getattr(prov, key)):
            yield ("provision", key), f"must be an absolute path on the boot server, got '{getattr(prov, key)}'"
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", prov.http_url):
        yield ("provision", "http_url"), f"expected http://host[:port][/path], got '{prov.http_url}'"
    if prov.default_profile is not None and prov.default_profile not in prov.profiles:
        yield ("provision", "default_profile"), (
            f"no profile '{prov.default_profile}'{did_you_mean(prov.default_profile, sorted(prov.profiles))}")
    if prov.boot_server is not None:
        host = next((h for h in spec.hosts if h.name == prov.boot_server), None)
        if host is None:
            yield ("provision", "boot_server"), (
                f"unknown host '{prov.boot_server}'{did_you_mean(prov.boot_server, [h.name for h in spec.hosts])}")
        elif "pxe" not in host.roles:
            yield ("provision", "boot_server"), f"host '{host.name}' does not have role 'pxe'"
    for name, profile in prov.profiles.items():
        need = {"raid1": 2, "raid10": 4}.get(profile.raid, 0)
        if profile.disks and len(profile.disks) < need:
            yield ("provision", "profiles", name, "disks"), (
                f"{profile.raid} needs at least {need} disks, got {len(profile.disks)}")
        elif profile.raid == "raid10" and len(profile.disks) % 2:
            yield ("provision", "profiles", name, "disks"), "raid10 needs an even number of disks"
    for index, item in enumerate(prov.shared_files):
        if posixpath.isabs(item) or ".." in item.split("/"):
            yield ("provision", "shared_files", index), f"must be a path inside shared/, got '{item}'"


def _rollout(spec: StageSpec) -> Iterator[Problem]:
    for key in ("batch", "max_unavailable"):
        value = getattr(spec.rollout, key)
        if isinstance(value, str) and not re.fullmatch(r"[1-9][0-9]?%|100%", value):
            yield ("rollout", key), f"expected a number of hosts or a percentage like '25%', got '{value}'"
        if isinstance(value, int) and value < (1 if key == "batch" else 0):
            yield ("rollout", key), f"must be at least {1 if key == 'batch' else 0}, got {value}"
    if spec.lb is not None:
        steps = spec.lb.restore_steps
        if any(not 1 <= s <= 100 for s in steps) or steps != sorted(steps) or steps[-1] != 100:
            yield ("lb", "restore_steps"), f"must rise from 1..100 and end at 100, got {steps}"
        if spec.lb.keepalived == "maintenance_file" and not spec.lb.maintenance_file:
            yield ("lb", "maintenance_file"), "is required when lb.keepalived is 'maintenance_file'"
        if spec.lb.maintenance_file:
            problem = _maintenance_file_problem(spec.lb.maintenance_file, spec)
            if problem:
                yield ("lb", "maintenance_file"), problem
        if spec.lb.driver == "haproxy" and not spec.lb.haproxy_backend:
            yield ("lb", "haproxy_backend"), "is required with lb.driver 'haproxy'"


def _maintenance_file_problem(path: str, spec: StageSpec) -> Optional[str]:
    """dsas creates the file on the hosts: it must stay inside each host's deploy_to (a path
    relative to it, or an absolute one below every deploy_to the stage uses)."""
    parts = path.split("/")
    if CONTROL.search(path) or any(p == ".." for p in parts) or not path.strip("/"):
        return f"must be a file inside deploy_to (relative to it, no '..'), got '{path}'"
    if posixpath.isabs(path):
        roots = {spec.deploy_to, *(h.deploy_to for h in spec.hosts if h.deploy_to)}
        outside = sorted(r for r in roots if r and not path.startswith(r.rstrip("/") + "/"))
        if outside:
            return (f"'{path}' is outside deploy_to {', '.join(outside)}: dsas writes only below deploy_to; "
                    f"give a path relative to it (e.g. shared/maintenance)")
    return None


def _paths(spec: StageSpec) -> Iterator[Problem]:
    if check_deploy_to(spec.deploy_to):
        yield ("deploy_to",), check_deploy_to(spec.deploy_to)
    for index, host in enumerate(spec.hosts):
        if host.deploy_to is not None and check_deploy_to(host.deploy_to):
            yield ("hosts", index, "deploy_to"), check_deploy_to(host.deploy_to)
    for key in ("linked_files", "linked_dirs"):
        for index, item in enumerate(getattr(spec, key)):
            parts = item.split("/")
            if (posixpath.isabs(item) or not item.strip("/") or CONTROL.search(item)
                    or any(p in (".", "..") for p in parts)):
                yield (key, index), (f"must be a path inside the release (relative, no '.' or '..', no control "
                                     f"characters), got {shown(item)}")


def _roles(spec: StageSpec) -> Iterator[Problem]:
    known = sorted(set(BUILTIN_ROLES) | set(spec.roles))

    def unknown(role: str) -> str:
        return f"unknown role '{role}'{did_you_mean(role, known)} (known roles: {', '.join(known)})"

    for index, host in enumerate(spec.hosts):
        for r_index, role in enumerate(host.roles):
            if role not in known:
                yield ("hosts", index, "roles", r_index), unknown(role)
        if len(set(host.roles)) != len(host.roles):
            yield ("hosts", index, "roles"), "lists a role twice"
        if isinstance(host.primary, list):
            for p_index, role in enumerate(host.primary):
                if role not in host.roles:
                    yield ("hosts", index, "primary", p_index), f"'{role}' is not one of this host's roles ({', '.join(host.roles)})"
    for role in spec.restart:
        if role not in known:
            yield ("restart", role), unknown(role)
    if spec.migrate is not None:
        if spec.migrate.role not in known:
            yield ("migrate", "role"), unknown(spec.migrate.role)
        elif not any(spec.migrate.role in h.roles for h in spec.hosts):
            yield ("migrate", "role"), f"no host of this stage has role '{spec.migrate.role}'"
    for hook_name in type(spec.hooks).model_fields:
        for index, hook in enumerate(getattr(spec.hooks, hook_name)):
            for r_index, role in enumerate(hook.roles or []):
                if role not in known:
                    yield ("hooks", hook_name, index, "roles", r_index), unknown(role)


def _hosts(spec: StageSpec) -> Iterator[Problem]:
    names: dict[str, int] = {}
    endpoints: dict[tuple, int] = {}
    primaries: dict[str, int] = {}
    for index, host in enumerate(spec.hosts):
        if host.name in names:
            yield ("hosts", index, "name"), f"duplicate host '{host.name}' (also hosts[{names[host.name]}])"
        names.setdefault(host.name, index)
        endpoint = (host.address, host.port or spec.ssh.port)
        if endpoint in endpoints:
            yield ("hosts", index, "address"), (
                f"duplicate host {endpoint[0]}:{endpoint[1]} (also hosts[{endpoints[endpoint]}])")
        endpoints.setdefault(endpoint, index)
        for role in (host.roles if host.primary is True else host.primary or []):
            if role in primaries:
                yield ("hosts", index, "primary"), (
                    f"second primary for role '{role}' (hosts[{primaries[role]}] is already primary)")
            primaries.setdefault(role, index)

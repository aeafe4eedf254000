"""DRBD: pure builders of the status read and of each switchover step, and parsers.

Both the 8.4 forms (/proc/drbd, `drbdadm role|cstate|dstate` = local/peer) and the
9.x forms (`drbdsetup status --json`) are read into one NodeState. Each step script
does its action and re-reads the state it changed, in the same round trip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional

from ..config.schema import DrbdResource
from .base import MARK, Marker, mark, mark_literal, marked_text, parse_markers, q

PROC_LINE = re.compile(r"^\s*(\d+): cs:(\S+) ro:(\S+)/(\S+) ds:(\S+)/(\S+) (\S) (\S+)")
SYNC_STATES = ("SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT",
               "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID")
SECTION_KEY = "section"  # `DSAS section proc|json|end`: what follows is raw output
SECTION = f"{MARK} {SECTION_KEY}"


@dataclass(frozen=True)
class NodeState:
    """One node's view of a resource (peer fields as this node sees them)."""

    version: str = ""
    role: str = "Unknown"
    peer_role: str = "Unknown"
    cstate: str = "Unknown"  # 8.4 words: Connected, WFConnection, StandAlone, SyncSource, ...
    disk: str = "DUnknown"
    peer_disk: str = "DUnknown"
    out_of_sync_kb: int = 0
    sync_done: Optional[float] = None
    protocol: str = ""
    mounted: bool = False
    has_service_ip: bool = False
    split_brain: bool = False
    replication_path: str = "unknown"  # "ok" | "down" | "unknown": the peer's replication address answers
    managers: tuple[str, ...] = ()
    services_ok: dict = field(default_factory=dict)  # name -> bool (command checks)

    @property
    def syncing(self) -> bool:
        return self.cstate in SYNC_STATES or self.sync_done is not None or self.out_of_sync_kb > 0

    def describe(self) -> str:
        sync = f", sync {self.sync_done:.1f}%" if self.sync_done is not None else ""
        return (f"{self.role}/{self.peer_role} {self.cstate} {self.disk}/{self.peer_disk}{sync}"
                f"{', oos ' + str(self.out_of_sync_kb) + ' KiB' if self.out_of_sync_kb else ''}"
                f"{', mounted' if self.mounted else ''}{', has service IP' if self.has_service_ip else ''}")


def status_script(resource: DrbdResource, probe_link: bool = True) -> list[str]:
    """Everything about the resource on one node, in one round trip (read-only); `probe_link`:
    also whether the replication link answers now (up to 1 s more)."""
    r, mnt = q(resource.name), q(resource.mount)
    lines = [
        f"echo {q(SECTION + ' proc')}",
        "cat /proc/drbd 2>/dev/null || true",
        f"echo {q(SECTION + ' json')}",
        "if head -n1 /proc/drbd 2>/dev/null | grep -q '^version: 9'; then "
        f"drbdsetup status --json {r} 2>/dev/null || true; fi",
        f"echo {q(SECTION + ' end')}",
        mark("role", f"$(drbdadm role {r} 2>/dev/null | tail -n1)"),
        mark("cstate", f"$(drbdadm cstate {r} 2>/dev/null | tail -n1)"),
        mark("dstate", f"$(drbdadm dstate {r} 2>/dev/null | tail -n1)"),
        f"if mountpoint -q {mnt} 2>/dev/null; then " + mark("mounted", "yes") + "; fi",
        "if dmesg 2>/dev/null | grep -q 'Split-Brain detected'; then " + mark("split_brain", "yes") + "; fi",
        "for m in pacemakerd drbd-reactor; do pidof $m >/dev/null 2>&1 && " + mark("manager", "$m") + "; done; true",
        *(replication_probe(resource) if probe_link else []),
    ]
    ip = resource.service_ip
    if ip is not None:
        lines.append(f"if ip -o addr show dev {q(ip.interface)} 2>/dev/null | grep -q {q(' ' + ip.address + '/')}; "
                     "then " + mark("service_ip", "yes") + "; fi")
    for service in resource.services:
        if service.check is not None and service.check.command:
            lines.append(f"if ( {service.check.command} ) >/dev/null 2>&1; then "
                         + mark_literal("service_ok", f"{service.name} yes") + "; else "
                         + mark_literal("service_ok", f"{service.name} no") + "; fi")
    return lines


def replication_probe(resource: DrbdResource) -> list[str]:
    """Does the peer's replication address answer now? DRBD itself notices a dead link only at
    its next ping (ping-int, 10 s by default) and says Connected meanwhile: a switchover must not
    start on that. The address is the kernel's own (`drbdsetup show`: _remote_host); one ICMP echo
    (ping) or, without ping, one ARP probe (arping, same subnet) on the route to it, 1 s each."""
    r = q(resource.name)
    return [
        f"peer=$(drbdsetup show {r} 2>/dev/null | sed -n '/_remote_host/,/}}/s/.*address.*[ \\t]\\([0-9.]*\\):[0-9]*;.*/\\1/p' | head -n1)",
        'path=unknown',
        'if [ -n "$peer" ]; then',
        '  if command -v ping >/dev/null 2>&1; then',
        '    if ping -n -q -c 1 -W 1 "$peer" >/dev/null 2>&1; then path=ok; else path=down; fi',
        '  elif command -v arping >/dev/null 2>&1; then',
        '    dev=$(ip -o route get "$peer" 2>/dev/null | sed -n \'s/.* dev \\([^ ]*\\).*/\\1/p\')',
        '    if [ -n "$dev" ]; then',
        '      if arping -q -c 1 -w 1 -I "$dev" "$peer" >/dev/null 2>&1; then path=ok; else path=down; fi',
        '    fi',
        '  fi',
        'fi',
        mark("replication_path", "$path $peer"),
    ]


def parse_proc_drbd(text: str, minor: Optional[int] = None) -> dict:
    """The block of one minor (the first if None) of an 8.4 /proc/drbd."""
    found: dict = {}
    version = ""
    for line in text.splitlines():
        if line.startswith("version:"):
            version = line.split()[1]
        match = PROC_LINE.match(line)
        if match:
            if found and minor is None:
                break
            if minor is not None and int(match.group(1)) != minor:
                found = {}
                continue
            found = {"minor": int(match.group(1)), "cstate": match.group(2), "role": match.group(3),
                     "peer_role": match.group(4), "disk": match.group(5), "peer_disk": match.group(6),
                     "protocol": match.group(7)}
        elif found and "oos:" in line:
            oos = re.search(r"oos:(\d+)", line)
            found["oos"] = int(oos.group(1)) if oos else 0
        elif found and "sync'ed:" in line:
            done = re.search(r"sync'ed:\s*([\d.]+)%", line)
            found["sync_done"] = float(done.group(1)) if done else None
    found["version"] = version
    return found


def parse_status_json(text: str, resource: str) -> dict:
    """DRBD 9 `drbdsetup status --json` for one resource, in 8.4 words."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    item = next((r for r in data if r.get("name") == resource), None) if isinstance(data, list) else None
    if item is None:
        return {}
    devices = item.get("devices") or [{}]
    connections = item.get("connections") or []
    out = {"role": item.get("role", "Unknown"), "disk": devices[0].get("disk-state", "DUnknown")}
    if not connections:
        out.update(cstate="StandAlone", peer_role="Unknown", peer_disk="DUnknown")
        return out
    conn = connections[0]
    peer_devices = conn.get("peer_devices") or [{}]
    replication = peer_devices[0].get("replication-state", "Off")
    connection = conn.get("connection-state", "Unknown")
    cstate = connection
    if connection == "Connected":
        cstate = "Connected" if replication == "Established" else replication
    elif connection == "Connecting":
        cstate = "WFConnection"
    out.update(cstate=cstate, peer_role=conn.get("peer-role", "Unknown"),
               peer_disk=peer_devices[0].get("peer-disk-state", "DUnknown"),
               oos=int(peer_devices[0].get("out-of-sync", 0) or 0))
    if peer_devices[0].get("percent-in-sync") is not None and replication.startswith(("Sync", "PausedSync")):
        out["sync_done"] = float(peer_devices[0]["percent-in-sync"])
    return out


def parse_status(stdout: str, resource: DrbdResource) -> NodeState:
    """The status script's output -> NodeState (proc/json sections, then markers)."""
    proc = _section(stdout, "proc")
    info = parse_status_json(_section(stdout, "json"), resource.name) if _section(stdout, "json").strip() else {}
    minor = _minor(resource.device)
    proc_info = parse_proc_drbd(proc, minor) if proc.strip() else {}
    markers: dict[str, list[str]] = {}
    for marker in parse_markers(stdout):
        if marker.key != SECTION_KEY:
            markers.setdefault(marker.key, []).append(marker.value)
    if not info:
        info = dict(proc_info)
        role = (markers.get("role", [""])[0] or "").split("/")
        cstate = markers.get("cstate", [""])[0]
        dstate = (markers.get("dstate", [""])[0] or "").split("/")
        if len(role) == 2 and role[0]:
            info["role"], info["peer_role"] = role
        if cstate:
            info["cstate"] = cstate
        if len(dstate) == 2 and dstate[0]:
            info["disk"], info["peer_disk"] = dstate
    path = (markers.get("replication_path", ["unknown"])[0] or "unknown").split()[0]
    services = {}
    for value in markers.get("service_ok", []):
        name, _, ok = value.rpartition(" ")
        services[name] = ok == "yes"
    return NodeState(
        version=proc_info.get("version", ""), role=info.get("role", "Unknown"),
        peer_role=info.get("peer_role", "Unknown"), cstate=info.get("cstate", "Unknown"),
        disk=info.get("disk", "DUnknown"), peer_disk=info.get("peer_disk", "DUnknown"),
        out_of_sync_kb=int(info.get("oos", proc_info.get("oos", 0)) or 0), sync_done=info.get("sync_done"),
        protocol=proc_info.get("protocol", ""), mounted="mounted" in markers,
        has_service_ip="service_ip" in markers, split_brain="split_brain" in markers,
        replication_path=path if path in ("ok", "down") else "unknown",
        managers=tuple(markers.get("manager", [])), services_ok=services)


def _section(stdout: str, name: str) -> str:
    """What the status script printed under `DSAS section <name>` ('' if nothing)."""
    return marked_text(stdout, Marker(SECTION_KEY, name)) or ""


def _minor(device: str) -> Optional[int]:
    match = re.search(r"drbd(\d+)$", device)
    return int(match.group(1)) if match else None


def switch_refusals(resource: DrbdResource, states: dict[str, Optional[NodeState]], source: str,
                    target: str) -> list[str]:
    """Every reason a planned switchover from `source` to `target` is unsafe now (empty: safe)."""
    reasons = []
    for name, state in states.items():
        if state is None:
            reasons.append(f"{name} is unreachable")
    if reasons:
        return reasons
    a, b = states[source], states[target]
    if resource.manager != "none" or a.managers or b.managers:
        found = sorted(set(a.managers) | set(b.managers)) or [resource.manager]
        reasons.append(f"a cluster manager ({', '.join(found)}) owns {resource.name}: switch over through it, "
                       f"not behind its back")
    for name, state in ((source, a), (target, b)):
        if state.split_brain or state.cstate == "StandAlone":
            reasons.append(f"{name}: split brain or StandAlone ({state.cstate}): a human must pick the victim")
        elif state.cstate != "Connected":
            reasons.append(f"{name}: not Connected ({state.cstate})")
        elif state.replication_path == "down":
            reasons.append(f"{name}: the replication link to its peer does not answer, though DRBD still says "
                           f"Connected (it notices at its next ping): fix the link first")
        if state.syncing:
            reasons.append(f"{name}: a resync is running ({state.describe()})")
        if (state.disk, state.peer_disk) != ("UpToDate", "UpToDate"):
            reasons.append(f"{name}: disks are {state.disk}/{state.peer_disk}, not UpToDate/UpToDate")
    roles = [s.role for s in (a, b)]
    if roles.count("Primary") != 1:
        reasons.append(f"expected exactly one Primary, found {source}={a.role}, {target}={b.role}")
    elif a.role != "Primary":
        reasons.append(f"{target} is the Primary already; the target of a switchover must be the Secondary")
    if b.role != "Secondary":
        reasons.append(f"{target} is {b.role}, not Secondary")
    return list(dict.fromkeys(reasons))


# ---- the steps: each does one thing and re-reads what it changed -----------------------------


def stop_services(resource: DrbdResource) -> list[str]:
    lines = []
    for service in reversed(resource.services):
        lines += [mark_literal("step", f"stop {service.name}"), f"( {service.stop} ) 1>&2"]
    return lines


def start_services(resource: DrbdResource) -> list[str]:
    lines = []
    for service in resource.services:
        lines += [mark_literal("step", f"start {service.name}"), f"( {service.start} ) 1>&2"]
    return lines


def unmount(resource: DrbdResource) -> list[str]:
    mnt = q(resource.mount)
    return [
        f"if mountpoint -q {mnt}; then",
        f"  umount {mnt} || {{ echo 'umount failed; holders:' >&2; fuser -vm {mnt} >&2 2>&1 || true; exit 1; }}",
        "fi",
        f"! mountpoint -q {mnt}",
    ]


def mount(resource: DrbdResource) -> list[str]:
    mnt, dev = q(resource.mount), q(resource.device)
    options = f"-o {q(resource.mount_options)} " if resource.mount_options else ""
    return [f"mkdir -p {mnt}",
            f"mountpoint -q {mnt} || mount -t {q(resource.fstype)} {options}{dev} {mnt}",
            f"mountpoint -q {mnt}"]


def demote(resource: DrbdResource) -> list[str]:
    r = q(resource.name)
    return [f"drbdadm secondary {r}",
            f"role=$(drbdadm role {r} | tail -n1); case \"$role\" in Secondary*) ;; "
            f"*) echo \"still $role after demote\" >&2; exit 1;; esac"]


def promote(resource: DrbdResource) -> list[str]:
    """Never --force: a planned switchover only promotes an UpToDate, Connected Secondary."""
    r = q(resource.name)
    return [
        f"[ \"$(drbdadm cstate {r} | tail -n1)\" = Connected ] || {{ echo 'refusing to promote: not Connected' >&2; exit 1; }}",
        f"[ \"$(drbdadm dstate {r} | tail -n1)\" = UpToDate/UpToDate ] || {{ echo 'refusing to promote: not UpToDate/UpToDate' >&2; exit 1; }}",
        f"case \"$(drbdadm role {r} | tail -n1)\" in */Primary) echo 'refusing to promote: the peer is still Primary' >&2; exit 1;; esac",
        f"drbdadm primary {r}",
        f"case \"$(drbdadm role {r} | tail -n1)\" in Primary*) ;; *) echo 'not Primary after promote' >&2; exit 1;; esac",
    ]


def reclaim(resource: DrbdResource) -> list[str]:
    """Undo of a demote: make the ORIGINAL primary Primary again, Connected or not.

    It held the newest data and the peer never became Primary (the walk back demotes the peer
    before it gets here), so this is the one promote that cannot split the brain. Refused only if
    this node's own view says the peer is Primary, or its disk is not UpToDate. Never --force."""
    r = q(resource.name)
    return [
        f"role=$(drbdadm role {r} | tail -n1)",
        "case \"$role\" in Primary*) exit 0;; */Primary) echo 'refusing to promote: the peer is Primary' >&2; exit 1;; esac",
        f"case \"$(drbdadm dstate {r} | tail -n1)\" in UpToDate/*) ;; "
        f"*) echo \"refusing to promote: local disk is not UpToDate ($(drbdadm dstate {r} | tail -n1))\" >&2; exit 1;; esac",
        f"drbdadm primary {r}",
        f"case \"$(drbdadm role {r} | tail -n1)\" in Primary*) ;; *) echo 'not Primary after promote' >&2; exit 1;; esac",
    ]


def drop_ip(resource: DrbdResource) -> list[str]:
    ip = resource.service_ip
    if ip is None:
        return []
    cidr, dev = q(f"{ip.address}/{ip.prefix}"), q(ip.interface)
    has = f"ip -o addr show dev {dev} | grep -q {q(' ' + ip.address + '/')}"
    return [f"if {has}; then ip addr del {cidr} dev {dev}; fi", f"! {has}"]


def add_ip(resource: DrbdResource) -> list[str]:
    """Add the service IP (after duplicate detection) and announce it with gratuitous ARP."""
    ip = resource.service_ip
    if ip is None:
        return []
    cidr, dev, address = q(f"{ip.address}/{ip.prefix}"), q(ip.interface), q(ip.address)
    has = f"ip -o addr show dev {dev} | grep -q {q(' ' + ip.address + '/')}"
    return [
        f"if ! {has}; then",
        f"  if command -v arping >/dev/null 2>&1 && ! arping -D -q -c 1 -w 1 -I {dev} {address}; then",
        f"    echo 'refusing to add {ip.address}: another host answers for it' >&2; exit 1",
        "  fi",
        f"  ip addr add {cidr} dev {dev}",
        "fi",
        has,
        # announce in the background, detached from this SSH channel (it must not hold it open)
        f"if command -v arping >/dev/null 2>&1; then setsid arping -q -U -c 2 -w 2 -I {dev} {address} "
        f"</dev/null >/dev/null 2>&1 & fi",
    ]

"""LVS (IPVS) through ipvsadm: pure builders and parsers.

Read: `ipvsadm -Sn` (rules in restore format: forwarding method, weight, thresholds)
and `ipvsadm -Ln --exact` (connection counters), in one script.
Drain: `ipvsadm -e` with weight 0, RESTATING the forwarding method and thresholds
from the snapshot: `-e` resets what it is not told (without `-m`, a NAT server
silently becomes direct routing). Restore: the same edit with the original weight.
A real server is never removed to drain it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

from ..base import Marker, parse_markers, q, render, split_at_marker, text_before_marker

METHOD_FLAGS = {"-m": "Masq", "-g": "Route", "-i": "Tunnel"}
FLAG_OF_METHOD = {v: k for k, v in METHOD_FLAGS.items()}
PROTO_FLAGS = {"-t": "TCP", "-u": "UDP", "-f": "FWM", "--sctp-service": "SCTP"}
FLAG_OF_PROTO = {"TCP": "-t", "UDP": "-u", "FWM": "-f", "SCTP": "--sctp-service"}
# Schedulers whose weight-0 handling was reviewed (PROCEDURES §1.2): weight 0 = quiesced.
DRAINABLE_SCHEDULERS = ("rr", "wrr", "lc", "wlc")
HASH_SCHEDULERS = ("sh", "mh", "dh")
LIST_SECTION = Marker("section", "list")  # the line between rules, counters and the rest
SPLIT = LIST_SECTION.line


@dataclass(frozen=True)
class RealServer:
    address: str  # "10.0.0.21:8080"
    method: str  # Masq | Route | Tunnel | Local
    weight: int
    upper: int = 0  # -x (0: none)
    lower: int = 0  # -y
    active: int = 0
    inactive: int = 0


@dataclass(frozen=True)
class VirtualService:
    proto: str  # TCP | UDP | FWM | SCTP
    address: str  # "10.77.1.10:80" or a fwmark number
    scheduler: str
    flags: tuple[str, ...] = ()
    persistent: Optional[int] = None
    reals: dict[str, RealServer] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.proto} {self.address}"

    def drain_refusal(self) -> Optional[str]:
        """Why weight 0 would not be a drain on this service (None: it is fine)."""
        if self.scheduler in HASH_SCHEDULERS:
            fallback = f"{self.scheduler}-fallback"
            if self.scheduler == "dh" or fallback not in self.flags:
                return (f"{self.key} uses the hash scheduler '{self.scheduler}' without {fallback}: clients "
                        f"hashed to a weight-0 server would get no server at all")
            return None
        if self.scheduler not in DRAINABLE_SCHEDULERS:
            return f"{self.key} uses scheduler '{self.scheduler}', whose weight-0 behaviour dsas has not reviewed"
        return None


def read_script() -> list[str]:
    """One round trip: rules (restore format), then counters, then whether keepalived runs."""
    return [
        "command -v ipvsadm >/dev/null 2>&1 || { echo 'ipvsadm is not installed' >&2; exit 3; }",
        "ipvsadm -Sn",
        f"echo {q(SPLIT)}",
        "ipvsadm -Ln --exact",
        f"echo {q(SPLIT)}",
        # shell builtins only from here: each process a director forks costs (40 ms on the lab's UML)
        "for c in /proc/[0-9]*/comm; do n=; { read -r n < \"$c\"; } 2>/dev/null || :; "
        "if [ \"$n\" = keepalived ]; then echo keepalived; break; fi; done",
        "e=; { read -r e < /proc/sys/net/ipv4/vs/expire_quiescent_template; } 2>/dev/null || :",
        "echo \"expire_quiescent_template=$e\"",
    ]


def parse_expire_quiescent_template(stdout: str) -> Optional[int]:
    """The director's net.ipv4.vs.expire_quiescent_template (None if unreadable)."""
    match = re.search(r"^expire_quiescent_template=(\d+)$", stdout, re.MULTILINE)
    return int(match.group(1)) if match else None


def parse_read(stdout: str) -> tuple[dict[str, VirtualService], bool]:
    """The director's services with their real servers, and whether keepalived runs."""
    parts = split_at_marker(stdout, LIST_SECTION)
    if len(parts) < 2:
        raise ValueError("unexpected ipvsadm output (no section marker)")
    services = parse_save(parts[0])
    counters = parse_list(parts[1])
    merged = {}
    for key, service in services.items():
        reals = {}
        for address, real in service.reals.items():
            active, inactive = counters.get(key, {}).get(address, (0, 0))
            reals[address] = RealServer(real.address, real.method, real.weight, real.upper, real.lower,
                                        active, inactive)
        merged[key] = VirtualService(service.proto, service.address, service.scheduler, service.flags,
                                     service.persistent, reals)
    # its own lines only: a journal copy read in the same round trip follows them
    keepalived = len(parts) > 2 and "keepalived" in text_before_marker(parts[2])
    return merged, keepalived


def parse_save(text: str) -> dict[str, VirtualService]:
    """`ipvsadm -Sn` lines: `-A -t VIP:PORT -s wrr [-p 300] [-b flags]`, `-a -t VIP -r RIP -m -w 1 ...`."""
    services: dict[str, VirtualService] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if not words or words[0] not in ("-A", "-a"):
            continue
        opts = _options(words[1:])
        proto_flag = next((f for f in PROTO_FLAGS if f in opts), None)
        if proto_flag is None:
            continue
        key = f"{PROTO_FLAGS[proto_flag]} {opts[proto_flag]}"
        if words[0] == "-A":
            flags = tuple(opts.get("-b", "").split(",")) if opts.get("-b") else ()
            persistent = int(opts["-p"]) if opts.get("-p", "").isdigit() else (300 if "-p" in opts else None)
            services[key] = VirtualService(PROTO_FLAGS[proto_flag], opts[proto_flag], opts.get("-s", "wlc"),
                                           flags, persistent, {})
        else:
            method = next((METHOD_FLAGS[f] for f in METHOD_FLAGS if f in opts), "Route")
            real = RealServer(opts["-r"], method, int(opts.get("-w", 1)), int(opts.get("-x", 0)),
                              int(opts.get("-y", 0)))
            if key in services:
                services[key].reals[real.address] = real
    return services


def _options(words: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        nxt = words[index + 1] if index + 1 < len(words) else ""
        if word.startswith("-") and nxt and not nxt.startswith("-"):
            opts[word] = nxt
            index += 2
        else:
            opts[word] = ""
            index += 1
    return opts


_SERVICE = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+(\S+)\s+(\S+)")
_REAL = re.compile(r"^\s+->\s+(\S+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)")


def parse_list(text: str) -> dict[str, dict[str, tuple[int, int]]]:
    """`ipvsadm -Ln --exact`: service key -> real server -> (ActiveConn, InActConn)."""
    result: dict[str, dict[str, tuple[int, int]]] = {}
    current: Optional[str] = None
    for line in text.splitlines():
        service = _SERVICE.match(line)
        if service:
            current = f"{service.group(1)} {service.group(2)}"
            result[current] = {}
            continue
        real = _REAL.match(line)
        if real and current is not None and real.group(1) != "RemoteAddress:Port":
            result[current][real.group(1)] = (int(real.group(4)), int(real.group(5)))
    return result


def edit_argv(service: VirtualService, real: RealServer, weight: int) -> list[str]:
    """`ipvsadm -e` that changes ONLY the weight: method and thresholds restated."""
    if real.method not in FLAG_OF_METHOD:
        raise ValueError(f"{real.address} in {service.key}: cannot edit a '{real.method}' real server")
    argv = ["ipvsadm", "-e", FLAG_OF_PROTO[service.proto], service.address, "-r", real.address,
            FLAG_OF_METHOD[real.method], "-w", str(weight)]
    if real.upper:
        argv += ["-x", str(real.upper)]
    if real.lower:
        argv += ["-y", str(real.lower)]
    return argv


def set_weights_script(edits: list[tuple[VirtualService, RealServer, int]]) -> list[str]:
    """Apply weight edits, then read the table back (the caller verifies it)."""
    from ..base import render

    lines = [render(edit_argv(service, real, weight)) for service, real, weight in edits]
    return lines + read_script()


def add_real_argv(service_key: str, real_address: str, method: str, weight: int) -> list[str]:
    """`ipvsadm -a`: a new real server in `service_key` ("TCP 10.0.0.1:80")."""
    proto, address = service_key.split(" ", 1)
    return ["ipvsadm", "-a", FLAG_OF_PROTO[proto], address, "-r", real_address, FLAG_OF_METHOD[method],
            "-w", str(weight)]


def delete_real_argv(service_key: str, real_address: str) -> list[str]:
    proto, address = service_key.split(" ", 1)
    return ["ipvsadm", "-d", FLAG_OF_PROTO[proto], address, "-r", real_address]


def membership_script(changes: list[list[str]]) -> list[str]:
    """Run `ipvsadm -a/-d` lines, then read the table back (the caller verifies it)."""
    return [render(argv) for argv in changes] + read_script()


def maintenance_file_lines(path: str, create: bool) -> list[str]:
    """On a real server: create (or remove) the file its keepalived health check fails on."""
    if create:
        return [f"mkdir -p \"$(dirname {q(path)})\" && touch {q(path)}"]
    return [f"rm -f {q(path)}"]


def service_address(service_key: str) -> str:
    """The virtual address of a service key: "TCP 10.77.1.10:80" -> "10.77.1.10" (IPv6 brackets dropped)."""
    return service_key.split(" ", 1)[1].rsplit(":", 1)[0].strip("[]")


def vip_held_lines(addresses: list[str]) -> list[str]:
    """On a director: one marker per address in `addresses` that it holds now (keepalived's VRRP
    MASTER holds the VIP; its BACKUP does not). One `ip` process."""
    lines = ["a=$(ip -o addr show 2>/dev/null)"]
    for address in addresses:
        lines.append(f"case \"$a\" in *{q(' ' + address + '/')}*) echo {q(Marker('vip-held', address).line)};; esac")
    return lines


def parse_vip_held(stdout: str) -> list[str]:
    """The addresses a director printed with vip_held_lines."""
    return [m.value for m in parse_markers(stdout) if m.key == "vip-held"]

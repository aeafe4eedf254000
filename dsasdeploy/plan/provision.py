"""`dsas add-server`, the pure part: the request checked against the stage, file names, and
the boot-loader / installer files rendered from the project's templates.

Nothing here touches the network. The runner (execute/provision.py) ships what this builds.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import jinja2

from ..config.schema import BUILTIN_ROLES, InstallProfile, Provision
from ..config.stage import Stage

TEMPLATES_DIR = "recipes/templates"
HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")
ANSWER_TEMPLATE = {"preseed": "preseed.cfg.j2", "kickstart": "kickstart.cfg.j2", "lab": "lab-installer.sh.j2"}
ANSWER_SUFFIX = {"preseed": ".cfg", "kickstart": ".ks", "lab": ".sh"}
BOOT_TEMPLATE = {"bios": "pxelinux.cfg.j2", "uefi": "grub.cfg.j2"}
STEPS = ("validate", "boot_files", "power_on", "install", "pxe_cleanup", "bootstrap", "deploy", "join_pool",
         "stage_file")


def normalize_mac(text: str) -> str:
    """'52-54-00-AB-cd-01' or '5254.00ab.cd01' -> '52:54:00:ab:cd:01'; ValueError if it is not
    a unicast Ethernet address."""
    digits = re.sub(r"[:\-.]", "", text.strip().lower())
    if not re.fullmatch(r"[0-9a-f]{12}", digits) or not re.fullmatch(
            r"[0-9a-fA-F]{2}([:\-][0-9a-fA-F]{2}){5}|[0-9a-fA-F]{4}(\.[0-9a-fA-F]{4}){2}|[0-9a-fA-F]{12}", text.strip()):
        raise ValueError(f"'{text}' is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")
    if int(digits[:2], 16) & 1:
        raise ValueError(f"{text} is a multicast address, not a NIC's")
    if digits == "0" * 12:
        raise ValueError(f"{text} is the all-zero address")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def pxelinux_name(mac: str) -> str:
    """PXELINUX's per-MAC file: ARP type 01 + the MAC in lower-case hex with dashes."""
    return "01-" + normalize_mac(mac).replace(":", "-")


def grub_name(mac: str) -> str:
    """GRUB2 netboot's per-MAC file (UEFI)."""
    return "grub.cfg-" + pxelinux_name(mac)


def boot_config_path(provision: Provision, profile: InstallProfile, mac: str) -> str:
    """Where the one-shot per-MAC boot-loader file goes on the boot server."""
    if profile.firmware == "uefi":
        return f"{provision.tftp_root.rstrip('/')}/grub/{grub_name(mac)}"
    return f"{provision.tftp_root.rstrip('/')}/pxelinux.cfg/{pxelinux_name(mac)}"


@dataclass(frozen=True)
class AddRequest:
    """What the operator asked for (normalized)."""

    stage: str
    name: str
    mac: str
    ip: str
    roles: tuple[str, ...]
    profile: str
    bmc_host: str
    bmc_port: int

    def as_dict(self) -> dict:
        return {"stage": self.stage, "name": self.name, "mac": self.mac, "ip": self.ip, "roles": list(self.roles),
                "profile": self.profile, "bmc_host": self.bmc_host, "bmc_port": self.bmc_port}


def parse_bmc(value: Optional[str], default_port: int) -> tuple[str, int]:
    """'10.0.9.4' or '10.0.9.4:9623' -> (host, port)."""
    if not value:
        raise ValueError("--bmc is required: the address of the machine's BMC (IPMI over LAN)")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    host = host or value
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"--bmc {value}: bad port '{port}'")
    if not re.fullmatch(r"[A-Za-z0-9.\-]+", host):
        raise ValueError(f"--bmc {value}: not a host name or IPv4 address")
    return host, int(port) if port else default_port


def build_request(stage: Stage, name: str, mac: str, ip: str, roles: list[str], profile: Optional[str],
                  bmc: Optional[str]) -> tuple[Optional[AddRequest], list[str]]:
    """The normalized request and every problem with it (empty list = acceptable)."""
    problems: list[str] = []
    prov = stage.settings.provision
    if prov is None:
        return None, [f"stage '{stage.name}' has no 'provision' section in dsas.yaml or stages/{stage.name}.yaml"]
    if not HOSTNAME.fullmatch(name or ""):
        problems.append(f"--name '{name}': a host name is 1-63 of a-z, 0-9 and '-', not starting or ending with '-'")
    clash = next((h for h in stage.hosts if h.name == name), None)
    if clash:
        problems.append(f"--name {name}: stage '{stage.name}' already has a host named {name} ({clash.address})")
    try:
        mac = normalize_mac(mac or "")
        owner = next((h for h in stage.hosts if h.mac and normalize_mac(h.mac) == mac), None)
        if owner:
            problems.append(f"--mac {mac}: already belongs to {owner.name} in stage '{stage.name}'")
    except ValueError as exc:
        problems.append(f"--mac: {exc}")
    try:
        address = ipaddress.IPv4Address(ip or "")
        ip = str(address)
        if address.is_multicast or address.is_unspecified or address.is_loopback or ip.endswith(".255"):
            problems.append(f"--ip {ip}: not a host address")
        owner = next((h for h in stage.hosts if h.address == ip), None)
        if owner:
            problems.append(f"--ip {ip}: already used by {owner.name} in stage '{stage.name}'")
    except ValueError:
        problems.append(f"--ip '{ip}': not an IPv4 address")
        address = None
    known_roles = sorted(set(BUILTIN_ROLES) | set(stage.settings.roles))
    if not roles:
        problems.append("--role: give the new host's role(s), e.g. --role web")
    for role in roles:
        if role not in known_roles:
            problems.append(f"--role {role}: unknown role (known roles: {', '.join(known_roles)})")
    if profile is None:
        profile = prov.default_profile or (next(iter(prov.profiles)) if len(prov.profiles) == 1 else None)
        if profile is None:
            problems.append(f"--profile: choose one of {', '.join(sorted(prov.profiles))}")
    elif profile not in prov.profiles:
        problems.append(f"--profile {profile}: no such profile (profiles: {', '.join(sorted(prov.profiles))})")
    if profile in prov.profiles and address is not None and prov.profiles[profile].gateway:
        network = ipaddress.IPv4Network(f"{prov.profiles[profile].gateway}/{prov.profiles[profile].prefix}",
                                        strict=False)
        if address not in network:
            problems.append(f"--ip {ip}: outside the network {network} of profile '{profile}' (its gateway "
                            f"{prov.profiles[profile].gateway})")
    try:
        bmc_host, bmc_port = parse_bmc(bmc, prov.bmc.port)
    except ValueError as exc:
        problems.append(str(exc))
        bmc_host, bmc_port = "", 0
    if problems:
        return None, problems
    return AddRequest(stage.name, name, mac, ip, tuple(roles), profile, bmc_host, bmc_port), []


@dataclass(frozen=True)
class BootFile:
    """A file dsas installs on the boot server."""

    path: str
    content: str
    mode: str = "0644"


@dataclass(frozen=True)
class BootFiles:
    boot_config: BootFile
    answer: BootFile
    dhcp_host: BootFile
    answer_url: str
    callback_url: str

    @property
    def all(self) -> tuple[BootFile, ...]:
        # the boot config last: the machine cannot start an install before its answer file is there
        return (self.answer, self.dhcp_host, self.boot_config)


def dhcp_host_line(request: AddRequest) -> str:
    """A dnsmasq dhcp-hostsdir entry (the right-hand side of dhcp-host=)."""
    return f"{request.mac},{request.ip},{request.name},infinite\n"


def dhcp_host_path(provision: Provision, request: AddRequest) -> str:
    return f"{provision.dhcp_hostsdir.rstrip('/')}/dsas-{request.name}"


def answer_path(provision: Provision, profile: InstallProfile, request: AddRequest) -> str:
    return (f"{provision.http_root.rstrip('/')}/answers/{request.mac.replace(':', '-')}"
            f"{ANSWER_SUFFIX[profile.installer]}")


def template_environment(project_dir: Path) -> jinja2.Environment:
    """Templates from the project's recipes/templates/; a missing value is an error, never ''."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(project_dir / TEMPLATES_DIR)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    env.filters["partition"] = partition_path
    env.filters["kdisk"] = lambda disk: disk[len("/dev/"):] if disk.startswith("/dev/") else disk
    return env


def partition_path(disk: str, number: int) -> str:
    """Partition `number` of `disk`: by-id/by-path links get -partN, nvme0n1 gets p1, sda gets 1."""
    if "/by-id/" in disk or "/by-path/" in disk:
        return f"{disk}-part{number}"
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def render_context(request: AddRequest, profile: InstallProfile, provision: Provision, token: str,
                   authorized_key: str) -> dict:
    """Every value a template may use."""
    network = ipaddress.IPv4Network(f"{request.ip}/{profile.prefix}", strict=False)
    base = provision.http_url.rstrip("/")
    answer = answer_path(provision, profile, request)
    answer_url = base + "/answers/" + answer.rsplit("/", 1)[1]
    return {
        "host": {"name": request.name, "fqdn": f"{request.name}.{profile.domain}" if profile.domain else request.name,
                 "ip": request.ip, "prefix": profile.prefix, "netmask": str(network.netmask),
                 "gateway": profile.gateway or "", "nameservers": profile.nameservers, "domain": profile.domain,
                 "mac": request.mac, "mac_dashes": request.mac.replace(":", "-"), "interface": profile.interface,
                 "roles": list(request.roles)},
        "profile": profile.model_dump(),
        "disks": profile.disks, "raid": profile.raid, "packages": profile.packages,
        "ssh_authorized_key": authorized_key.strip(),
        "callback_url": f"{base}/callback/{token}", "callback_token": token,
        "answer_url": answer_url, "http_url": base,
        "kernel": profile.kernel, "initrd": profile.initrd, "kernel_args": profile.kernel_args,
    }


def render_boot_files(project_dir: Path, request: AddRequest, provision: Provision, token: str,
                      authorized_key: str) -> BootFiles:
    """Render the per-MAC boot config, the answer file and the DHCP reservation.

    Raises jinja2.TemplateError (e.g. TemplateNotFound, UndefinedError) on a template problem."""
    if not TOKEN.fullmatch(token):
        raise ValueError("callback token must be 16-64 URL-safe characters")
    profile = provision.profiles[request.profile]
    env = template_environment(project_dir)
    context = render_context(request, profile, provision, token, authorized_key)
    answer_text = env.get_template(profile.template or ANSWER_TEMPLATE[profile.installer]).render(context)
    boot_text = env.get_template(BOOT_TEMPLATE[profile.firmware]).render(
        {**context, "installer": profile.installer})
    return BootFiles(
        boot_config=BootFile(boot_config_path(provision, profile, request.mac), boot_text),
        answer=BootFile(answer_path(provision, profile, request), answer_text),
        dhcp_host=BootFile(dhcp_host_path(provision, request), dhcp_host_line(request)),
        answer_url=context["answer_url"], callback_url=context["callback_url"])


@dataclass(frozen=True)
class Callback:
    """What the installed machine reported (the body it POSTed to the boot server)."""

    token: str
    mac: str
    hostname: str
    ip: str
    hostkey: str  # "ssh-ed25519 AAAA..."
    extra: dict = field(default_factory=dict)


def parse_callback(text: str) -> Callback:
    """key=value lines -> Callback; ValueError names what is missing or malformed."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    missing = [k for k in ("token", "mac", "hostkey") if not fields.get(k)]
    if missing:
        raise ValueError(f"callback lacks {', '.join(missing)}")
    parts = fields["hostkey"].split()
    if len(parts) < 2 or not re.fullmatch(r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa)", parts[0]) \
            or not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", parts[1]):
        raise ValueError(f"callback hostkey is not an SSH public key: {fields['hostkey'][:40]!r}")
    return Callback(token=fields["token"], mac=normalize_mac(fields["mac"]), hostname=fields.get("hostname", ""),
                    ip=fields.get("ip", ""), hostkey=f"{parts[0]} {parts[1]}",
                    extra={k: v for k, v in fields.items() if k not in ("token", "mac", "hostname", "ip", "hostkey")})


def check_callback(callback: Callback, request: AddRequest, token: str) -> list[str]:
    """Why a callback must not be trusted (empty: it is the machine we installed)."""
    problems = []
    if callback.token != token:
        problems.append("the token does not match the one rendered into the answer file")
    if callback.mac != request.mac:
        problems.append(f"it comes from MAC {callback.mac}, not {request.mac}")
    if callback.hostname and callback.hostname != request.name:
        problems.append(f"it says hostname {callback.hostname}, not {request.name}")
    return problems


def pick_weight(weights: list[int]) -> int:
    """The weight a new real server ends at: the most common weight of its peers (ties: the highest)."""
    live = [w for w in weights if w > 0]
    if not live:
        return 1
    return max(set(live), key=lambda w: (live.count(w), w))

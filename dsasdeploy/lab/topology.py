"""Names and addresses of the lab: the one place that says what lives where (pure, no I/O).

    root namespace (the CONTROLLER: dsas, pytest)        netns "dsaslab" = the switch (bridges only)
      dsaslab-m 10.77.0.1/24  ── veth ── br-mgmt 10.77.0.0/24: lb1 .10, drbd-a .21, drbd-b .22,
                                                            drbd service IP .20, boot1 .6
      dsaslab-c 10.77.1.1/24  ── veth ── br-pub  10.77.1.0/24: VIP 10.77.1.10 (lb1), client .100
      dsaslab-p 10.77.2.254/24 ─ veth ── br-priv 10.77.2.0/24: lb1 10.77.2.1 (gw of the web hosts),
                                                            cache1 .5, boot1 .6 (DHCP for reserved
                                                            MACs only), webN 10.77.2.(10+N),
                                                            pxe-vm (qemu, tap-pxe0, MAC 52:54:00:77:02:00)
                                         br-repl 10.77.3.0/24: drbd-a .21, drbd-b .22 (DRBD only)
                                         br-boot 10.77.4.0/24: boot1 .1 (DHCP range .100-.200)
      ipmi_sim (the pxe-vm's BMC) on 127.0.0.1:9623 in the root namespace (loopback only)

The web hosts have a single address, on br-priv; it is both their SSH address (stage file) and
their LVS real-server address, so the deploy tool needs no mapping between the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_STATE_DIR = "/var/lib/dsas-lab"
DEFAULT_CACHE_DIR = "/var/cache/dsas-lab"
MAX_WEB = 100
DEFAULT_WEB = 3
# how the lab balances the web hosts (`dsas lab up --lb SHAPE`): see lbshapes.py
LB_SHAPES = ("ipvsadm", "keepalived", "dr", "haproxy")
DEFAULT_LB = "ipvsadm"

SWITCH_NS = "dsaslab"
NS_PREFIX = "dsaslab-"

VIP = "10.77.1.10"
VIP_PORT = 80
APP_PORT = 8080
DIRECTOR_PRIV = "10.77.2.1"
CLIENT_ADDR = "10.77.1.100"
MEMCACHED_ADDR = "10.77.2.5"
MEMCACHED_PORT = 11211
DRBD_SERVICE_IP = "10.77.0.20"
DRBD_SERVICE_PORT = 8000
DRBD_MOUNT = "/srv/data"
BOOT_ADDR = "10.77.0.6"
BOOT_NET_ADDR = "10.77.4.1"
DEPLOY_TO = "/srv/labapp"
# the balancers' side of a web host (lbshapes.py): keepalived's check fails while the maintenance
# file exists; HAProxy's runtime API socket and backend
MAINTENANCE_FILE = f"{DEPLOY_TO}/shared/maintenance"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
HAPROXY_BACKEND = "web"

# ---- the PXE-installable "bare-metal" machine (fixed interface: `dsas add-server` relies on it) ----
# boot1's third NIC, on br-priv: dnsmasq answers DHCP there for reserved MACs only
PXE_PRIV_ADDR = "10.77.2.6"
PXE_PRIV_PREFIX = 24
PXE_PRIV_GATEWAY = DIRECTOR_PRIV  # router option dnsmasq hands out on br-priv
PXE_PRIV_ULA = "fd77:2::6/64"  # router advertisements on br-priv only (iPXE's IPv6 wait)
# the VM: one virtio NIC on tap-pxe0 (switch namespace, enslaved to br-priv)
PXE_VM_MAC = "52:54:00:77:02:00"
PXE_VM_IP = "10.77.2.200"  # what add-server reserves for it; the lab itself never writes it anywhere
PXE_VM_TAP = "tap-pxe0"
PXE_VM_BRIDGE = "br-priv"
PXE_VM_MEM_MB = 256
# its BMC: OpenIPMI's ipmi_sim, IPMI over LAN (lanplus) on the host's loopback only
BMC_ADDR = "127.0.0.1"
BMC_PORT = 9623
BMC_USER = "admin"
# boot1's HTTP server (answer files GET, install callbacks POST /callback/<token>)
BOOT_HTTP_PORT = 8000
BOOT_SUBDIR = "boot"

# root-namespace legs: (root-side name, switch-side name, bridge, root address/prefix)
ROOT_LEGS = [
    ("dsaslab-m", "up-m", "br-mgmt", "10.77.0.1/24"),
    ("dsaslab-c", "up-c", "br-pub", "10.77.1.1/24"),
    ("dsaslab-p", "up-p", "br-priv", "10.77.2.254/24"),
]
BRIDGES = ["br-mgmt", "br-pub", "br-priv", "br-repl", "br-boot"]
CONTROLLER_ADDRS = {"mgmt": "10.77.0.1", "pub": "10.77.1.1", "priv": "10.77.2.254"}
# keepalived shape: the second director, and each director's own addresses (the VIP and the web
# hosts' gateway DIRECTOR_PRIV move between them by VRRP)
LB2_MGMT = "10.77.0.11"
DIRECTOR_OWN = {"lb1": ("10.77.1.2", "10.77.2.2"), "lb2": ("10.77.1.3", "10.77.2.3")}


def state_dir() -> str:
    return os.environ.get("DSAS_LAB_DIR", DEFAULT_STATE_DIR)


def cache_dir() -> str:
    return os.environ.get("DSAS_LAB_CACHE", DEFAULT_CACHE_DIR)


# Boot-server layout. boot1 sees the host's file system, so each path is the same inside boot1
# (over SSH) and on the controller. The functions read $DSAS_LAB_DIR when called; BOOT_DIR is
# the value at import time (the default lab: /var/lib/dsas-lab/boot).
def boot_dir(state: str | None = None) -> str:
    """<state>/boot: dnsmasq.conf, dnsmasq.leases and the directories below."""
    return os.path.join(state or state_dir(), BOOT_SUBDIR)


def tftp_root(state: str | None = None) -> str:
    """pxelinux.0, ldlinux.c32, vmlinuz, initrd.img, pxelinux.cfg/default (+ per-MAC files)."""
    return os.path.join(boot_dir(state), "tftp")


def http_root(state: str | None = None) -> str:
    """Served by boot1 on :8000 (GET); add-server writes answer files to answers/<name>."""
    return os.path.join(boot_dir(state), "http")


def answers_dir(state: str | None = None) -> str:
    return os.path.join(http_root(state), "answers")


def callback_dir(state: str | None = None) -> str:
    """POST /callback/<token> bodies land here as files named <token>."""
    return os.path.join(boot_dir(state), "callbacks")


def dhcp_hosts_dir(state: str | None = None) -> str:
    """dnsmasq dhcp-hostsdir: one file per machine, one line `MAC,IP,name` (re-read on change)."""
    return os.path.join(boot_dir(state), "dhcp-hosts")


def bmc_password_file(state: str | None = None) -> str:
    """The BMC password of user BMC_USER (random per lab, mode 600)."""
    return os.path.join(state or state_dir(), "ipmi", "password")


BOOT_DIR = boot_dir()


@dataclass(frozen=True)
class Nic:
    bridge: str
    addr: str  # with prefix, e.g. 10.77.0.10/24
    tap: str = ""  # UML guests: tap name in the switch namespace
    mac: str = ""


@dataclass(frozen=True)
class HostSpec:
    name: str
    kind: str  # "guest" (UML) | "ns" (network + mount namespace with sshd)
    address: str  # SSH address (stage file)
    roles: tuple[str, ...]
    nics: tuple[Nic, ...] = ()
    gateway: str = ""
    mem: str = ""  # guests
    mods: tuple[str, ...] = ()  # guests: modules loaded at boot
    disk_mb: int = 0  # guests: ubd0 size
    primary: bool = False
    ssh: bool = True
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def netns(self) -> str:
        return NS_PREFIX + self.name


def web_address(i: int) -> str:
    return f"10.77.2.{10 + i}"


def dr_pub_address(i: int) -> str:
    """LVS-DR shape: web host i's own address on br-pub (its replies leave from the VIP there)."""
    return f"10.77.1.{20 + i}"


def vip_port(lb: str = DEFAULT_LB) -> int:
    """The VIP's port: LVS-DR cannot change the port, so its virtual service is the app's."""
    return APP_PORT if lb == "dr" else VIP_PORT


IPVS_MODS = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_wlc")


def directors(lb: str) -> list[HostSpec]:
    """The balancer(s) of a shape: one IPVS director guest, a VRRP pair, or HAProxy in a namespace."""
    if lb == "haproxy":
        return [HostSpec("lb1", "ns", "10.77.0.10", ("lb",),
                         nics=(Nic("br-mgmt", "10.77.0.10/24"), Nic("br-pub", f"{VIP}/24"),
                               Nic("br-priv", f"{DIRECTOR_PRIV}/24")))]
    if lb == "keepalived":
        pair = []
        for n, mgmt in ((1, "10.77.0.10"), (2, LB2_MGMT)):
            pub, priv = DIRECTOR_OWN[f"lb{n}"]
            pair.append(HostSpec(
                f"lb{n}", "guest", mgmt, ("lb",),
                nics=(Nic("br-mgmt", f"{mgmt}/24", f"tap-lb{n}0", f"02:77:00:00:0{n}:10"),
                      Nic("br-pub", f"{pub}/24", f"tap-lb{n}1", f"02:77:01:00:0{n}:10"),
                      Nic("br-priv", f"{priv}/24", f"tap-lb{n}2", f"02:77:02:00:0{n}:01")),
                mem="64M", mods=IPVS_MODS))
        return pair
    return [HostSpec(
        "lb1", "guest", "10.77.0.10", ("lb",),
        nics=(Nic("br-mgmt", "10.77.0.10/24", "tap-lb0", "02:77:00:00:00:10"),
              Nic("br-pub", f"{VIP}/24", "tap-lb1", "02:77:01:00:00:10"),
              Nic("br-priv", f"{DIRECTOR_PRIV}/24", "tap-lb2", "02:77:02:00:00:01")),
        mem="64M", mods=IPVS_MODS)]


def topology(web: int = DEFAULT_WEB, lb: str = DEFAULT_LB) -> list[HostSpec]:
    """Every host of a lab with `web` web hosts balanced the `lb` way, in start order."""
    hosts = directors(lb) + [
        HostSpec(
            "drbd-a", "guest", "10.77.0.21", ("db", "file"),
            nics=(Nic("br-mgmt", "10.77.0.21/24", "tap-da0", "02:77:00:00:00:21"),
                  Nic("br-repl", "10.77.3.21/24", "tap-da1", "02:77:03:00:00:21")),
            mem="128M", mods=("drbd",), disk_mb=40, primary=True),
        HostSpec(
            "drbd-b", "guest", "10.77.0.22", ("db", "file"),
            nics=(Nic("br-mgmt", "10.77.0.22/24", "tap-db0", "02:77:00:00:00:22"),
                  Nic("br-repl", "10.77.3.22/24", "tap-db1", "02:77:03:00:00:22")),
            mem="128M", mods=("drbd",), disk_mb=40),
        HostSpec("cache1", "ns", MEMCACHED_ADDR, ("memcached",),
                 nics=(Nic("br-priv", f"{MEMCACHED_ADDR}/24"),)),
        # eth0 mgmt, eth1 br-boot (open DHCP range), eth2 br-priv (DHCP for reserved MACs only)
        HostSpec("boot1", "ns", BOOT_ADDR, ("pxe",),
                 nics=(Nic("br-mgmt", f"{BOOT_ADDR}/24"), Nic("br-boot", f"{BOOT_NET_ADDR}/24"),
                       Nic("br-priv", f"{PXE_PRIV_ADDR}/{PXE_PRIV_PREFIX}"))),
        # client eth1 sits unaddressed on br-boot: a place to be a DHCP client of boot1
        HostSpec("client", "ns", CLIENT_ADDR, (),
                 nics=(Nic("br-pub", f"{CLIENT_ADDR}/24"), Nic("br-boot", "")), ssh=False),
    ]
    for i in range(1, web + 1):
        a = web_address(i)
        nics = (Nic("br-priv", f"{a}/24"),)
        if lb == "dr":  # replies go straight to the client from the VIP (on lo), not through lb1
            nics += (Nic("br-pub", f"{dr_pub_address(i)}/24"),)
        hosts.append(HostSpec(f"web{i}", "ns", a, ("web",), nics=nics, gateway=DIRECTOR_PRIV,
                              extra={"dr_vip": VIP} if lb == "dr" else {}))
    return hosts


def stage_name(lb: str = DEFAULT_LB) -> str:
    """The stage of a lab shape: `lab`, or `lab-keepalived`, `lab-dr`, `lab-haproxy`."""
    return "lab" if lb == DEFAULT_LB else f"lab-{lb}"


# what each shape's stage file overrides of dsas.yaml (its lb section is written for the lab)
STAGE_LB = {
    "ipvsadm": [],
    "dr": [],
    "keepalived": ["lb:", "  keepalived: maintenance_file       # keepalived owns IPVS: drain via its check",
                   f"  maintenance_file: {MAINTENANCE_FILE}   # the app's /lb-check answers 503"],
    "haproxy": ["lb:", "  driver: haproxy", f"  real_port: {APP_PORT}",
                f"  haproxy_socket: {HAPROXY_SOCKET}", f"  haproxy_backend: {HAPROXY_BACKEND}"],
}

# the stage file's description of the shapes other than the default
SHAPE_LINE = {
    "keepalived": "behind keepalived on lb1 + lb2 (VRRP pair; VIP {vip}:{port}, LVS-NAT, HTTP checks)",
    "dr": "behind the director lb1 (VIP {vip}:{port}, LVS direct routing: replies bypass lb1)",
    "haproxy": "behind HAProxy on lb1 ({vip}:{port}, runtime API on " + HAPROXY_SOCKET + ")",
}


def known_hosts_name(address: str, port: int = 22) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def stage_yaml(web: int = DEFAULT_WEB, comment: str = "", lb: str = DEFAULT_LB) -> str:
    """The stage file text for a lab with `web` web hosts (keys the core engine accepts only)."""
    if lb == DEFAULT_LB:
        lines = [
            comment or f"# Stage 'lab': the local lab that `dsas lab up --web {web}` builds (run it first, as root).",
            f"# {web} web hosts (app on :{APP_PORT}; each address is also its LVS-NAT real server) behind "
            f"the director lb1",
            f"# (VIP {VIP}:{VIP_PORT}), a DRBD 8.4 pair (r0, service IP {DRBD_SERVICE_IP}), memcached, "
            "a PXE boot server.",
        ]
    else:
        lines = [
            comment or f"# Stage '{stage_name(lb)}': the lab that `dsas lab up --lb {lb} --web {web}` builds "
                       "(as root).",
            f"# {web} web hosts (app on :{APP_PORT}) " + SHAPE_LINE[lb].format(vip=VIP, port=vip_port(lb)) + ",",
            "# a DRBD 8.4 pair, memcached, a PXE boot server. docs/load-balancers.md says how it is built.",
        ]
    lines += ["# Generated by dsasdeploy.lab.topology.stage_yaml; do not edit by hand."]
    lines += STAGE_LB[lb]
    lines += ["hosts:"]
    topo = topology(web, lb)
    for h in [h for h in topo if "web" in h.roles] + [h for h in topo if "web" not in h.roles]:
        if not h.ssh or not h.roles:
            continue
        lines.append(f"  - name: {h.name}")
        lines.append(f"    address: {h.address}")
        lines.append("    port: 22")
        lines.append(f"    roles: [{', '.join(h.roles)}]")
        if h.primary:
            lines.append("    primary: true")
    return "\n".join(lines) + "\n"

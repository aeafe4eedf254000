"""Network namespaces, bridges and veths of the lab (thin wrappers over iproute2)."""

from __future__ import annotations

import subprocess

from .topology import BRIDGES, NS_PREFIX, ROOT_LEGS, SWITCH_NS, HostSpec


def sh(argv: list[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def ip_batch(cmds: list[str], netns: str | None = None) -> None:
    """Run many `ip` commands in one process (-batch), optionally inside `netns`."""
    if not cmds:
        return
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    sh(argv, input="\n".join(cmds) + "\n")


def list_netns() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_netns() -> list[str]:
    """Every namespace the lab may have made (the switch and dsaslab-*)."""
    return [n for n in list_netns() if n == SWITCH_NS or n.startswith(NS_PREFIX)]


def netns_pids(ns: str) -> list[int]:
    out = sh(["ip", "netns", "pids", ns], check=False).stdout
    return [int(x) for x in out.split() if x.isdigit()]


def switch_up() -> None:
    """The switch namespace with its bridges, and the root namespace's legs onto three of them."""
    sh(["ip", "netns", "add", SWITCH_NS])
    cmds = ["link set lo up"]
    for br in BRIDGES:
        # no STP, no forwarding delay: ports forward at once
        cmds += [f"link add {br} type bridge forward_delay 0 stp_state 0", f"link set {br} up"]
    ip_batch(cmds, SWITCH_NS)
    root_cmds = []
    for root_if, sw_if, br, addr in ROOT_LEGS:
        # create in the switch namespace, then move one end into the root namespace (pid 1)
        sh(["ip", "-n", SWITCH_NS, "link", "add", sw_if, "type", "veth", "peer", "name", root_if,
            "netns", "1"])
        root_cmds += [f"addr add {addr} dev {root_if}", f"link set {root_if} up"]
        ip_batch([f"link set {sw_if} master {br} up"], SWITCH_NS)
        # the controller takes no IPv6 router advertisements from the lab (boot1 sends some on
        # br-priv for the PXE VM's firmware)
        try:
            with open(f"/proc/sys/net/ipv6/conf/{root_if}/accept_ra", "w") as f:
                f.write("0\n")
        except OSError:
            pass  # IPv6 off on this machine
    ip_batch(root_cmds)


def guest_taps(hosts: list[HostSpec]) -> None:
    cmds = []
    for h in hosts:
        for nic in h.nics:
            cmds += [f"tuntap add dev {nic.tap} mode tap", f"link set {nic.tap} master {nic.bridge} up"]
    ip_batch(cmds, SWITCH_NS)


def vm_tap(name: str, bridge: str) -> None:
    """A tap for a qemu VM in the switch namespace (qemu must open it from that namespace)."""
    ip_batch([f"tuntap add dev {name} mode tap", f"link set {name} master {bridge} up"], SWITCH_NS)


def del_link(name: str, netns: str = SWITCH_NS) -> None:
    sh(["ip", "-n", netns, "link", "del", name], check=False)


def veth_name(h: HostSpec, i: int) -> str:
    return f"v{i}-{h.name}"[:15]


def host_netns(h: HostSpec) -> None:
    """The host's own namespace, one veth per NIC into the switch (host side named eth<i>)."""
    ns = h.netns
    sh(["ip", "netns", "add", ns])
    sw = []
    for i, nic in enumerate(h.nics):
        v = veth_name(h, i)
        sh(["ip", "-n", SWITCH_NS, "link", "add", v, "type", "veth", "peer", "name", f"eth{i}",
            "netns", ns])
        sw.append(f"link set {v} master {nic.bridge} up")
    ip_batch(sw, SWITCH_NS)
    cmds = ["link set lo up"]
    for i, nic in enumerate(h.nics):
        if nic.addr:
            cmds.append(f"addr add {nic.addr} dev eth{i}")
        cmds.append(f"link set eth{i} up")
    if h.gateway:
        cmds.append(f"route add default via {h.gateway}")
    ip_batch(cmds, ns)


def set_link(h: HostSpec, up: bool, nic: int | None = None) -> None:
    """Cut (up=False) or restore a host's link(s) at the switch side."""
    state = "up" if up else "down"
    if h.kind == "guest":
        names = [n.tap for n in h.nics]
    else:
        names = [veth_name(h, i) for i in range(len(h.nics))]
    if nic is not None:
        names = [names[nic]]
    ip_batch([f"link set {n} {state}" for n in names], SWITCH_NS)


def delete_netns(names: list[str]) -> None:
    for n in names:
        sh(["ip", "netns", "del", n], check=False)
    # root-namespace legs vanish with their peers; make sure
    for root_if, *_ in ROOT_LEGS:
        if sh(["ip", "link", "show", root_if], check=False).returncode == 0:
            sh(["ip", "link", "del", root_if], check=False)

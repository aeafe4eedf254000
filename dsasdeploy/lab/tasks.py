"""`dsas lab up|down|status|restart|ssh`: invoke tasks over dsasdeploy.lab.Lab (mounted by cli.py)."""

from __future__ import annotations

import subprocess

import invoke
from invoke import task

from ..errors import UsageError
from .lab import Lab, require_root
from .topology import BMC_ADDR, BMC_PORT, PXE_VM_MAC, VIP


def _lab() -> Lab:
    return Lab()


@task(auto_shortflags=False, help={"web": "number of web hosts (default 3, at most 100)",
                                   "lb": "how the web hosts are balanced: ipvsadm (default), keepalived "
                                         "(VRRP pair), dr (LVS direct routing) or haproxy"})
def up(c, web=3, lb="ipvsadm"):
    """Build the local lab (LVS director, DRBD pair, web hosts, memcached, PXE server, client)."""
    require_root()
    lab = _lab()
    r = lab.up(web=int(web), lb=lb)
    eng = r["engine"]
    if r["restarted"]:
        print(f"lab repaired in {r['seconds']:.1f} s: brought back {', '.join(r['restarted'])} "
              f"(state {lab.state})")
    elif r["already_running"]:
        print(f"lab already running with {r['web']} web hosts (state {lab.state})")
    else:
        print(f"lab up in {r['seconds']:.1f} s: {r['web']} web hosts, VIP {VIP}:{lab.vip_port} "
              f"balanced by {lab.lb_shape} (state {lab.state})")
    print(f"engine: {eng.label}: {eng.reason}")
    print(f"stage file: {lab.stage_file()}" + (f"  (same as stages/{lab.stage_name}.yaml: "
                                                f"dsas deploy {lab.stage_name})" if int(web) == 3 else ""))
    print(f"ssh: dsas lab ssh web1   |   client traffic: ip netns exec dsaslab-client curl "
          f"http://{VIP}:{lab.vip_port}/")
    print(f"PXE machine {PXE_VM_MAC} (off): BMC ipmitool -I lanplus -H {BMC_ADDR} -p {BMC_PORT} -U admin "
          f"-E -C 3 (IPMI_PASSWORD from {lab.bmc_password_file})")


@task(auto_shortflags=False)
def down(c):
    """Remove every namespace, guest, process, mount and file the lab made."""
    require_root()
    r = _lab().down()
    print(f"lab down in {r['seconds']:.1f} s")


@task(auto_shortflags=False)
def status(c):
    """Each lab host, its address, and whether it is up."""
    require_root()
    lab = _lab()
    rows = lab.status()
    if not rows:
        print(f"lab is not running (state {lab.state})")
        return
    eng = lab.engine()
    print(f"engine: {eng.label}: {eng.reason}")
    print(f"balancer: {lab.lb_shape} (VIP {VIP}:{lab.vip_port}, stage {lab.stage_name})")
    print(f"{'HOST':<8} {'KIND':<6} {'ADDRESS':<13} {'ROLES':<18} {'STATE':<5} DETAIL")
    for s in rows:
        print(f"{s.name:<8} {s.kind:<6} {s.address:<13} {','.join(s.roles) or '-':<18} "
              f"{'up' if s.up else 'DOWN':<5} {s.detail}")
    b = lab.bmc_status()
    vm = f"power {b['power']}" + (f" (qemu pid {b['vm_pid']})" if b["vm_pid"] else "")
    print(f"{'pxe-vm':<8} {'qemu':<6} {PXE_VM_MAC:<17} BMC {BMC_ADDR}:{BMC_PORT} "
          f"{'up' if b['bmc'] == 'up' else 'DOWN'} (ipmi_sim pid {b['bmc_pid']}), {vm}, "
          f"boot device {b['bootdev'] or '?'}")


@task(auto_shortflags=False, positional=["host"], help={"host": "lab host name (lb1, drbd-a, drbd-b, web1, ...)"})
def restart(c, host):
    """Bring one lab host back alone (a killed guest: same disk and host key, rejoins its role)."""
    require_root()
    lab = _lab()
    seconds = lab.restart(host)
    print(f"{host} back in {seconds:.1f} s")


@task(auto_shortflags=False, positional=["host", "cmd"],
      help={"host": "lab host name (web1, lb1, drbd-a, ...)", "cmd": "command to run (else a shell)"})
def ssh(c, host, cmd=None):
    """Open a shell on a lab host, or run a command there: dsas lab ssh web1 'uptime'."""
    require_root()
    lab = _lab()
    if lab.meta() is None:
        raise UsageError("the lab is not running: run `dsas lab up` first")
    h = lab.host(host)
    if not h.ssh:
        raise UsageError(f"{host} has no sshd: use `ip netns exec {h.netns} ...`")
    rc = subprocess.call(lab.ssh_argv(host, cmd or None, tty=not cmd))
    if rc:
        raise invoke.Exit(code=rc)


ns = invoke.Collection("lab", up, down, status, restart, ssh)

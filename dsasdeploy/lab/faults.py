"""Fault injection for tests: every function takes a running Lab and a host name.

    stop_sshd / start_sshd      kill / restart a namespace host's sshd (new connections refused)
    freeze_sshd / thaw_sshd     SIGSTOP / SIGCONT the sshd listener (connections hang: timeouts)
    freeze_guest / thaw_guest   stop / resume a whole guest (UML: mconsole stop / go; qemu: SIGSTOP/SIGCONT)
    cut_link / restore_link     take the host's link(s) down / up at the switch
    kill_guest                  hard-kill a guest (SIGKILL to linux.uml and its helpers, or to qemu)
    restart_guest               bring a guest back alone (Lab.restart: same key, rejoins its role)
    app_unhealthy / app_healthy make /health of the web app answer 503 / normal again
    memcached_unreachable / memcached_reachable   cut / restore the memcached host's link
    bmc_rejects_bootdev / bmc_accepts_bootdev     the lab BMC refuses / takes boot devices again
"""

from __future__ import annotations

import os
import signal
import time

from ..errors import UsageError
from . import guests, hosts, net
from .lab import Lab, LabError, ssh_banner


def _ns_host(lab: Lab, name: str):
    h = lab.host(name)
    if h.kind != "ns" or not h.ssh:
        raise UsageError(f"{name} is not a namespace host with sshd (for guests use "
                         "freeze_guest/thaw_guest/kill_guest/cut_link)")
    return h


def _sshd_pid(lab: Lab, name: str) -> int:
    pid = lab.pid(f"{name}.sshd")
    if not pid:
        raise LabError(f"{name}: no sshd recorded")
    return pid


def stop_sshd(lab: Lab, name: str) -> None:
    """Kill the host's sshd listener (existing sessions survive; new connections are refused)."""
    _ns_host(lab, name)
    pid = _sshd_pid(lab, name)
    if guests.alive(pid):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
        t = time.time() + 3
        while guests.alive(pid) and time.time() < t:
            guests.reap(pid)
            time.sleep(0.02)


def start_sshd(lab: Lab, name: str, timeout: float = 5.0) -> int:
    """(Re)start the host's sshd (same host key); wait until it answers; return its PID."""
    h = _ns_host(lab, name)
    pid = lab.pid(f"{name}.sshd")
    if pid and guests.alive(pid):
        return pid
    meta = lab.meta()
    holder = meta["pids"][f"{name}.ns"]
    pid = hosts.start_sshd(h, lab.state, holder)
    meta["pids"][f"{name}.sshd"] = pid
    lab._save(meta)
    t = time.time() + timeout
    while time.time() < t:
        if ssh_banner(h.address, 22, 0.5):
            return pid
        time.sleep(0.05)
    raise LabError(f"{name}: sshd did not come back")


def freeze_sshd(lab: Lab, name: str) -> None:
    """SIGSTOP the sshd listener: TCP connects still complete, but no banner -> SSH timeouts."""
    _ns_host(lab, name)
    os.kill(_sshd_pid(lab, name), signal.SIGSTOP)


def thaw_sshd(lab: Lab, name: str) -> None:
    _ns_host(lab, name)
    os.kill(_sshd_pid(lab, name), signal.SIGCONT)


def _guest(lab: Lab, name: str):
    h = lab.host(name)
    if h.kind != "guest":
        raise UsageError(f"{name} is not a guest")
    return h


def _pause(lab: Lab, name: str, stop: bool) -> None:
    _guest(lab, name)
    if lab.engine().name == "qemu":
        os.kill(lab.pid(name), signal.SIGSTOP if stop else signal.SIGCONT)
    else:
        guests.mconsole(os.path.join(lab.state, "run", name, "mconsole"), "stop" if stop else "go")


def freeze_guest(lab: Lab, name: str) -> None:
    """Stop the whole guest (kernel and all its processes): it neither answers nor forwards."""
    _pause(lab, name, True)


def thaw_guest(lab: Lab, name: str) -> None:
    _pause(lab, name, False)


def restart_guest(lab: Lab, name: str) -> float:
    """Bring a killed (or frozen) guest back alone; seconds until it serves its role again."""
    _guest(lab, name)
    return lab.restart(name)


def kill_guest(lab: Lab, name: str) -> None:
    """Hard crash: SIGKILL the guest's process and its helpers (no clean shutdown)."""
    from .lab import _children
    _guest(lab, name)
    pid = lab.pid(name)
    if not pid or not guests.alive(pid):
        return
    victims = [pid] + _children(pid)
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    t = time.time() + 3
    while time.time() < t and any(guests.alive(p) for p in victims):
        for p in victims:
            guests.reap(p)
        time.sleep(0.02)


def cut_link(lab: Lab, name: str, nic: int | None = None) -> None:
    """Take the host's link(s) down at the switch (all NICs, or only eth<nic>)."""
    net.set_link(lab.host(name), False, nic)


def restore_link(lab: Lab, name: str, nic: int | None = None) -> None:
    net.set_link(lab.host(name), True, nic)


def _unhealthy_flag(lab: Lab, name: str) -> str:
    h = lab.host(name)
    if "web" not in h.roles:
        raise UsageError(f"{name} is not a web host")
    return lab.host_path(name, f"{lab.deploy_to}/shared/unhealthy")


def app_unhealthy(lab: Lab, name: str) -> None:
    """The app on `name` answers /health with 503 (it checks <deploy_to>/shared/unhealthy)."""
    path = _unhealthy_flag(lab, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def app_healthy(lab: Lab, name: str) -> None:
    path = _unhealthy_flag(lab, name)
    if os.path.exists(path):
        os.unlink(path)


def memcached_unreachable(lab: Lab, name: str = "cache1") -> None:
    """Cut the memcached host's link: the app's cache calls time out (0.3 s) and it serves uncached."""
    cut_link(lab, name)


def memcached_reachable(lab: Lab, name: str = "cache1") -> None:
    restore_link(lab, name)


def _reject_flag(lab: Lab) -> str:
    return os.path.join(lab.state, "run", "bmc-reject-bootdev")


def bmc_rejects_bootdev(lab: Lab) -> None:
    """The lab BMC answers every boot-device change with an error (ipmitool still exits 0)."""
    with open(_reject_flag(lab), "w") as f:
        f.write("injected by dsasdeploy.lab.faults\n")


def bmc_accepts_bootdev(lab: Lab) -> None:
    try:
        os.unlink(_reject_flag(lab))
    except FileNotFoundError:
        pass

"""Namespace hosts of the lab: web hosts, memcached, boot server, client.

Each host = its own network namespace + its own mount and UTS namespace, held open by a
"holder" process (`sleep infinity`, PID recorded). Inside the mount namespace: tmpfs over
/run /var/log /root /tmp, and `<state>/hosts/<name>/srv` bind-mounted onto /srv, so every web
host has the same /srv/labapp path with a private directory behind it. sshd and the other
daemons are started with `nsenter` into the holder's namespaces, so SSH sessions (and the app
they start) see the host's private view. Nothing is mounted in the host's own mount namespace.
"""

from __future__ import annotations

import os
import subprocess
import time

from .net import sh
from .topology import (BOOT_HTTP_PORT, PXE_PRIV_ADDR, PXE_PRIV_GATEWAY, HostSpec, callback_dir,
                       http_root)

SSHD_CONFIG = """# sshd of a dsas lab host (written by dsasdeploy.lab). Host key given with -h.
Port 22
ListenAddress 0.0.0.0
AuthorizedKeysFile {state}/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100:30:200
MaxSessions 50
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""

SSH_CONFIG_HEAD = """# ssh client config for the dsas lab:  ssh -F {state}/ssh/ssh_config web1
"""

SSH_CONFIG_TAIL = """Host *
  User root
  IdentityFile {state}/ssh/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile {state}/ssh/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 3
  LogLevel ERROR
"""


def keygen(path: str, comment: str) -> None:
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])


def write_ssh_files(state: str, hosts: list[HostSpec], only: list[str] | None = None) -> None:
    """Client key, one host key per host, sshd_config, ssh_config and the pinned known_hosts.

    With `only`, just the client key, sshd files and the host keys of those hosts."""
    from .topology import known_hosts_name
    d = os.path.join(state, "ssh")
    os.makedirs(d, exist_ok=True)
    keygen(os.path.join(d, "id_ed25519"), "dsas-lab")
    with open(os.path.join(d, "id_ed25519.pub")) as f:
        pub = f.read()
    with open(os.path.join(d, "authorized_keys"), "w") as f:
        f.write(pub)
    with open(os.path.join(d, "sshd_config"), "w") as f:
        f.write(SSHD_CONFIG.format(state=state))
    known, cfg = [], [SSH_CONFIG_HEAD.format(state=state)]
    for h in hosts:
        if not h.ssh or (only is not None and h.name not in only):
            continue
        key = os.path.join(d, "hostkeys", h.name, "ssh_host_ed25519_key")
        keygen(key, h.name)
        if only is not None:
            continue
        with open(key + ".pub") as f:
            kt, kb = f.read().split()[:2]
        known.append(f"{known_hosts_name(h.address, 22)} {kt} {kb}\n")
        cfg.append(f"Host {h.name}\n  HostName {h.address}\n")
    if only is not None:
        return
    cfg.append(SSH_CONFIG_TAIL.format(state=state))
    with open(os.path.join(d, "known_hosts"), "w") as f:
        f.writelines(known)
    with open(os.path.join(d, "ssh_config"), "w") as f:
        f.write("".join(cfg))


def _holder_script(h: HostSpec, state: str) -> str:
    root = os.path.join(state, "hosts", h.name)
    lines = [f"hostname {h.name}", "set -e"]
    for mnt, opts in (("/run", "mode=755"), ("/var/log", "mode=755"), ("/root", "mode=700"),
                      ("/tmp", "mode=1777")):
        if state == mnt or state.startswith(mnt + "/"):
            continue  # never hide the lab directory itself
        lines.append(f"mount -t tmpfs -o {opts} tmpfs {mnt}")
    lines += ["mkdir -p -m 755 /run/sshd", f"mount --bind {root}/srv /srv",
              f"echo $$ > {state}/run/{h.name}.ns", "exec sleep infinity"]
    return "\n".join(lines)


def start_holder(h: HostSpec, state: str) -> int:
    """Network ns (already made) + new mount/UTS namespace held by `sleep infinity`."""
    root = os.path.join(state, "hosts", h.name)
    os.makedirs(os.path.join(root, "srv"), exist_ok=True)
    ready = os.path.join(state, "run", f"{h.name}.ns")
    if os.path.exists(ready):
        os.unlink(ready)
    log = open(os.path.join(state, "logs", f"{h.name}.ns.log"), "wb")
    p = subprocess.Popen(
        ["ip", "netns", "exec", h.netns, "unshare", "--mount", "--uts", "--propagation", "private",
         "sh", "-c", _holder_script(h, state)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return p.pid


def wait_file(path: str, timeout: float, pid: int | None = None) -> bool:
    t = time.time() + timeout
    while time.time() < t:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return True
        if pid is not None:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return False
            except ChildProcessError:
                pass
        time.sleep(0.01)
    return False


def nsenter(holder: int) -> list[str]:
    return ["nsenter", "-t", str(holder), "-m", "-n", "-u", "--"]


def spawn_in(holder: int, argv: list[str], log_path: str, env: dict | None = None) -> int:
    log = open(log_path, "ab")
    p = subprocess.Popen(nsenter(holder) + argv, stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log.close()
    return p.pid


def start_sshd(h: HostSpec, state: str, holder: int) -> int:
    key = os.path.join(state, "ssh", "hostkeys", h.name, "ssh_host_ed25519_key")
    return spawn_in(holder, ["/usr/sbin/sshd", "-D", "-f", os.path.join(state, "ssh", "sshd_config"),
                             "-h", key, "-o", "PidFile=/run/sshd.pid",
                             "-E", os.path.join(state, "logs", f"{h.name}.sshd.log")],
                    os.path.join(state, "logs", f"{h.name}.sshd.out"))


def start_haproxy(state: str, holder: int) -> int:
    """Debian's haproxy in the balancer's namespace, in the foreground (master-worker); its stats
    socket in the namespace's private /run."""
    cfg = os.path.join(state, "haproxy", "haproxy.cfg")
    return spawn_in(holder, ["sh", "-c", 'mkdir -p /run/haproxy && exec /usr/sbin/haproxy -W -db -f "$1"',
                             "haproxy", cfg], os.path.join(state, "logs", "lb1.haproxy.log"))


def start_memcached(h: HostSpec, state: str, holder: int, addr: str, port: int) -> int:
    return spawn_in(holder, ["/usr/bin/memcached", "-l", addr, "-p", str(port), "-U", "0",
                             "-m", "32", "-c", "1024", "-u", "nobody"],
                    os.path.join(state, "logs", f"{h.name}.memcached.log"))


DNSMASQ_CONF = """# dnsmasq of the lab boot server (DHCP + TFTP + RA), runs only in netns {netns}
# eth0 mgmt (TFTP only), {boot_if} br-boot (open DHCP range), {priv_if} br-priv (reserved MACs only)
interface={boot_if}
interface=eth0
interface={priv_if}
bind-interfaces
except-interface=lo
port=0
no-resolv
no-hosts
user=root
dhcp-leasefile={state}/boot/dnsmasq.leases
dhcp-range={range_lo},{range_hi},255.255.255.0,1h
# br-priv: static-only range (addresses come from dhcp-host entries) and nothing at all for
# unknown MACs; default gateway = the director, as for the web hosts
dhcp-range=set:priv,{priv_net},static,255.255.255.0,1h
dhcp-ignore=tag:{priv_if},tag:!known
dhcp-option=tag:priv,option:router,{priv_gw}
# vendor class PXEClient in the offer: iPXE then takes it at once instead of waiting ~3 s for a
# ProxyDHCP offer
dhcp-option-force=tag:priv,60,PXEClient
dhcp-boot=pxelinux.0
log-dhcp
# offer at once (no ICMP probe of the address first: everything on br-boot is ours)
no-ping
enable-tftp
tftp-root={state}/boot/tftp
# per-machine DHCP entries (MAC,IP,name): one file each, re-read on change (inotify)
dhcp-hostsdir={state}/boot/dhcp-hosts
# iPXE waits ~13 s for IPv6 autoconfiguration unless a router advertisement arrives: answer on
# br-priv with an RA (lab ULA, no SLAAC, router lifetime 0 = nobody's default router)
enable-ra
dhcp-range=::,constructor:{priv_if},ra-only
ra-param={priv_if},60,0
"""

PXE_DEFAULT = """# pxelinux default written by dsas lab: unknown machines boot their local disk
DEFAULT local
LABEL local
  LOCALBOOT 0
"""


def write_boot_files(state: str, netns: str) -> None:
    b = os.path.join(state, "boot")
    os.makedirs(os.path.join(b, "tftp", "pxelinux.cfg"), exist_ok=True)
    os.makedirs(os.path.join(b, "dhcp-hosts"), exist_ok=True)
    with open(os.path.join(b, "dnsmasq.conf"), "w") as f:
        f.write(DNSMASQ_CONF.format(netns=netns, boot_if="eth1", priv_if="eth2", state=state,
                                    range_lo="10.77.4.100", range_hi="10.77.4.200",
                                    priv_net=PXE_PRIV_ADDR.rsplit(".", 1)[0] + ".0",
                                    priv_gw=PXE_PRIV_GATEWAY))
    with open(os.path.join(b, "tftp", "pxelinux.cfg", "default"), "w") as f:
        f.write(PXE_DEFAULT)
    with open(os.path.join(b, "tftp", "hello.txt"), "w") as f:
        f.write("dsas lab boot server: TFTP works\n")


def start_boot_http(state: str, holder: int, script: str) -> int:
    """boothttp.py on 0.0.0.0:8000 inside boot1 (log <state>/logs/boot-http.log)."""
    return spawn_in(holder, ["/usr/bin/python3", "-I", script, "--root", http_root(state),
                             "--spool", callback_dir(state), "--log",
                             os.path.join(state, "logs", "boot-http.log"),
                             "--addr", "0.0.0.0", "--port", str(BOOT_HTTP_PORT)],
                    os.path.join(state, "logs", "boot-http.out"))


def start_dnsmasq(h: HostSpec, state: str, holder: int) -> int:
    return spawn_in(holder, ["/usr/sbin/dnsmasq", "-k", f"--conf-file={state}/boot/dnsmasq.conf",
                             f"--pid-file={state}/run/dnsmasq.pid",
                             f"--log-facility={state}/logs/dnsmasq.log"],
                    os.path.join(state, "logs", "dnsmasq.out"))

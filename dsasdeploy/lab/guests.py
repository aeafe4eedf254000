"""Guests of the lab (LVS director, DRBD pair): init script, start, stop, on either engine.

Root filesystem = the host's / READ-ONLY (UML: hostfs; qemu: virtio-9p, see qemu.py); the lab
state dir is mounted again read-write; /tmp /run /var/log /var/tmp /root /var/lib/drbd /srv are
guest-local tmpfs. UML's kernel and modules come from the extracted `user-mode-linux` .deb,
qemu's from the extracted Debian kernel package (see .ci/lab-setup.sh).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import tempfile
import time

from . import qemu
from .engine import Engine, qemu_binary, uml_binary
from .topology import HostSpec, SWITCH_NS

GUEST_INIT = r"""#!/bin/sh
# PID 1 of every dsas lab guest (written by dsasdeploy.lab.guests). Root fs = host / over
# hostfs (UML) or 9p (qemu), read-only. Parameters come from the kernel command line as
# environment variables: dsas_name dsas_lab dsas_engine(uml|qemu) dsas_modroot
# dsas_net(eth0=a/p,...) dsas_gw dsas_mods(m1,m2) dsas_restart(1: brought back alone)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LAB=$dsas_lab
log() { echo "[init $(cut -d' ' -f1 /proc/uptime)] $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=755 tmpfs /var/log
mount -t tmpfs -o mode=700 tmpfs /root
mount -t tmpfs -o mode=755 tmpfs /var/lib/drbd
mount -t tmpfs -o mode=755 tmpfs /srv
# the lab directory: the guest's only read-write window onto the host (mounted last, so no
# tmpfs above hides it, wherever DSAS_LAB_DIR is)
mkdir -p "$LAB"
if [ "$dsas_engine" = qemu ]; then
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 lab "$LAB"
else
  mount -t hostfs -o "$LAB" hostfs "$LAB"
fi
mkdir -p /run/sshd /run/lock /srv/data
chmod 755 /run/sshd
hostname "$dsas_name"
echo "$LAB/bin/guest-modprobe" > /proc/sys/kernel/modprobe
for m in $(echo "$dsas_mods" | tr ',' ' '); do
  [ -d "/sys/module/$m" ] || modprobe -d "$dsas_modroot" "$m" || log "modprobe $m FAILED"
done
ip link set lo up
for spec in $(echo "$dsas_net" | tr ',' ' '); do
  dev=${spec%%=*}; addr=${spec#*=}
  ip addr add "$addr" dev "$dev" && ip link set "$dev" up
done
[ -n "$dsas_gw" ] && ip route add default via "$dsas_gw"
[ -f "$LAB/guests/$dsas_name/rc.sh" ] && . "$LAB/guests/$dsas_name/rc.sh"
/usr/sbin/sshd -D -f "$LAB/ssh/sshd_config" -h "$LAB/ssh/hostkeys/$dsas_name/ssh_host_ed25519_key" \
    -o "PidFile=/run/sshd.pid" -E "$LAB/logs/$dsas_name.sshd.log" &
log "DSAS_GUEST_READY $dsas_name"
halt_guest() {
  log "shutting down"
  kill -TERM $(cat /run/sshd.pid 2>/dev/null) 2>/dev/null
  [ -x "$LAB/bin/drbd-service" ] && [ -e /proc/drbd ] && "$LAB/bin/drbd-service" stop >/dev/null 2>&1
  umount -a -r -t ext4,ext2 2>/dev/null
  [ -e /proc/drbd ] && drbdadm down all 2>/dev/null
  sync
  echo o > /proc/sysrq-trigger
  sleep 30
}
echo 0 > /proc/sys/kernel/ctrl-alt-del
trap halt_guest TERM INT USR1
while :; do sleep 3600 & wait $!; done
"""

GUEST_MODPROBE = """#!/bin/sh
# kernel.modprobe helper inside dsas lab guests: the module tree lives in the lab cache
exec /usr/sbin/modprobe -d {modroot} "$@"
"""

DIRECTOR_RC = """# sourced by the guest init on the LVS director: forwarding + the lab's virtual service
sysctl -q -w net.ipv4.ip_forward=1
sysctl -q -w net.ipv4.vs.expire_nodest_conn=1 2>/dev/null || true
ipvsadm -R < "$LAB/guests/lb1/ipvs.rules" || log "ipvsadm -R FAILED"
ipvsadm -Sn > "$LAB/run/lb1.ipvs"   # `up` checks it against ipvs.rules
"""

DRBD_GLOBAL = """global {
  usage-count no;
}
common {
  net {
    protocol C;
  }
}
"""

DRBD_R0 = """resource r0 {{
  device    /dev/drbd0;
  disk      {disk};
  meta-disk internal;
  net {{
    connect-int 2;      # retry a connection every 2 s (default 10): guests boot at their own pace
    cram-hmac-alg sha1;
    shared-secret "dsaslab";
  }}
  disk {{
    resync-rate 100M;
  }}
  on drbd-a {{
    address {a}:7789;
  }}
  on drbd-b {{
    address {b}:7789;
  }}
}}
"""

# sourced by init on both DRBD nodes; the primary then (in the background, so sshd starts
# meanwhile) waits for the peer, skips the initial sync (fresh disks: --clear-bitmap),
# promotes, makes the filesystem and starts the service. Result in $LAB/run/<name>.drbd.
DRBD_RC = r"""# sourced by the guest init on DRBD nodes (written by dsasdeploy.lab.guests)
mount --bind "$LAB/drbd/etc" /etc/drbd.d
# `drbd-service` on the PATH (guest-local tmpfs over /usr/local/sbin)
mount -t tmpfs -o mode=755 tmpfs /usr/local/sbin && ln -s "$LAB/bin/drbd-service" /usr/local/sbin/drbd-service
rm -f "$LAB/run/$dsas_name.drbd"
(
  t() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }
  t start
  # the disk comes with meta data and an ext4 filesystem (made on the host, identical on both)
  drbdadm up r0 || t "drbd up FAILED"
  t "r0 up"
  if [ "$dsas_restart" = 1 ]; then
    # brought back alone (`dsas lab restart`): the disk keeps its data and meta data; rejoin the
    # peer (resync), and serve again only if this is the lab's primary and the peer does not
    i=0
    while [ "$(drbdadm cstate r0 2>/dev/null)" != Connected ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    t "cstate $(drbdadm cstate r0) role $(drbdadm role r0)"
    if [ "$dsas_drbd_primary" = 1 ] && [ "$(drbdadm role r0 | cut -d/ -f2)" != Primary ]; then
      drbdadm primary r0 && "$LAB/bin/drbd-service" start && t "primary again"
    fi
    echo ok > "$LAB/run/$dsas_name.drbd"
  elif [ "$dsas_drbd_primary" = 1 ]; then
    i=0
    while [ "$(drbdadm cstate r0 2>/dev/null)" != Connected ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    if [ "$(drbdadm cstate r0)" != Connected ]; then echo "peer never connected" > "$LAB/run/$dsas_name.drbd"; exit 0; fi
    t connected
    # identical fresh disks: no initial sync needed
    drbdadm -- --clear-bitmap new-current-uuid r0 && drbdadm primary r0 && t primary &&
    "$LAB/bin/drbd-service" start && echo ok > "$LAB/run/$dsas_name.drbd" ||
    echo "drbd bring-up failed" > "$LAB/run/$dsas_name.drbd"
    t done
  else
    echo ok > "$LAB/run/$dsas_name.drbd"
  fi
) > "$LAB/logs/$dsas_name.drbd.log" 2>&1 &
"""

DRBD_SERVICE = r"""#!/bin/sh
# The service on top of DRBD r0 (run on the Primary): mount /srv/data, take the service IP,
# serve the files over HTTP.  drbd-service start|stop|status
# Planned switchover:  A: drbd-service stop && drbdadm secondary r0
#                      B: drbdadm primary r0 && drbd-service start
SIP={sip}; PORT={port}; DEV=eth0; MNT={mnt}; PIDF=/run/drbd-service.pid
case "$1" in
start)
  mountpoint -q $MNT || mount /dev/drbd0 $MNT || exit 1
  if ! ip addr show dev $DEV | grep -q " $SIP/"; then
    ip addr add $SIP/24 dev $DEV || exit 1
    # tell the neighbours the service IP moved here (else they use the old MAC for ~30 s)
    arping -q -U -c 1 -I $DEV $SIP >/dev/null 2>&1 &
  fi
  if ! {{ [ -f $PIDF ] && kill -0 "$(cat $PIDF)" 2>/dev/null; }}; then
    # http.server without its getfqdn() (a DNS lookup that hangs with no resolver)
    cd $MNT && setsid python3 -c "import functools, http.server as h, socketserver as s
class S(h.ThreadingHTTPServer):
    allow_reuse_address = True
    def server_bind(self): s.TCPServer.server_bind(self); self.server_name, self.server_port = '$SIP', $PORT
S(('$SIP', $PORT), functools.partial(h.SimpleHTTPRequestHandler, directory='$MNT')).serve_forever()" \
      </dev/null >/var/log/drbd-service.log 2>&1 &
    echo $! > $PIDF
  fi
  echo "drbd-service started on $(hostname) ($SIP:$PORT)";;
stop)
  [ -f $PIDF ] && kill "$(cat $PIDF)" 2>/dev/null; rm -f $PIDF
  sleep 0.1
  ip addr del $SIP/24 dev $DEV 2>/dev/null
  mountpoint -q $MNT && umount $MNT
  echo "drbd-service stopped on $(hostname)";;
status)
  if [ -f $PIDF ] && kill -0 "$(cat $PIDF)" 2>/dev/null; then echo running; else echo stopped; exit 3; fi;;
*) echo "usage: drbd-service start|stop|status" >&2; exit 2;;
esac
"""


def write_guest_files(state: str, modroot: str, ipvs_rules: str, drbd_a: str, drbd_b: str,
                      sip: str, port: int, mnt: str, disk: str = "/dev/ubda") -> None:
    """Write init script, modprobe wrapper, per-guest hooks and the DRBD config under `state`
    (`modroot`: the module tree for `modprobe -d`; `disk`: the guest's name of the DRBD disk)."""
    def w(path, text, mode=0o644):
        path = os.path.join(state, path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    w("bin/guest-init.sh", GUEST_INIT, 0o755)
    w("bin/guest-modprobe", GUEST_MODPROBE.format(modroot=modroot), 0o755)
    w("bin/drbd-service", DRBD_SERVICE.format(sip=sip, port=port, mnt=mnt), 0o755)
    w("guests/lb1/rc.sh", DIRECTOR_RC)
    w("guests/lb1/ipvs.rules", ipvs_rules)
    w("guests/drbd-a/rc.sh", DRBD_RC)
    w("guests/drbd-b/rc.sh", DRBD_RC)
    w("drbd/etc/global_common.conf", DRBD_GLOBAL)
    w("drbd/etc/r0.res", DRBD_R0.format(a=drbd_a, b=drbd_b, disk=disk))


def make_drbd_disks(state: str, names: list[str], size_mb: int, seed_text: str) -> None:
    """Fresh, identical backing disks for the DRBD pair, made on the host in ~0.1 s (in the
    guests, under 3 booting kernels on 2 CPUs, the same took ~1.5 s): a sparse file with an
    ext4 filesystem (seeded with hello.txt) in front and DRBD 8.4 internal meta data at the end.
    drbdmeta runs in a private mount namespace with its own /run, so its lock file stays there."""
    seed = os.path.join(state, "drbd", "seed")
    os.makedirs(seed, exist_ok=True)
    with open(os.path.join(seed, "hello.txt"), "w") as f:
        f.write(seed_text)
    first = os.path.join(state, "guests", names[0], "disk.img")
    os.makedirs(os.path.dirname(first), exist_ok=True)
    if os.path.exists(first):
        os.unlink(first)
    with open(first, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    fs_mb = size_mb - 2  # leave the tail to DRBD's internal meta data
    for argv in (["mkfs.ext4", "-q", "-F", "-L", "dsaslab", "-d", seed, first, f"{fs_mb}M"],
                 ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  "mount -t tmpfs tmpfs /run && mkdir -p /run/lock && "
                  f"drbdmeta --force 0 v08 {first} internal create-md"]):
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"{argv[0]}: exit {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
    for n in names[1:]:
        img = os.path.join(state, "guests", n, "disk.img")
        os.makedirs(os.path.dirname(img), exist_ok=True)
        subprocess.run(["cp", "--sparse=always", first, img], check=True)


def init_params(h: HostSpec, state: str, engine: str, modroot: str, restart: bool = False) -> list[str]:
    """The guest init's parameters (kernel command line words, without dots), same on both engines."""
    mods = list(h.mods)
    if engine == "qemu" and "db" in h.roles:
        mods.append("ext4")  # Debian's kernel has it as a module: load it before the first mount
    params = [f"dsas_name={h.name}", f"dsas_lab={state}", f"dsas_engine={engine}",
              f"dsas_modroot={modroot}",
              "dsas_net=" + ",".join(f"eth{i}={nic.addr}" for i, nic in enumerate(h.nics))]
    if h.gateway:
        params.append(f"dsas_gw={h.gateway}")
    if mods:
        params.append("dsas_mods=" + ",".join(mods))
    if "db" in h.roles:
        params.append(f"dsas_drbd_primary={1 if h.primary else 0}")
    if restart:
        params.append("dsas_restart=1")
    return params


def start_guest(h: HostSpec, state: str, engine: Engine, uml_root: str, cache: str,
                restart: bool = False) -> int:
    """Launch one guest in the switch namespace on `engine`; return the linux.uml / qemu PID."""
    if engine.name == "qemu":
        modroot = qemu.kernel_tree(cache)[1]
        return qemu.start_guest(h, state, engine.accel, init_params(h, state, "qemu", modroot, restart),
                                qemu_binary())
    return start_uml_guest(h, state, uml_root, init_params(h, state, "uml", uml_root, restart))


def start_uml_guest(h: HostSpec, state: str, uml_root: str, params: list[str]) -> int:
    """Launch one UML guest in the switch namespace; return the linux.uml PID."""
    run = os.path.join(state, "run")
    subprocess.run(["rm", "-rf", os.path.join(run, h.name)], check=False)
    uml_args = [
        f"umid={h.name}", f"uml_dir={run}", f"mem={h.mem}",
        "rootfstype=hostfs", "rootflags=/", "ro", f"init={state}/bin/guest-init.sh",
        "con=null", "ssl=null", "con0=null,fd:1", "quiet", *params,
    ]
    if h.disk_mb:
        uml_args.append(f"ubd0={os.path.join(state, 'guests', h.name, 'disk.img')}")
    for i, nic in enumerate(h.nics):
        uml_args.append(f"eth{i}=tuntap,{nic.tap},{nic.mac}")
    env = dict(os.environ, TMPDIR="/dev/shm")  # guest RAM file on tmpfs
    console = open(os.path.join(state, "logs", f"{h.name}.console"), "wb")
    p = subprocess.Popen(
        ["ip", "netns", "exec", SWITCH_NS, uml_binary(uml_root), *uml_args],
        stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=env,
        start_new_session=True, close_fds=True)
    console.close()
    return p.pid


MC_MAGIC, MC_VERSION, MC_MAXDATA = 0xCAFEBABE, 2, 512


def mconsole(sock_path: str, command: str, timeout: float = 3.0) -> tuple[int, str]:
    """Send one UML management-console command (cad, halt, stop, go, 'proc meminfo', ...)."""
    data = command.encode()[:MC_MAXDATA]
    req = struct.pack("=III%ds" % MC_MAXDATA, MC_MAGIC, MC_VERSION, len(data), data)
    fd, me = tempfile.mkstemp(prefix="mc-", dir=os.path.dirname(os.path.dirname(sock_path)))
    os.close(fd)
    os.unlink(me)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(me)
    s.settimeout(timeout)
    out = []
    try:
        s.sendto(req, sock_path)
        while True:
            rep = s.recv(12 + MC_MAXDATA)
            err, more, ln = struct.unpack("=III", rep[:12])
            out.append(rep[12:12 + ln].decode(errors="replace"))
            if not more:
                return err, "".join(out).rstrip("\0")
    finally:
        s.close()
        os.unlink(me)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_guests(state: str, pids: dict[str, int], timeout: float = 6.0, engine: str = "uml") -> None:
    """UML: clean power-off via mconsole 'cad' (init traps it); qemu: SIGTERM at once (the lab's
    disks are thrown away with it). Then SIGTERM/SIGKILL whatever is left."""
    run = os.path.join(state, "run")
    if engine == "qemu":
        timeout = 0.0
    for name, pid in pids.items():
        sock = os.path.join(run, name, "mconsole")
        if engine != "qemu" and alive(pid) and os.path.exists(sock):
            try:
                mconsole(sock, "cad", timeout=1.0)
            except OSError:
                pass
    deadline = time.time() + timeout
    for sig in (signal.SIGTERM, signal.SIGKILL):
        while time.time() < deadline and any(alive(p) for p in pids.values()):
            for p in pids.values():
                reap(p)
            time.sleep(0.05)
        for p in pids.values():
            if alive(p):
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 3.0
    for p in pids.values():
        reap(p)

"""The lab's PXE-installable "bare-metal" machine: a qemu VM (TCG) behind a simulated BMC.

    BMC     OpenIPMI's ipmi_sim on 127.0.0.1:9623 (root namespace, loopback only), user admin,
            random password in <state>/ipmi/password (mode 600; only in files, never on a command
            line). Its chassis_control program <state>/bin/bmc-chassis-control handles
            `chassis power on|off|cycle|status` and `chassis bootdev pxe|disk` (+ bootparam get 5).
    VM      qemu-system-x86_64 -accel tcg -m 256, one virtio NIC 52:54:00:77:02:00 on tap-pxe0
            (switch namespace, br-priv), serial console in <state>/logs/pxe-vm.console, pid file
            <state>/run/pxe-vm.pid. Boot device "pxe" -> network boot (iPXE ROM); anything else ->
            disk only, with the NIC ROM removed (romfile=) so SeaBIOS cannot fall back to PXE.
            The VM is off after `lab up`.
    boot    boot1's dnsmasq (DHCP on br-priv for reserved MACs only, TFTP) + boothttp on :8000;
            TFTP root <state>/boot/tftp: pxelinux.0 ldlinux.c32 vmlinuz initrd.img pxelinux.cfg/default
    kernel  the Debian kernel package, extracted (not installed) by .ci/lab-setup.sh into
            <cache>/pxe/kernel
    initrd  the "lab installer" (below), built once into <cache>/pxe/initrd.img and rebuilt only
            when its inputs change: busybox-static, dropbear, the NIC modules and python3 with the
            stdlib modules the lab's sample app needs (sourceless .pyc, found with modulefinder).

The installer's contract (INIT below): kernel command line BOOTIF=01-aa-bb-.. (pxelinux IPAPPEND 2)
and dsas.answers=<URL>. It DHCPs on the BOOTIF NIC, fetches the answer file (shell variables
HOSTNAME IP PREFIX GATEWAY SSH_AUTHORIZED_KEY CALLBACK_URL CALLBACK_TOKEN), sets the hostname and
the static address, makes a NEW ed25519 host key, starts dropbear on :22 (root, key only), and
POSTs token/mac/hostname/ip/hostkey lines to CALLBACK_URL until it gets 200 (1 s apart, 60 tries).
The running initramfs is the "installed" system: / is RAM, /srv /var/lib /tmp are tmpfs.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time

from .topology import (BMC_ADDR, BMC_PORT, BMC_USER, PXE_VM_MAC, PXE_VM_MEM_MB, PXE_VM_TAP,
                       SWITCH_NS, answers_dir, bmc_password_file, cache_dir, callback_dir,
                       dhcp_hosts_dir, http_root, tftp_root)

BUILD_VERSION = "1"  # bump when the build itself changes in a way the inputs do not show
PXELINUX = "/usr/lib/PXELINUX/pxelinux.0"
LDLINUX = "/usr/lib/syslinux/modules/bios/ldlinux.c32"
BUSYBOX = "/bin/busybox"
DROPBEAR = "/usr/sbin/dropbear"
DROPBEARKEY = "/usr/bin/dropbearkey"
PYTHON = "/usr/bin/python3"
QEMU = "/usr/bin/qemu-system-x86_64"
IPMI_SIM = "/usr/bin/ipmi_sim"
# NIC drivers (and what they need), in load order; those built into the kernel are skipped
NIC_MODULES = ("net/core/failover", "drivers/net/net_failover", "drivers/virtio/virtio_ring",
               "drivers/virtio/virtio", "drivers/virtio/virtio_pci_legacy_dev",
               "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci",
               "drivers/net/virtio_net", "drivers/net/ethernet/intel/e1000/e1000")
# stdlib modules python3 in the VM does not need (modulefinder follows every optional import)
PY_EXCLUDES = ("tkinter", "test", "unittest", "pydoc", "pydoc_data", "ssl", "_ssl", "_hashlib",
               "pdb", "bdb", "doctest", "cmd", "code", "codeop", "readline", "rlcompleter",
               "tarfile", "zipfile", "gzip", "lzma", "_lzma", "bz2", "_bz2", "_compression",
               "decimal", "_decimal", "_pydecimal", "fractions", "statistics", "difflib",
               "argparse", "pickle", "_compat_pickle", "importlib.metadata", "importlib.resources",
               "pkgutil", "py_compile", "tracemalloc", "csv",
               "encodings.mbcs", "sitecustomize", "usercustomize", "apport_python_hook",
               "lib2to3", "distutils", "ensurepip", "venv", "idlelib", "turtle", "turtledemo",
               "sqlite3", "_sqlite3", "curses", "_curses", "dbm", "xml", "xmlrpc", "multiprocessing",
               "asyncio", "concurrent", "ctypes", "_ctypes")
# always there, whatever the app imports: what the interpreter needs to start and common helpers
PY_ALWAYS = ("site", "_sitebuiltins", "encodings", "encodings.aliases", "encodings.utf_8",
             "encodings.latin_1", "encodings.ascii", "encodings.idna", "runpy", "json", "subprocess",
             "shutil", "tempfile", "signal", "traceback", "linecache", "logging")

# ---------------------------------------------------------------- installer (initramfs) ----

INIT = r"""#!/bin/busybox sh
# /init of the dsas lab installer (initramfs built by dsasdeploy.lab.pxe). The initramfs is also the
# "installed" system: it runs from RAM and a new power-on installs afresh.
# Contract: kernel command line BOOTIF=01-aa-bb-cc-dd-ee-ff (pxelinux IPAPPEND 2) and
# dsas.answers=<URL of the answer file: shell variables HOSTNAME IP PREFIX GATEWAY
# SSH_AUTHORIZED_KEY CALLBACK_URL CALLBACK_TOKEN, single-quoted words; others are ignored>.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /srv /var/lib /var/log /root /etc
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts && mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
# room for the app and its data, apart from the files of the installer itself
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=755 tmpfs /srv
mount -t tmpfs -o mode=755 tmpfs /var/lib
mount -t tmpfs -o mode=1777 tmpfs /tmp
log() { echo "dsas-installer[$(cut -d' ' -f1 /proc/uptime)] $*"; }
fail() { log "ERROR $*"; log "installation FAILED: staying up for inspection"; while :; do sleep 3600; done; }
log "init started (kernel $(uname -r))"

for m in @MODULES@; do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done

mac=; answers=
for w in $(cat /proc/cmdline); do
  case $w in
    BOOTIF=*) b=${w#BOOTIF=}; b=${b#??-}; mac=$(echo "$b" | tr - : | tr A-F a-f) ;;
    dsas.answers=*) answers=${w#dsas.answers=} ;;
  esac
done
iface=; i=0
while [ -z "$iface" ] && [ $i -lt 100 ]; do
  for d in /sys/class/net/*; do
    n=${d##*/}; [ "$n" = lo ] && continue
    if [ -n "$mac" ]; then
      [ "$(cat $d/address 2>/dev/null)" = "$mac" ] && iface=$n
    elif [ -z "$iface" ]; then
      iface=$n
    fi
  done
  [ -n "$iface" ] || { sleep 0.1; i=$((i+1)); }
done
[ -n "$iface" ] || fail "no NIC with MAC '$mac' (BOOTIF=) found"
[ -n "$mac" ] || mac=$(cat /sys/class/net/$iface/address)
log "boot NIC $iface mac=$mac"

ip link set lo up
ip link set "$iface" up
udhcpc -i "$iface" -s /etc/udhcpc.script -q -f -n -t 20 -T 1 -x hostname:dsas-installer || fail "no DHCP lease on $iface"
. /run/dhcp.env
log "dhcp bound ip=$ip/$mask router=$router server=$serverid"

[ -n "$answers" ] || fail "no dsas.answers= on the kernel command line"
i=0
until timeout 10 wget -q -O /run/answers.sh "$answers"; do
  i=$((i+1)); [ $i -ge 10 ] && fail "cannot fetch the answer file $answers"; sleep 1
done
# source it in a subshell: only the variables of the contract come out of it
mkdir -p /run/answer
( . /run/answers.sh || exit 1
  for v in HOSTNAME IP PREFIX GATEWAY SSH_AUTHORIZED_KEY CALLBACK_URL CALLBACK_TOKEN; do
    eval "printf '%s' \"\${$v:-}\"" > /run/answer/$v || exit 1
  done ) || fail "the answer file $answers does not parse"
for v in HOSTNAME IP PREFIX SSH_AUTHORIZED_KEY CALLBACK_URL CALLBACK_TOKEN; do
  [ -s /run/answer/$v ] || fail "the answer file has no $v"
done
A_HOSTNAME=$(cat /run/answer/HOSTNAME); A_IP=$(cat /run/answer/IP); A_PREFIX=$(cat /run/answer/PREFIX)
A_GATEWAY=$(cat /run/answer/GATEWAY); A_KEY=$(cat /run/answer/SSH_AUTHORIZED_KEY)
A_URL=$(cat /run/answer/CALLBACK_URL); A_TOKEN=$(cat /run/answer/CALLBACK_TOKEN)
log "answer file fetched: hostname=$A_HOSTNAME ip=$A_IP/$A_PREFIX gateway=${A_GATEWAY:-none}"

# "install"
hostname "$A_HOSTNAME"
echo "$A_HOSTNAME" > /etc/hostname
printf '127.0.0.1 localhost\n%s %s\n' "$A_IP" "$A_HOSTNAME" > /etc/hosts
ip addr flush dev "$iface"
ip addr add "$A_IP/$A_PREFIX" dev "$iface" || fail "cannot set $A_IP/$A_PREFIX on $iface"
if [ -n "$A_GATEWAY" ]; then
  ip route replace default via "$A_GATEWAY" dev "$iface" || fail "cannot set the default route via $A_GATEWAY"
fi
arping -q -U -c 1 -I "$iface" "$A_IP" >/dev/null 2>&1 &
log "network: $A_IP/$A_PREFIX on $iface, default route ${A_GATEWAY:-none}"
mkdir -p /root/.ssh /etc/dropbear
printf '%s\n' "$A_KEY" > /root/.ssh/authorized_keys
chmod 700 /root /root/.ssh; chmod 600 /root/.ssh/authorized_keys
rm -f /etc/dropbear/dropbear_ed25519_host_key
dropbearkey -t ed25519 -f /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1 || fail "dropbearkey failed"
hostkey=$(dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key 2>/dev/null | grep '^ssh-ed25519 ')
[ -n "$hostkey" ] || fail "no public host key"
dropbear -r /etc/dropbear/dropbear_ed25519_host_key -p 22 -s -E -P /run/dropbear.pid 2>>/var/log/dropbear.log || fail "dropbear did not start"
i=0; while [ ! -s /run/dropbear.pid ] && [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done
log "dropbear started on :22 (pid $(cat /run/dropbear.pid 2>/dev/null)), new host key $(echo "$hostkey" | cut -d' ' -f1-2)"

printf 'token=%s\nmac=%s\nhostname=%s\nip=%s\nhostkey=%s\n' "$A_TOKEN" "$mac" "$A_HOSTNAME" "$A_IP" "$hostkey" > /run/callback.txt
i=0; sent=
while [ $i -lt 60 ]; do
  i=$((i+1))
  if timeout 10 wget -q -O /run/callback.reply --header 'Content-Type: text/plain' --post-file /run/callback.txt "$A_URL" 2>/dev/null; then
    sent=1; break
  fi
  sleep 1
done
if [ -n "$sent" ]; then log "callback accepted (try $i) by $A_URL"; else log "ERROR callback not accepted after $i tries: $A_URL"; fi
log "ready: $A_HOSTNAME $A_IP/$A_PREFIX, ssh root@$A_IP"
# PID 1 stays; `wait` also reaps orphans (the app, SSH sessions) when they exit
while :; do sleep 3600 & wait $!; done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# busybox udhcpc event script of the dsas lab installer ($mask is a prefix length)
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    { echo "ip=$ip"; echo "mask=$mask"; echo "router='$router'"; echo "siaddr=$siaddr"
      echo "serverid=$serverid"; } > /run/dhcp.env ;;
esac
exit 0
"""

# run by the target python (the system's /usr/bin/python3): find the modules the app needs and
# write them as sourceless .pyc (legacy layout) under <tree>/<stdlib>; print what it wrote
PY_COLLECT = r"""
import json, modulefinder, os, py_compile, shutil, sys, sysconfig
tree, app, excludes, always = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(",")
stdlib = sysconfig.get_paths()["stdlib"]
dynload = os.path.join(stdlib, "lib-dynload")
mf = modulefinder.ModuleFinder(path=[stdlib, dynload], excludes=excludes)
mf.run_script(app)
extra = os.path.join(os.path.dirname(app), "_always.py")
with open(extra, "w") as f:
    f.write("".join(f"import {m}\n" for m in always))
mf.run_script(extra)
files = {}
for name, m in mf.modules.items():
    src = m.__file__
    if not src or not src.startswith(stdlib + "/"):
        continue
    dst = tree + src
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if src.endswith(".py"):
        py_compile.compile(src, cfile=dst + "c", dfile=src, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        files[name] = src + "c"
    else:
        shutil.copy2(src, dst)
        files[name] = src
os.makedirs(tree + dynload, exist_ok=True)
print(json.dumps({"stdlib": stdlib, "dynload": dynload, "files": files,
                  "executable": os.path.realpath(sys.executable)}))
"""


def kernel(cache: str | None = None) -> tuple[str, str, str]:
    """(vmlinuz path, modules dir, version) of the extracted Debian kernel (newest if several)."""
    root = os.path.join(cache or cache_dir(), "pxe", "kernel")
    found = sorted(glob.glob(os.path.join(root, "boot", "vmlinuz-*")))
    if not found:
        raise FileNotFoundError(f"no Debian kernel under {root}/boot: run .ci/lab-setup.sh")
    vmlinuz = found[-1]
    version = os.path.basename(vmlinuz)[len("vmlinuz-"):]
    return vmlinuz, os.path.join(root, "lib", "modules", version, "kernel"), version


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _libs(binaries: list[str]) -> list[str]:
    """Shared libraries (and the loader) the binaries need, as ldd resolves them."""
    libs: set[str] = set()
    for b in binaries:
        out = subprocess.run(["ldd", b], capture_output=True, text=True).stdout
        for line in out.splitlines():
            for word in line.split():
                if word.startswith("/"):
                    libs.add(word)
    return sorted(libs)


def _app_source() -> str:
    """What decides the python modules in the initramfs: the sample app (and its restart script)."""
    from .app_repo import RESTART_SH, release_files
    return release_files("v2")["app.py"] + RESTART_SH


def initramfs_inputs(cache: str | None = None) -> dict:
    """What the initramfs is made of: its hash decides whether a rebuild is needed."""
    version = kernel(cache)[2]
    py = os.path.realpath(PYTHON)
    parts = [BUILD_VERSION, INIT, UDHCPC_SCRIPT, PY_COLLECT, ",".join(NIC_MODULES),
             ",".join(PY_EXCLUDES), ",".join(PY_ALWAYS), _app_source(), version,
             *(_stat_key(p) for p in (BUSYBOX, DROPBEAR, DROPBEARKEY, py))]
    return {"kernel": version, "python": py,
            "key": hashlib.sha256("\0".join(parts).encode()).hexdigest()}


def initramfs_path(cache: str | None = None) -> str:
    return os.path.join(cache or cache_dir(), "pxe", "initrd.img")


def ensure_initramfs(cache: str | None = None, force: bool = False) -> dict:
    """Build <cache>/pxe/initrd.img unless it is there and its inputs did not change.

    Returns {"path", "built": bool, "seconds", "size", "kernel"}."""
    t0 = time.time()
    out = initramfs_path(cache)
    stamp = out + ".stamp"
    inputs = initramfs_inputs(cache)
    if not force and os.path.exists(out):
        try:
            with open(stamp) as f:
                if json.load(f).get("key") == inputs["key"]:
                    return {"path": out, "built": False, "seconds": time.time() - t0,
                            "size": os.path.getsize(out), "kernel": inputs["kernel"]}
        except (OSError, ValueError):
            pass
    _build(cache, out)
    with open(stamp + ".tmp", "w") as f:
        json.dump({**inputs, "built": time.time(), "size": os.path.getsize(out)}, f)
    os.replace(stamp + ".tmp", stamp)
    return {"path": out, "built": True, "seconds": time.time() - t0, "size": os.path.getsize(out),
            "kernel": inputs["kernel"]}


def _build(cache: str | None, out: str) -> None:
    moddir = kernel(cache)[1]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    work = tempfile.mkdtemp(prefix="initramfs.", dir=os.path.dirname(out))
    try:
        tree = os.path.join(work, "root")
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/dropbear", "lib/modules", "root/.ssh",
                  "proc", "sys", "dev", "run", "tmp", "srv", "var/lib", "var/log"):
            os.makedirs(os.path.join(tree, d), exist_ok=True)
        os.mknod(os.path.join(tree, "dev/console"), 0o600 | 0o020000, os.makedev(5, 1))

        def put(src: str, dst: str, mode: int | None = None) -> None:
            full = tree + dst
            os.makedirs(os.path.dirname(full), exist_ok=True)
            shutil.copy2(src, full)
            if mode is not None:
                os.chmod(full, mode)

        def text(dst: str, content: str, mode: int = 0o644) -> None:
            with open(tree + dst, "w") as f:
                f.write(content)
            os.chmod(tree + dst, mode)

        put(BUSYBOX, "/bin/busybox", 0o755)
        os.symlink("busybox", os.path.join(tree, "bin/sh"))
        os.symlink("/bin/busybox", os.path.join(tree, "usr/bin/env"))
        mods = []
        for m in NIC_MODULES:
            ko = os.path.join(moddir, m + ".ko")
            if os.path.exists(ko):  # else built into the kernel
                put(ko, "/lib/modules/" + os.path.basename(ko))
                mods.append(os.path.basename(m))
        text("/init", INIT.replace("@MODULES@", " ".join(mods)), 0o755)
        text("/etc/udhcpc.script", UDHCPC_SCRIPT, 0o755)
        text("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        text("/etc/group", "root:x:0:\nnogroup:x:65534:\n")
        text("/etc/shells", "/bin/sh\n")
        text("/etc/hostname", "dsas-installer\n")
        text("/etc/hosts", "127.0.0.1 localhost\n")
        os.chmod(os.path.join(tree, "root"), 0o700)
        py = os.path.realpath(PYTHON)  # /usr/bin/python3.11
        put(DROPBEAR, "/usr/sbin/dropbear", 0o755)
        put(DROPBEARKEY, "/usr/bin/dropbearkey", 0o755)
        put(py, py, 0o755)
        os.symlink(os.path.basename(py), os.path.join(tree, "usr/bin/python3"))
        # python's stdlib: what the sample app (and the interpreter itself) imports
        app = os.path.join(work, "app.py")
        from .app_repo import release_files
        with open(app, "w") as f:
            f.write(release_files("v2")["app.py"])
        p = subprocess.run([py, "-I", "-c", PY_COLLECT, tree, app, ",".join(PY_EXCLUDES),
                            ",".join(PY_ALWAYS)], capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"initramfs: collecting python modules failed: {p.stderr.strip()[-500:]}")
        found = json.loads(p.stdout)
        shared = [f for f in found["files"].values() if f.endswith(".so")]
        for lib in _libs([DROPBEAR, DROPBEARKEY, py, *shared]):
            put(lib, lib)  # copy2 follows the symlink: the real file under the link's name
        # busybox applet links (/init repeats it; nothing is overwritten)
        subprocess.run(["chroot", tree, "/bin/busybox", "--install", "-s"], check=True)
        # it must work before it ships: the app's imports, ssh host key generation
        checks = [
            ["/usr/bin/env", "python3", "-c",
             "import os, socket, sys, threading, time, socketserver, json, subprocess\n"
             "from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\nprint('ok')"],
            ["/bin/sh", "-c", "dropbearkey -t ed25519 -f /tmp/k >/dev/null && dropbearkey -y -f /tmp/k "
                              "| grep -q '^ssh-ed25519 ' && rm -f /tmp/k && dropbear -V 2>&1 | grep -q Dropbear "
                              "&& echo ok"],
        ]
        for argv in checks:
            r = subprocess.run(["chroot", tree, *argv], capture_output=True, text=True,
                               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            if r.returncode or r.stdout.strip() != "ok":
                raise RuntimeError(f"initramfs check {argv[-1][:60]!r} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        for junk in glob.glob(os.path.join(tree, "**", "__pycache__"), recursive=True):
            shutil.rmtree(junk, ignore_errors=True)
        tmp = out + ".tmp"
        subprocess.run(["sh", "-c", "cd \"$1\" && find . -print0 | LC_ALL=C sort -z | "
                        "cpio --null -o -H newc --quiet -R 0:0 | gzip -9 -n > \"$2\"", "sh", tree, tmp],
                       check=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- boot-server files ----

def write_boot_files(state: str, initrd: str, cache: str | None = None) -> None:
    """TFTP root (pxelinux, kernel, installer initramfs), HTTP root, answer and callback dirs."""
    t = tftp_root(state)
    for d in (os.path.join(t, "pxelinux.cfg"), answers_dir(state), callback_dir(state),
              dhcp_hosts_dir(state)):
        os.makedirs(d, exist_ok=True)
    vmlinuz = kernel(cache)[0]
    for src, name in ((PXELINUX, "pxelinux.0"), (LDLINUX, "ldlinux.c32"), (vmlinuz, "vmlinuz"),
                      (initrd, "initrd.img")):
        dst = os.path.join(t, name)
        shutil.copyfile(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    with open(os.path.join(http_root(state), "index.txt"), "w") as f:
        f.write("dsas lab boot server: HTTP works\n")


# ---------------------------------------------------------------- the VM and its BMC ----

VM_START = r"""#!/bin/bash
# Power on the lab's PXE machine (run by the BMC's chassis control; written by dsasdeploy.lab.pxe).
# qemu (TCG) in the switch namespace (a tap belongs to the namespace of the process that opens it).
# Boot device (run/pxe-bootdev, set through IPMI): pxe -> network boot; anything else -> disk
# only, and no NIC option ROM, so SeaBIOS cannot fall back to the network.
S=@STATE@
boot=$(cat "$S/run/pxe-bootdev" 2>/dev/null || echo default)
if [ "$boot" = pxe ]; then order=n; rom=; else order=c; rom=",romfile="; fi
[ -s "$S/logs/pxe-vm.console" ] && mv -f "$S/logs/pxe-vm.console" "$S/logs/pxe-vm.console.prev"
: > "$S/logs/pxe-vm.console"
echo "$(date '+%F %T.%N') power on: boot device $boot (order=$order)" >> "$S/logs/pxe-power.log"
exec ip netns exec @NS@ @QEMU@ -accel tcg -m @MEM@ -smp 1 -name pxe-vm \
  -nodefaults -nographic -monitor none -no-reboot \
  -chardev file,id=ser0,path="$S/logs/pxe-vm.console",append=on -serial chardev:ser0 \
  -netdev tap,id=n0,ifname=@TAP@,script=no,downscript=no \
  -device virtio-net-pci,netdev=n0,mac=@MAC@$rom \
  -boot order=$order -pidfile "$S/run/pxe-vm.pid"
"""

CHASSIS_CONTROL = r"""#!/bin/bash
# chassis_control program of the lab BMC (ipmi_sim; written by dsasdeploy.lab.pxe):
#   bmc-chassis-control <mc> get <parm>...        prints "parm:value" lines
#   bmc-chassis-control <mc> set <parm> <val>...  prints nothing on success
# parms: power (0|1), reset (1), boot (none|pxe|default|cdrom|bios), shutdown (1), identify
# It runs synchronously inside ipmi_sim: qemu is started detached (setsid, no stdio).
S=@STATE@
dev=$1; op=$2; shift 2
echo "$(date '+%F %T.%N') $dev $op $*" >> "$S/logs/bmc-chassis.log"
qpid() { cat "$S/run/pxe-vm.pid" 2>/dev/null; }
alive() {
  local p; p=$(qpid); [ -n "$p" ] || return 1
  case "$(cat /proc/$p/comm 2>/dev/null)" in qemu-system-*) ;; *) return 1 ;; esac
  [ "$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f1)" != Z ]
}
power_on() {
  alive && return 0
  rm -f "$S/run/pxe-vm.pid"
  setsid "$S/bin/pxe-vm-start" </dev/null >>"$S/logs/pxe-vm.out" 2>&1 &
  for i in $(seq 60); do alive && return 0; sleep 0.05; done
  echo "$(date '+%F %T.%N') power on FAILED (see logs/pxe-vm.out)" >> "$S/logs/pxe-power.log"
}
power_off() {
  local p; p=$(qpid)
  if alive; then
    kill "$p" 2>/dev/null
    for i in $(seq 100); do alive || break; sleep 0.05; done
    alive && kill -9 "$p" 2>/dev/null
    echo "$(date '+%F %T.%N') power off (qemu $p)" >> "$S/logs/pxe-power.log"
  fi
  rm -f "$S/run/pxe-vm.pid"
}
case $op in
  get)
    for parm in "$@"; do
      case $parm in
        power) if alive; then echo "power:1"; else echo "power:0"; fi ;;
        boot)  echo "boot:$(cat "$S/run/pxe-bootdev" 2>/dev/null || echo default)" ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
      esac
    done ;;
  set)
    while [ $# -gt 0 ]; do
      parm=$1; val=$2; shift 2
      case $parm in
        power)    if [ "$val" = 1 ]; then power_on; else power_off; fi ;;
        reset)    power_off; power_on ;;
        shutdown) power_off ;;
        boot)     # fault injection (dsasdeploy.lab.faults.bmc_rejects_bootdev): a BMC that refuses
                  [ -e "$S/run/bmc-reject-bootdev" ] && { echo "Invalid boot value: $val (fault)"; exit 1; }
                  case $val in none|pxe|default|cdrom|bios) echo "$val" > "$S/run/pxe-bootdev" ;;
                    *) echo "Invalid boot value: $val"; exit 1 ;; esac ;;
        identify) shift 1 ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
      esac
    done ;;
  check) exit 1 ;;
  *) echo "Unknown operation: $op"; exit 1 ;;
esac
exit 0
"""

BMC_EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""

# IPMI 1.5 sessions only with MD5 (no "none"/"straight"); lanplus (RAKP) checks the password.
# No anonymous user 1. The password is only in this file (mode 600) and <state>/ipmi/password.
BMC_CONF = """# ipmi_sim config of the dsas lab BMC (written by dsasdeploy.lab.pxe): loopback only
name "dsaslab"
set_working_mc 0x20
  startlan 1
    addr {addr} {port}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a1d5a5aba0000000a1d5a5aba0000001
  endlan
  chassis_control "{control} 0x20"
  user 2 true  "{user}" "{password}" admin 10 md5
"""


def write_vm_files(state: str) -> None:
    """<state>/bin/pxe-vm-start and bmc-chassis-control; the VM starts powered off, boot 'default'."""
    os.makedirs(os.path.join(state, "bin"), exist_ok=True)
    subs = {"@STATE@": shlex.quote(state), "@NS@": SWITCH_NS, "@QEMU@": QEMU,
            "@MEM@": str(PXE_VM_MEM_MB), "@TAP@": PXE_VM_TAP, "@MAC@": PXE_VM_MAC}
    for name, text in (("pxe-vm-start", VM_START), ("bmc-chassis-control", CHASSIS_CONTROL)):
        for k, v in subs.items():
            text = text.replace(k, v)
        path = os.path.join(state, "bin", name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    with open(os.path.join(state, "run", "pxe-bootdev"), "w") as f:
        f.write("default\n")


def write_bmc_files(state: str) -> str:
    """Random password (16 letters/digits), ipmi_sim config and command file; returns the dir."""
    d = os.path.join(state, "ipmi")
    os.makedirs(os.path.join(d, "state"), exist_ok=True)
    os.chmod(d, 0o700)
    pw_file = bmc_password_file(state)
    if not os.path.exists(pw_file):
        alphabet = string.ascii_letters + string.digits
        pw = "".join(secrets.choice(alphabet) for _ in range(16))
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pw + "\n")
    with open(pw_file) as f:
        pw = f.read().strip()
    conf = os.path.join(d, "lan.conf")
    fd = os.open(conf + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(BMC_CONF.format(addr=BMC_ADDR, port=BMC_PORT, user=BMC_USER, password=pw,
                                control=os.path.join(state, "bin", "bmc-chassis-control")))
    os.replace(conf + ".tmp", conf)
    with open(os.path.join(d, "bmc.emu"), "w") as f:
        f.write(BMC_EMU)
    return d


def bmc_port_busy() -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((BMC_ADDR, BMC_PORT))
        return False
    except OSError:
        return True
    finally:
        s.close()


def start_bmc(state: str) -> int:
    """ipmi_sim in the root namespace (loopback only), not daemonized; returns its PID."""
    d = os.path.join(state, "ipmi")
    log = open(os.path.join(state, "logs", "ipmi_sim.log"), "ab")
    p = subprocess.Popen([IPMI_SIM, "-c", os.path.join(d, "lan.conf"), "-f", os.path.join(d, "bmc.emu"),
                          "-s", os.path.join(d, "state"), "-n"],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True, cwd=d)
    log.close()
    return p.pid


def bmc_listening() -> bool:
    """Something holds UDP 127.0.0.1:9623 (ipmi_sim's LAN socket)."""
    want = f"{socket.htonl(0x7F000001):08X}:{BMC_PORT:04X}"
    try:
        with open("/proc/net/udp") as f:
            return any(line.split()[1] == want for line in f.readlines()[1:])
    except OSError:
        return False


def wait_bmc(pid: int, timeout: float = 5.0) -> bool:
    from .guests import alive
    t = time.time() + timeout
    while time.time() < t:
        if bmc_listening():
            return True
        if not alive(pid):
            return False
        time.sleep(0.02)
    return False


def vm_pid(state: str) -> int | None:
    """The qemu PID from <state>/run/pxe-vm.pid if that process is a live qemu, else None."""
    try:
        with open(os.path.join(state, "run", "pxe-vm.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            if not f.read().startswith("qemu-system"):
                return None
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        return pid
    except (OSError, ValueError):
        return None


def stop_vm(state: str, timeout: float = 5.0) -> bool:
    """Hard power-off of the VM (SIGTERM, then SIGKILL); True if one was running."""
    pid = vm_pid(state)
    if pid is None:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        t = time.time() + timeout
        while time.time() < t and vm_pid(state) == pid:
            time.sleep(0.02)
        if vm_pid(state) != pid:
            break
    try:
        os.unlink(os.path.join(state, "run", "pxe-vm.pid"))
    except OSError:
        pass
    return True


def vm_rss_kib(state: str) -> int:
    pid = vm_pid(state)
    if pid is None:
        return 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def copy_script(state: str) -> str:
    """boothttp.py copied into <state>/bin (boot1 runs it from there: its /root, /tmp and /run are
    private tmpfs, so the package's own path may be hidden inside it)."""
    from . import boothttp
    dst = os.path.join(state, "bin", "boothttp.py")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(boothttp.__file__, dst)
    return dst

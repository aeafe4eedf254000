"""qemu guests of the lab: Debian 12's own kernel, the host's / over virtio-9p, read-only.

The qemu engine is what the lab runs where user-mode-linux cannot boot (UML 6.1 panics on CPUs
with AVX-512/AMX/PKU: `ptrace set fp regs failed, errno = 14`). The guest looks the same as a UML
guest from inside and from the outside: same hostname, addresses, taps, init script, sshd and
host key; only the transport of the root filesystem (9p instead of hostfs) and the disk name
(/dev/vda instead of /dev/ubda) differ.

    kernel   <cache>/pxe/kernel/boot/vmlinuz-*, the Debian kernel package that .ci/lab-setup.sh
             extracts (it ships ip_vs*.ko and drbd.ko 8.4). Booted as an uncompressed ELF
             (<cache>/qemu/vmlinux-<version>) through its PVH entry: under TCG that skips ~3.5 s
             of in-guest xz decompression.
    modules  the same package's tree; `depmod -b` writes modules.dep into the cache once.
    initrd   <cache>/qemu/boot-initrd-<version>.img: busybox-static and the virtio-pci and 9p
             modules; /init mounts the host's / (9p tag `hostroot`, read-only export) and the lab
             state dir (9p tag `lab`, read-write), then switch_root's to dsas_init (the lab's
             guest-init.sh). With dsas_probe=1 it prints PROBE_MARKER and powers off instead.

Nothing in here writes outside the cache dir and the lab state dir; the host root export is
read-only at the qemu level (readonly=on), whatever a guest does.
"""

from __future__ import annotations

import glob
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import zlib

from .topology import HostSpec, SWITCH_NS, cache_dir

QEMU = "/usr/bin/qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
PROBE_MARKER = "DSAS_PROBE_OK"
BUILD_VERSION = "1"  # bump when the initramfs build changes in a way its inputs do not show
# loaded by the initramfs, in this order, before the root filesystem can be mounted
BOOT_MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p")
# loaded by the initramfs for every guest (NIC, disk, free page reporting)
GUEST_MODULES = ("virtio_net", "virtio_blk", "virtio_balloon")
# shipped in the initramfs (with what they depend on) so that a guest's dsas_mods load from RAM
# instead of through modprobe over 9p: a few seconds less per guest under TCG. Others still load
# through the guest's modprobe wrapper from the kernel tree.
PRELOADABLE = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_wlc", "drbd", "ext4")
TB_SIZE_MB = 64  # TCG translation cache per guest (qemu's default is 1 GiB of address space)
KERNEL_MEM_MB = 96  # what Debian's kernel, its modules and 9p buffers take beyond a UML guest
# kernel parameters that cut boot time under emulation; none changes what the lab tests
FAST_BOOT = ("quiet", "panic=-1", "mitigations=off", "tsc=reliable", "no_timer_check",
             "cryptomgr.notests", "random.trust_cpu=on", "i8042.noaux", "init_on_alloc=0")

INIT = r"""#!/bin/busybox sh
# /init of the dsas lab's qemu guests (written by dsasdeploy.lab.qemu): mount the host's / (9p,
# read-only) and the lab dir (9p, read-write), then hand over to $dsas_init.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in @MODULES@; do $B insmod /lib/modules/$m.ko || echo "dsas-initrd: insmod $m failed"; done
# this guest's modules (dsas_mods) and what they need, in dependency order (lib/modules/deps)
for m in $(echo "@GUEST@,$dsas_mods" | $B tr ',' ' '); do
  for d in $($B sed -n "s/^$m: //p" /lib/modules/deps); do
    # (a dependency may refuse this CPU, e.g. crc32c_intel under TCG: its generic twin serves)
    [ -d /sys/module/$d ] || $B insmod /lib/modules/$d.ko 2>/dev/null || [ $d != $m ] || echo "dsas-initrd: insmod $d failed"
  done
done
O=trans=virtio,version=9p2000.L,msize=262144
$B mount -t 9p -o ro,cache=loose,$O hostroot /newroot || { echo "dsas-initrd: cannot mount the host root"; $B sleep 2; $B poweroff -f; }
if [ "$dsas_probe" = 1 ]; then
  [ -x /newroot/bin/sh ] && echo "@MARKER@ $($B cut -d' ' -f1 /proc/uptime)"
  $B poweroff -f
fi
$B umount /proc /sys
$B mount --move /dev /newroot/dev
exec $B switch_root /newroot "$dsas_init"
"""


def kernel_tree(cache: str | None = None) -> tuple[str, str, str]:
    """(vmlinuz, module root for `modprobe -d`, version) of the extracted Debian kernel."""
    root = os.path.join(cache or cache_dir(), "pxe", "kernel")
    found = sorted(glob.glob(os.path.join(root, "boot", "vmlinuz-*")))
    if not found:
        raise FileNotFoundError(f"no Debian kernel under {root}/boot: run .ci/lab-setup.sh")
    version = os.path.basename(found[-1])[len("vmlinuz-"):]
    return found[-1], root, version


def _work_dir(cache: str | None) -> str:
    d = os.path.join(cache or cache_dir(), "qemu")
    os.makedirs(d, exist_ok=True)
    return d


def ensure_depmod(cache: str | None = None) -> None:
    """modules.dep for the extracted kernel (the .deb leaves it to its postinst): once, in the cache."""
    _, root, version = kernel_tree(cache)
    if not os.path.exists(os.path.join(root, "lib", "modules", version, "modules.dep")):
        subprocess.run(["depmod", "-b", root, version], check=True, capture_output=True)


def decompress_bzimage(data: bytes) -> bytes | None:
    """The ELF vmlinux inside a bzImage (xz or gzip payload), or None if it is not found."""
    for magic, open_stream in ((b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor()),
                               (b"\x1f\x8b\x08\x00", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))):
        start = data.find(magic)
        while start != -1:
            try:
                out = open_stream().decompress(data[start:])
            except (lzma.LZMAError, zlib.error):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = data.find(magic, start + 1)
    return None


def ensure_vmlinux(cache: str | None = None) -> str:
    """Path of the kernel to boot: the uncompressed ELF (PVH boot) when it can be extracted,
    else the bzImage itself."""
    vmlinuz, _, version = kernel_tree(cache)
    out = os.path.join(_work_dir(cache), f"vmlinux-{version}")
    if os.path.exists(out):
        return out
    with open(vmlinuz, "rb") as f:
        elf = decompress_bzimage(f.read())
    if elf is None:
        return vmlinuz
    with open(out + ".tmp", "wb") as f:
        f.write(elf)
    os.replace(out + ".tmp", out)
    return out


def module_deps(root: str, version: str, name: str) -> list[str]:
    """`name` and the modules it needs, in load order, as file paths (built-ins left out)."""
    p = subprocess.run(["modprobe", "-d", root, "-S", version, "--show-depends", name],
                       capture_output=True, text=True, check=True)
    return [line.split()[1] for line in p.stdout.splitlines() if line.startswith("insmod ")]


def _initrd_key(version: str) -> str:
    st = os.stat(BUSYBOX)
    parts = [BUILD_VERSION, INIT, ",".join(BOOT_MODULES), ",".join(GUEST_MODULES),
             ",".join(PRELOADABLE), version, f"{st.st_size}:{st.st_mtime_ns}"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def ensure_initrd(cache: str | None = None) -> str:
    """Build the boot initramfs (busybox + virtio/9p modules) unless its inputs are unchanged."""
    _, root, version = kernel_tree(cache)
    work = _work_dir(cache)
    out = os.path.join(work, f"boot-initrd-{version}.img")
    stamp = out + ".stamp"
    key = _initrd_key(version)
    try:
        with open(stamp) as f:
            if json.load(f).get("key") == key and os.path.exists(out):
                return out
    except (OSError, ValueError):
        pass
    tree = tempfile.mkdtemp(prefix="initrd.", dir=work)
    try:
        for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
            os.makedirs(os.path.join(tree, d))
        shutil.copy2(BUSYBOX, os.path.join(tree, "bin", "busybox"))
        os.symlink("busybox", os.path.join(tree, "bin", "sh"))
        os.mknod(os.path.join(tree, "dev", "console"), 0o600 | 0o020000, os.makedev(5, 1))
        mods = []
        for name in BOOT_MODULES:
            found = glob.glob(os.path.join(root, "lib", "modules", version, "kernel", "**", name + ".ko"),
                              recursive=True)
            if found:  # else built into the kernel
                shutil.copy2(found[0], os.path.join(tree, "lib", "modules", name + ".ko"))
                mods.append(name)
        deps = []
        for name in (*GUEST_MODULES, *PRELOADABLE):
            paths = module_deps(root, version, name)
            for path in paths:
                shutil.copy2(path, os.path.join(tree, "lib", "modules", _mod_name(path) + ".ko"))
            deps.append(f"{name}: {' '.join(_mod_name(x) for x in paths)}")
        with open(os.path.join(tree, "lib", "modules", "deps"), "w") as f:
            f.write("\n".join(deps) + "\n")
        init = (INIT.replace("@MODULES@", " ".join(mods)).replace("@MARKER@", PROBE_MARKER)
                .replace("@GUEST@", ",".join(GUEST_MODULES)))
        with open(os.path.join(tree, "init"), "w") as f:
            f.write(init)
        os.chmod(os.path.join(tree, "init"), 0o755)
        subprocess.run(["sh", "-c", 'cd "$1" && find . -print0 | LC_ALL=C sort -z | '
                        'cpio --null -o -H newc --quiet -R 0:0 | gzip -1 -n > "$2"',
                        "sh", tree, out + ".tmp"], check=True)
        os.replace(out + ".tmp", out)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    with open(stamp, "w") as f:
        json.dump({"key": key}, f)
    return out


def _mod_name(path: str) -> str:
    """The module's name as /sys/module shows it (file name, '-' as '_')."""
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def mem_mb(spec_mem: str) -> int:
    """qemu megabytes for a guest given UML's `mem=` value ("64M"): Debian's full kernel and its
    modules take about KERNEL_MEM_MB more than UML's, and a guest short of memory thrashes (no swap)."""
    value = spec_mem.strip().upper().rstrip("B") or "0M"
    mult = {"K": 1 / 1024, "M": 1, "G": 1024}.get(value[-1], None)
    n = float(value[:-1]) * mult if mult else float(value) / (1024 * 1024)
    return int(n) + KERNEL_MEM_MB


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,tb-size={TB_SIZE_MB}"]


def base_argv(qemu: str, accel: str, mem: int, kernel: str, initrd: str, append: list[str],
              name: str) -> list[str]:
    """qemu with no devices but the host root export, a serial console on stdout, no reboot."""
    return [qemu, "-name", name, *accel_args(accel), "-m", str(mem), "-smp", "1", "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", kernel, "-initrd", initrd,
            "-append", " ".join(["console=ttyS0", *FAST_BOOT, *append]),
            "-fsdev", "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"]


def guest_argv(h: HostSpec, state: str, accel: str, params: list[str], kernel: str, initrd: str,
               qemu: str = QEMU) -> list[str]:
    """The full qemu command line of lab guest `h` (pure): the lab state dir exported read-write,
    one virtio NIC per lab NIC on its tap, the DRBD disk."""
    argv = base_argv(qemu, accel, mem_mb(h.mem), kernel, initrd,
                     [f"dsas_init={state}/bin/guest-init.sh", *params], h.name)
    argv += ["-fsdev", f"local,id=lab,path={state},security_model=passthrough,multidevs=remap",
             "-device", "virtio-9p-pci,fsdev=lab,mount_tag=lab",
             # pages the guest frees go back to the host (the lab's memory stays near what is used)
             "-device", "virtio-balloon-pci,free-page-reporting=on"]
    for i, nic in enumerate(h.nics):
        argv += ["-netdev", f"tap,id=n{i},ifname={nic.tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n{i},mac={nic.mac}"]
    if h.disk_mb:
        disk = os.path.join(state, "guests", h.name, "disk.img")
        argv += ["-drive", f"file={disk},format=raw,if=virtio,cache=writeback"]
    return argv


def start_guest(h: HostSpec, state: str, accel: str, params: list[str], qemu: str = QEMU) -> int:
    """Launch one qemu guest in the switch namespace (its taps live there); return the qemu PID."""
    argv = guest_argv(h, state, accel, params, ensure_vmlinux(), ensure_initrd(), qemu)
    console = open(os.path.join(state, "logs", f"{h.name}.console"), "wb")
    p = subprocess.Popen(["ip", "netns", "exec", SWITCH_NS, *argv], stdin=subprocess.DEVNULL,
                         stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
                         close_fds=True)
    console.close()
    return p.pid

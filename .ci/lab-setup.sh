#!/bin/bash
# Idempotent installer of everything `dsas lab` needs on a fresh Debian 12, as root.
# Fast (well under a second) when everything is already in place.
#   - Debian packages: openssh-server (binaries only; its service is kept from starting),
#     ipvsadm, drbd-utils, kmod, memcached, dnsmasq, iproute2, git, curl, procps, e2fsprogs,
#     keepalived, haproxy and socat (the --lb keepalived/haproxy lab shapes; services not started)
#   - the user-mode-linux kernel and modules: `apt-get download` + `dpkg -x` into a cache dir
#     ($DSAS_LAB_CACHE, default /var/cache/dsas-lab/uml); nothing is installed system-wide.
#   - the PXE-booted "bare-metal" VM: qemu (TCG), iPXE ROMs, SeaBIOS, pxelinux, OpenIPMI's
#     ipmi_sim + ipmitool (simulated BMC), busybox-static, dropbear, cpio (installer initramfs),
#     and the current Debian kernel package (linux-image-<version>-amd64, resolved from the
#     linux-image-amd64 metapackage) downloaded and `dpkg -x`ed into $CACHE/pxe/kernel (no install).
#     None of their services is started (openipmi ships an init script: kept from starting).
set -eu
CACHE=${DSAS_LAB_CACHE:-/var/cache/dsas-lab}
PKGS="openssh-server ipvsadm drbd-utils kmod memcached dnsmasq-base iproute2 git curl procps e2fsprogs util-linux python3 iputils-arping keepalived haproxy socat"
PKGS="$PKGS qemu-system-x86 ipxe-qemu qemu-system-data seabios pxelinux syslinux-common openipmi ipmitool busybox-static dropbear-bin cpio"
BINS="/usr/sbin/sshd /usr/sbin/ipvsadm /usr/sbin/drbdadm /usr/bin/kmod /usr/bin/memcached /usr/sbin/dnsmasq /usr/sbin/ip /usr/bin/git /usr/bin/curl /usr/sbin/mkfs.ext4 /usr/bin/unshare /usr/bin/python3 /usr/bin/setsid /usr/bin/arping /usr/sbin/keepalived /usr/sbin/haproxy /usr/bin/socat"
# (files, not only binaries: one per PXE package, so a missing one triggers the install)
BINS="$BINS /usr/bin/qemu-system-x86_64 /usr/lib/ipxe/qemu/efi-virtio.rom /usr/share/qemu/kvmvapic.bin /usr/share/seabios/bios-256k.bin /usr/lib/PXELINUX/pxelinux.0 /usr/lib/syslinux/modules/bios/ldlinux.c32 /usr/bin/ipmi_sim /usr/bin/ipmitool /usr/share/doc/busybox-static /usr/sbin/dropbear /usr/bin/dropbearkey /usr/bin/cpio"

if [ "$(id -u)" != 0 ]; then
  echo "lab-setup: must run as root (it installs Debian packages)" >&2; exit 2
fi

missing=""
for b in $BINS; do [ -e "$b" ] || missing="$missing $b"; done
if [ -n "$missing" ]; then
  echo "lab-setup: installing packages (missing:$missing)"
  export DEBIAN_FRONTEND=noninteractive
  # never start host services from package scripts (the lab runs its own sshd/memcached/dnsmasq)
  restore_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; restore_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
  [ $restore_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

UML=$CACHE/uml
if [ ! -x "$UML/usr/bin/linux.uml" ]; then
  echo "lab-setup: fetching user-mode-linux into $UML"
  mkdir -p "$CACHE/deb"
  ( cd "$CACHE/deb" && { ls user-mode-linux_*.deb >/dev/null 2>&1 || { apt-get download user-mode-linux 2>/dev/null || { apt-get update -qq && apt-get download user-mode-linux; }; }; } )
  rm -rf "$UML.tmp"; mkdir -p "$UML.tmp"
  dpkg -x "$(ls "$CACHE"/deb/user-mode-linux_*.deb | head -1)" "$UML.tmp"
  rm -rf "$UML"; mv "$UML.tmp" "$UML"
fi
# modprobe -d DIR looks in DIR/lib/modules/$(uname -r)
mkdir -p "$UML/lib"
[ -L "$UML/lib/modules" ] || ln -sfn ../usr/lib/uml/modules "$UML/lib/modules"

# the Debian kernel the PXE VM boots: whatever linux-image-amd64 depends on today (cached)
PXE=$CACHE/pxe
if ! ls "$PXE"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  [ -n "$kpkg" ] || { echo "lab-setup: cannot resolve the kernel package of linux-image-amd64" >&2; exit 1; }
  echo "lab-setup: fetching $kpkg into $PXE/kernel (extracted only, not installed)"
  mkdir -p "$PXE"
  ( cd "$PXE" && { ls "${kpkg}"_*.deb >/dev/null 2>&1 || apt-get download "$kpkg" 2>/dev/null || { apt-get update -qq && apt-get download "$kpkg"; }; } )
  rm -rf "$PXE/kernel.tmp"; mkdir -p "$PXE/kernel.tmp"
  dpkg -x "$(ls "$PXE"/"${kpkg}"_*.deb | head -1)" "$PXE/kernel.tmp"
  rm -rf "$PXE/kernel"; mv "$PXE/kernel.tmp" "$PXE/kernel"
fi
echo "lab-setup: ok ($UML/usr/bin/linux.uml, $(ls "$PXE"/kernel/boot/vmlinuz-* | head -1))"

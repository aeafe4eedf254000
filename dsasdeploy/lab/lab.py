"""The lab as a Python API:  Lab(state_dir).up(web=3) / .down() / .status() / .run(host, cmd)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..commands.lb import haproxy
from ..errors import DsasError, UsageError
from . import engine as engines, guests, hosts, lbshapes, net, pxe, qemu
from .app_repo import ensure_app_repo
from .topology import (APP_PORT, BMC_ADDR, BMC_PORT, BMC_USER, BOOT_ADDR, BOOT_HTTP_PORT, DEFAULT_LB, DEPLOY_TO,
                       HAPROXY_BACKEND, HAPROXY_SOCKET,
                       DRBD_SERVICE_IP, DRBD_SERVICE_PORT, DRBD_MOUNT, MAX_WEB, MEMCACHED_ADDR,
                       MEMCACHED_PORT, PXE_PRIV_ULA, PXE_VM_BRIDGE, PXE_VM_TAP, SWITCH_NS, VIP,
                       HostSpec, bmc_password_file, boot_dir, cache_dir, stage_yaml,
                       stage_name, state_dir, topology, vip_port)


MARKER = ".dsas-lab"


class LabError(DsasError):
    """The lab could not be brought up (the message says which part)."""


@dataclass
class HostStatus:
    name: str
    kind: str
    address: str
    roles: tuple[str, ...]
    up: bool
    detail: str = ""


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("dsas lab needs root (network namespaces, bridges, mounts, guests): "
                         "run it as root, e.g. with sudo")


def ipvs_rules(web: int, lb: str = DEFAULT_LB) -> str:
    """The director's table as the lab loads it (ipvsadm and dr shapes)."""
    return lbshapes.ipvs_rules(web, lb)


def ssh_banner(addr: str, port: int = 22, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


class Lab:
    """One lab, described by its state directory (default /var/lib/dsas-lab or $DSAS_LAB_DIR)."""

    def __init__(self, state: str | None = None, uml_root: str | None = None):
        self.state = os.path.abspath(state or state_dir())
        self.cache = cache_dir()
        self.uml_root = uml_root or os.path.join(self.cache, "uml")
        self.meta_path = os.path.join(self.state, "lab.json")

    @property
    def time_factor(self) -> float:
        """How much slower guest work is than on UML or KVM: 3 under qemu TCG (emulated CPU), else 1.
        Tests scale their wall-clock bounds by it (what they assert about behaviour does not change)."""
        eng = self.engine()
        return 3.0 if eng is not None and eng.name == "qemu" and eng.accel == "tcg" else 1.0

    def engine(self) -> engines.Engine | None:
        """The engine the lab runs on (from its state), or None when no lab was built."""
        m = self.meta()
        return engines.Engine.from_dict(m.get("engine") or {"name": "uml"}) if m else None

    # ---------- paths and facts ----------
    @property
    def ssh_key(self) -> str:
        return os.path.join(self.state, "ssh", "id_ed25519")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.state, "ssh", "known_hosts")

    @property
    def ssh_config(self) -> str:
        return os.path.join(self.state, "ssh", "ssh_config")

    @property
    def app_repo(self) -> str:
        return os.path.join(self.state, "app")

    vip = VIP
    app_port = APP_PORT
    deploy_to = DEPLOY_TO
    memcached = (MEMCACHED_ADDR, MEMCACHED_PORT)
    drbd_service = (DRBD_SERVICE_IP, DRBD_SERVICE_PORT)

    def meta(self) -> dict | None:
        try:
            with open(self.meta_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _save(self, meta: dict) -> None:
        tmp = self.meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, self.meta_path)

    @property
    def web_count(self) -> int:
        m = self.meta()
        return m["web"] if m else 0

    @property
    def lb_shape(self) -> str:
        """How the running lab balances its web hosts: ipvsadm, keepalived, dr or haproxy."""
        return (self.meta() or {}).get("lb", DEFAULT_LB)

    @property
    def vip_port(self) -> int:
        return vip_port(self.lb_shape)

    @property
    def stage_name(self) -> str:
        """The stage (a file in the repo's stages/) that describes the running lab."""
        return stage_name(self.lb_shape)

    def directors(self) -> list[HostSpec]:
        return [h for h in self.hosts() if "lb" in h.roles]

    def hosts(self) -> list[HostSpec]:
        return topology(self.web_count or 3, self.lb_shape)

    def host(self, name: str) -> HostSpec:
        for h in self.hosts():
            if h.name == name:
                return h
        raise UsageError(f"no lab host named {name!r} (hosts: {', '.join(h.name for h in self.hosts())})")

    def web_hosts(self) -> list[HostSpec]:
        return [h for h in self.hosts() if "web" in h.roles]

    def stage_file(self) -> str:
        """Stage file describing the running lab (the repo's stages/<stage_name>.yaml when web == 3)."""
        return os.path.join(self.state, "stages", f"{self.stage_name}.yaml")

    def host_srv(self, name: str) -> str:
        """Host-side directory that is /srv inside web/ns host `name`."""
        return os.path.join(self.state, "hosts", name, "srv")

    def host_path(self, name: str, path: str) -> str:
        """Where `path` (under /srv) inside namespace host `name` is, seen from the controller:
        host_path("web1", "/srv/labapp/current") -> <state>/hosts/web1/srv/labapp/current."""
        if not (path == "/srv" or path.startswith("/srv/")):
            raise UsageError(f"only paths under /srv are private to a lab host, not {path}")
        return os.path.join(self.host_srv(name), path[len("/srv/"):])

    # ---------- the PXE machine and its BMC ----------
    @property
    def boot_dir(self) -> str:
        """<state>/boot: tftp/, http/ (answers/), callbacks/, dhcp-hosts/, dnsmasq.conf."""
        return boot_dir(self.state)

    @property
    def bmc_password_file(self) -> str:
        """Password of BMC user admin (random per lab, mode 600): ipmitool -E reads $IPMI_PASSWORD."""
        return bmc_password_file(self.state)

    bmc = (BMC_ADDR, BMC_PORT)
    bmc_user = BMC_USER

    def ipmitool(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """`ipmitool -I lanplus -H 127.0.0.1 -p 9623 -U admin -E -C 3 <args>` against the lab BMC
        (password through $IPMI_PASSWORD, never on the command line). Note: `chassis bootdev`
        exits 0 even when it fails: read it back with `chassis bootparam get 5`."""
        with open(self.bmc_password_file) as f:
            env = dict(os.environ, IPMI_PASSWORD=f.read().strip())
        return subprocess.run(["ipmitool", "-I", "lanplus", "-H", BMC_ADDR, "-p", str(BMC_PORT),
                               "-U", BMC_USER, "-E", "-C", "3", *args], capture_output=True,
                              text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)

    def pxe_vm_running(self) -> bool:
        """qemu of the PXE machine is alive (pid file <state>/run/pxe-vm.pid)."""
        return pxe.vm_pid(self.state) is not None

    def pxe_vm_pid(self) -> int | None:
        return pxe.vm_pid(self.state)

    def pxe_vm_console(self) -> str:
        """The VM's serial console since its last power-on (SeaBIOS, iPXE, kernel, installer), or ""."""
        return _read(os.path.join(self.state, "logs", "pxe-vm.console"))

    def dnsmasq_log(self) -> str:
        """boot1's dnsmasq log (DHCP with log-dhcp, TFTP)."""
        return _read(os.path.join(self.state, "logs", "dnsmasq.log"))

    def boot_http_log(self) -> str:
        return _read(os.path.join(self.state, "logs", "boot-http.log"))

    def bmc_status(self) -> dict:
        """{"bmc": "up"|"down", "bmc_pid", "power": "on"|"off", "vm_pid", "bootdev"} (no IPMI
        round trip: from the PIDs and the BMC's boot-device file)."""
        pid = self.pid("bmc.ipmi_sim")
        up = bool(pid) and guests.alive(pid) and pxe.bmc_listening()
        vm = pxe.vm_pid(self.state)
        return {"bmc": "up" if up else "down", "bmc_pid": pid, "power": "on" if vm else "off",
                "vm_pid": vm, "bootdev": _read(os.path.join(self.state, "run", "pxe-bootdev")).strip()}

    def pid(self, key: str) -> int | None:
        m = self.meta() or {}
        return m.get("pids", {}).get(key)

    def running(self) -> bool:
        return self.meta() is not None and SWITCH_NS in net.list_netns()

    # ---------- up ----------
    def up(self, web: int = 3, timeout: float = 60.0, lb: str = DEFAULT_LB) -> dict:
        """Build the lab (idempotent: returns at once if it already runs with `web` web hosts
        balanced the `lb` way: ipvsadm, keepalived, dr or haproxy, see lbshapes.py).

        Returns {"seconds": float, "already_running": bool, "web": int}."""
        require_root()
        if not 1 <= web <= MAX_WEB:
            raise UsageError(f"--web must be between 1 and {MAX_WEB}, not {web}")
        try:
            lbshapes.check_shape(lb)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for tool in lbshapes.PACKAGES.get(lb, ()):
            if not os.access(tool, os.X_OK):
                raise UsageError(f"{tool} is missing (needed by --lb {lb}): run .ci/lab-setup.sh")
        for tool in ("/usr/sbin/sshd", "/usr/sbin/ipvsadm", "/usr/sbin/drbdadm", "/usr/bin/memcached",
                     "/usr/sbin/dnsmasq", "/usr/bin/nsenter", "/usr/bin/git", pxe.QEMU, pxe.IPMI_SIM,
                     "/usr/bin/ipmitool", pxe.BUSYBOX, pxe.DROPBEAR, pxe.DROPBEARKEY, "/usr/bin/cpio",
                     pxe.PYTHON):
            if not os.access(tool, os.X_OK):
                raise UsageError(f"{tool} is missing: run .ci/lab-setup.sh")
        for f in (pxe.PXELINUX, pxe.LDLINUX):
            if not os.path.exists(f):
                raise UsageError(f"{f} is missing: run .ci/lab-setup.sh")
        try:
            pxe.kernel()
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        st = self.state
        if os.path.isdir(st) and os.listdir(st) and not os.path.exists(os.path.join(st, MARKER)):
            raise UsageError(f"{st} exists and is not a dsas lab directory: choose another DSAS_LAB_DIR")
        clash = [ln.split()[1] + " " + ln.split()[3] for ln in
                 net.sh(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines()
                 if " 10.77." in ln and not ln.split()[1].startswith("dsaslab-")]
        if clash:
            raise UsageError(f"this machine already uses 10.77.x.x ({', '.join(clash)}): "
                             "the lab needs that range for itself")
        t0 = time.time()
        m = self.meta()
        forced = os.environ.get("DSAS_LAB_ENGINE", "").strip().lower()
        running = m is not None and self.running() and m.get("complete")
        # before anything is built or checked further: which engine can boot a guest (exit 2 if none)
        eng = None if running else engines.choose(self.uml_root, self.cache)
        if m is None and pxe.bmc_port_busy():
            raise UsageError(f"UDP {BMC_ADDR}:{BMC_PORT} (the lab BMC) is in use by another program")
        if running:
            current = self.engine()
            if m["web"] != web:
                raise UsageError(f"the lab is running with {m['web']} web hosts: "
                                 f"run `dsas lab down` first to change --web")
            if m.get("lb", DEFAULT_LB) != lb:
                raise UsageError(f"the lab is running with --lb {m.get('lb', DEFAULT_LB)}: "
                                 f"run `dsas lab down` first to change --lb")
            if forced and forced != current.name:
                raise UsageError(f"the lab is running on the {current.name} engine, not {forced} "
                                 "(DSAS_LAB_ENGINE): run `dsas lab down` first")
            if self._health_quick():
                self._heal_sshd()
                return {"seconds": time.time() - t0, "already_running": True, "web": web,
                        "engine": current, "restarted": []}
            dead = self._dead_guests()
            if dead and self._health_quick(ignore_guests=True):  # repair: bring back only those
                for name in dead:
                    self.restart(name)
                self._heal_sshd()
                return {"seconds": time.time() - t0, "already_running": True, "web": web,
                        "engine": current, "restarted": dead}
        eng = eng or engines.choose(self.uml_root, self.cache)
        # leftovers (a crashed or half-built lab): clear them first
        if m is not None or net.lab_netns():
            self.down()
        try:
            self._up(web, timeout, eng, lb)
        except BaseException:
            self.down(keep_logs=True)  # the logs stay for a look; the next up/down removes them
            raise
        return {"seconds": time.time() - t0, "already_running": False, "web": web, "engine": eng,
                "restarted": []}

    def _dead_guests(self) -> list[str]:
        pids = (self.meta() or {}).get("pids", {})
        return [h.name for h in self.hosts() if h.kind == "guest" and not guests.alive(pids.get(h.name, -1))]

    def restart(self, name: str, timeout: float = 60.0) -> float:
        """Bring one guest back alone (killed, crashed or frozen): same disk, host key, addresses;
        the director reloads the lab's IPVS table, a DRBD node rejoins r0 (and the lab's primary
        serves again if its peer does not). Namespace hosts get their sshd back. Returns seconds."""
        require_root()
        h = self.host(name)
        m = self.meta()
        if m is None or not self.running():
            raise UsageError("the lab is not running: run `dsas lab up` first")
        t0 = time.time()
        if h.kind != "guest":
            self._heal_sshd()
            return time.time() - t0
        eng = self.engine()
        old = m["pids"].get(name)
        if old and guests.alive(old):
            self._kill({old, *_children(old)})
        if "db" in h.roles:
            try:
                os.unlink(os.path.join(self.state, "run", f"{name}.drbd"))
            except FileNotFoundError:
                pass
        m["pids"][name] = pid = guests.start_guest(h, self.state, eng, self.uml_root, self.cache,
                                                   restart=True)
        self._save(m)
        deadline = time.time() + timeout
        while not ssh_banner(h.address, 22, 1.0):
            if not guests.alive(pid):
                raise LabError(f"{name}: guest died while booting, see {self.state}/logs/{name}.console")
            if time.time() > deadline:
                raise LabError(f"{name}: no SSH {timeout:.0f} s after restart (see {self.state}/logs)")
            time.sleep(0.1)
        if "db" in h.roles:
            marker = os.path.join(self.state, "run", f"{name}.drbd")
            if not hosts.wait_file(marker, max(5.0, deadline - time.time()), pid):
                raise LabError(f"{name}: DRBD did not rejoin, see {self.state}/logs/{name}.drbd.log")
        if "lb" in h.roles and self.lb_shape in ("ipvsadm", "dr"):
            with open(os.path.join(self.state, "run", "lb1.ipvs")) as f:
                if f.read() != ipvs_rules(m["web"], self.lb_shape):
                    raise LabError(f"{name}: the IPVS table is not what the lab set up")
        if "lb" in h.roles and self.lb_shape == "keepalived":
            self.wait_pool(max(5.0, deadline - time.time()), directors=[name])
        return time.time() - t0

    def _health_quick(self, ignore_guests: bool = False) -> bool:
        """Guests and namespace holders alive (sshd may be stopped by a fault: healed instead),
        and the lab has its PXE machine (a lab made by an older dsas is rebuilt)."""
        m = self.meta() or {}
        pids = m.get("pids", {})
        if "bmc.ipmi_sim" not in pids or "boot1.http" not in pids:
            return False
        return all(guests.alive(p) for k, p in pids.items()
                   if ("." not in k and not ignore_guests) or k.endswith(".ns"))

    def _heal_sshd(self) -> None:
        m = self.meta() or {}
        for h in self.hosts():
            pid = m.get("pids", {}).get(f"{h.name}.sshd")
            if h.kind == "ns" and h.ssh and pid and not guests.alive(pid):
                m["pids"][f"{h.name}.sshd"] = hosts.start_sshd(h, self.state, m["pids"][f"{h.name}.ns"])
                self._save(m)
        # the boot server's HTTP and the BMC, if something stopped them
        pid = m.get("pids", {}).get("boot1.http")
        if pid and not guests.alive(pid):
            m["pids"]["boot1.http"] = hosts.start_boot_http(
                self.state, m["pids"]["boot1.ns"], os.path.join(self.state, "bin", "boothttp.py"))
            self._save(m)
        pid = m.get("pids", {}).get("bmc.ipmi_sim")
        if pid and not guests.alive(pid):
            guests.reap(pid)
            m["pids"]["bmc.ipmi_sim"] = new = pxe.start_bmc(self.state)
            self._save(m)
            pxe.wait_bmc(new)

    def _up(self, web: int, timeout: float, eng: engines.Engine, lb: str) -> None:
        st = self.state
        os.makedirs(st, exist_ok=True)
        with open(os.path.join(st, MARKER), "w") as f:
            f.write("this directory belongs to `dsas lab`: `dsas lab down` removes it whole\n")
        for d in ("run", "logs", "hosts", "stages", "guests"):
            os.makedirs(os.path.join(st, d), exist_ok=True)
        topo = topology(web, lb)
        meta = {"web": web, "lb": lb, "pids": {}, "complete": False, "started": time.time(),
                "state": st, "uml_root": self.uml_root, "engine": eng.as_dict(),
                # `ip netns add` makes /run/netns (and a bind mount of it): down undoes that
                "run_netns_existed": os.path.isdir("/run/netns"),
                "run_netns_mounted": _is_mount("/run/netns")}
        self._save(meta)
        pids = meta["pids"]
        by = {h.name: h for h in topo}
        gs = [h for h in topo if h.kind == "guest"]
        nss = [h for h in topo if h.kind == "ns"]

        # guest host keys first (they boot first); the rest while they boot
        hosts.write_ssh_files(st, topo, only=[h.name for h in gs])
        if eng.name == "qemu":
            modroot, disk = qemu.kernel_tree(self.cache)[1], "/dev/vda"
        else:
            modroot, disk = self.uml_root, "/dev/ubda"
        guests.write_guest_files(st, modroot, ipvs_rules(web, lb), "10.77.3.21", "10.77.3.22",
                                 DRBD_SERVICE_IP, DRBD_SERVICE_PORT, DRBD_MOUNT, disk)
        self._write_balancer_files(lb, web)
        # network: switch + root legs + guest taps (+ the PXE VM's), then the guests (slowest) first
        net.switch_up()
        net.guest_taps(gs)
        net.vm_tap(PXE_VM_TAP, PXE_VM_BRIDGE)
        dbs = [h.name for h in gs if "db" in h.roles]
        guests.make_drbd_disks(st, dbs, by[dbs[0]].disk_mb, "lab data written on drbd-a\n")
        # the DRBD pair first: its bring-up is the longest path of `up`
        for h in sorted(gs, key=lambda h: "db" not in h.roles):
            pids[h.name] = guests.start_guest(h, st, eng, self.uml_root, self.cache)
        self._save(meta)

        # files the hosts need, while the guests boot
        hosts.write_ssh_files(st, topo)
        hosts.write_boot_files(st, by["boot1"].netns)
        # the PXE machine: installer initramfs (built once into the cache), TFTP/HTTP roots, the
        # VM's power scripts, the BMC (started now: the VM stays off)
        initrd = pxe.ensure_initramfs()
        meta["initramfs"] = {k: initrd[k] for k in ("size", "built", "kernel")}
        meta["initramfs"]["seconds"] = round(initrd["seconds"], 2)
        pxe.write_boot_files(st, initrd["path"])
        boothttp = pxe.copy_script(st)
        pxe.write_vm_files(st)
        pxe.write_bmc_files(st)
        pids["bmc.ipmi_sim"] = pxe.start_bmc(st)
        self._save(meta)
        for h in nss:
            os.makedirs(self.host_srv(h.name), exist_ok=True)
            if "web" in h.roles:
                shared = self.host_path(h.name, f"{DEPLOY_TO}/shared")
                os.makedirs(shared, exist_ok=True)
                with open(os.path.join(shared, "memcached.addr"), "w") as f:
                    f.write(f"{MEMCACHED_ADDR}:{MEMCACHED_PORT}\n")
        ensure_app_repo(self.app_repo)
        with open(self.stage_file(), "w") as f:
            f.write(stage_yaml(web, lb=lb))

        # namespace hosts
        for h in nss:
            net.host_netns(h)
            if h.extra.get("dr_vip"):
                ip_lines, sysctls = lbshapes.dr_real_server_setup()
                net.ip_batch(ip_lines, h.netns)
                net.sh(["ip", "netns", "exec", h.netns, "sysctl", "-q", "-w", *sysctls])
            if "pxe" in h.roles:  # the lab ULA on br-priv, for dnsmasq's router advertisements
                net.ip_batch([f"addr add {PXE_PRIV_ULA} dev eth2 nodad"], h.netns)
            pids[f"{h.name}.ns"] = hosts.start_holder(h, st)
        for h in nss:
            holder = pids[f"{h.name}.ns"]
            if not hosts.wait_file(os.path.join(st, "run", f"{h.name}.ns"), 10, holder):
                raise LabError(f"{h.name}: namespace setup failed, see {st}/logs/{h.name}.ns.log")
            if h.ssh:
                pids[f"{h.name}.sshd"] = hosts.start_sshd(h, st, holder)
            if "memcached" in h.roles:
                pids[f"{h.name}.memcached"] = hosts.start_memcached(h, st, holder, MEMCACHED_ADDR,
                                                                    MEMCACHED_PORT)
            if "lb" in h.roles and lb == "haproxy":
                pids[f"{h.name}.haproxy"] = hosts.start_haproxy(st, holder)
            if "pxe" in h.roles:
                pids[f"{h.name}.dnsmasq"] = hosts.start_dnsmasq(h, st, holder)
                pids[f"{h.name}.http"] = hosts.start_boot_http(st, holder, boothttp)
        self._save(meta)

        # wait for every sshd (banner), memcached, DRBD bring-up and its service
        deadline = time.time() + timeout
        while True:
            try:
                socket.create_connection((MEMCACHED_ADDR, MEMCACHED_PORT), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise LabError(f"memcached on {MEMCACHED_ADDR}:{MEMCACHED_PORT} does not answer")
                time.sleep(0.05)
        waiting = {h.name: h for h in topo if h.ssh}
        while waiting and time.time() < deadline:
            for name, h in list(waiting.items()):
                if h.kind == "guest" and not guests.alive(pids[name]):
                    raise LabError(f"{name}: guest died while booting, see {st}/logs/{name}.console")
            with ThreadPoolExecutor(16) as ex:
                ok = dict(zip(waiting, ex.map(lambda h: ssh_banner(h.address, 22, 2.0), waiting.values())))
            for name, good in ok.items():
                if good:
                    del waiting[name]
            if waiting:
                time.sleep(0.1)
        if waiting:
            raise LabError(f"no SSH after {timeout:.0f} s from: {', '.join(waiting)} (logs in {st}/logs)")
        if lb in ("ipvsadm", "dr"):
            with open(os.path.join(st, "run", "lb1.ipvs")) as f:
                loaded = f.read()
            if loaded != ipvs_rules(web, lb):
                raise LabError(f"lb1: the IPVS table is not what the lab set up:\n{loaded}")
        drbd_marker = os.path.join(st, "run", "drbd-a.drbd")
        if not hosts.wait_file(drbd_marker, max(5.0, deadline - time.time())):
            raise LabError(f"DRBD bring-up did not finish, see {st}/logs/drbd-a.drbd.log")
        with open(drbd_marker) as f:
            res = f.read().strip()
        if res != "ok":
            raise LabError(f"DRBD bring-up failed on drbd-a: {res} (see {st}/logs/drbd-a.drbd.log)")
        while self.http_get(DRBD_SERVICE_IP, DRBD_SERVICE_PORT, "/hello.txt", timeout=1.0)[0] != 200:
            if time.time() > deadline:
                raise LabError(f"the DRBD service on {DRBD_SERVICE_IP}:{DRBD_SERVICE_PORT} does not answer")
            time.sleep(0.05)
        while self.http_get(BOOT_ADDR, BOOT_HTTP_PORT, "/index.txt", timeout=1.0)[0] != 200:
            if time.time() > deadline:
                raise LabError(f"boot1's HTTP server on :{BOOT_HTTP_PORT} does not answer "
                               f"(see {st}/logs/boot-http.out)")
            time.sleep(0.05)
        if not pxe.wait_bmc(pids["bmc.ipmi_sim"], max(2.0, deadline - time.time())):
            raise LabError(f"the BMC (ipmi_sim) does not listen on {BMC_ADDR}:{BMC_PORT}, "
                           f"see {st}/logs/ipmi_sim.log")
        if lb != DEFAULT_LB:
            # health checks keep a server without a running app out of the pool, and a DR
            # director never sees the refusals: these shapes come up serving v1 everywhere, as a
            # fleet in production does
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda h: self.place_release(h.name, "v1", restart=True),
                            [h for h in topo if "web" in h.roles]))
            self.wait_pool(max(10.0, deadline - time.time()))
        meta["complete"] = True
        meta["up_seconds"] = round(time.time() - meta["started"], 2)
        self._save(meta)

    def _write_balancer_files(self, lb: str, web: int) -> None:
        """keepalived.conf + init hook per director of the VRRP pair, or HAProxy's configuration."""
        def write(rel: str, text: str) -> None:
            path = os.path.join(self.state, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        if lb == "keepalived":
            for name in ("lb1", "lb2"):
                write(f"guests/{name}/rc.sh", lbshapes.KEEPALIVED_RC)
                write(f"guests/{name}/keepalived.conf", lbshapes.keepalived_conf(name, web))
        if lb == "haproxy":
            write("haproxy/haproxy.cfg", lbshapes.haproxy_cfg(web))

    # ---------- the balancers ----------
    def director_weights(self, director: str = "lb1") -> dict[str, int]:
        """Real server -> weight on an IPVS director (`ipvsadm -Sn`)."""
        table = self.run(director, "ipvsadm -Sn", timeout=10).stdout
        return {ln.split()[4]: int(ln.split()[-1]) for ln in table.splitlines() if ln.startswith("-a")}

    def vip_holders(self) -> list[str]:
        """The directors that hold the VIP now (keepalived: the VRRP MASTER; one, unless split)."""
        held = []
        for h in self.directors():
            p = self.run(h.name, f"ip -o -4 addr show to {VIP}/32", timeout=10, check=False)
            if p.returncode == 0 and VIP in p.stdout:
                held.append(h.name)
        return held

    def haproxy_servers(self) -> dict[str, str]:
        """HAProxy server -> status (UP, DOWN, DRAIN, MAINT, ...) of backend web, via the stats socket
        (the same runtime-API builder and parser the HAProxy driver uses)."""
        p = self.run("lb1", "\n".join(haproxy.api_script(HAPROXY_SOCKET, ["show stat"])), timeout=10)
        rows = haproxy.server_rows(haproxy.parse_show_stat(p.stdout), HAPROXY_BACKEND)
        return {name: row.get("status", "") for name, row in rows.items()}

    def wait_pool(self, timeout: float, directors: list[str] | None = None) -> None:
        """Until every web host is in service on the balancers (keepalived: weight 1 on each
        director, one of them holding the VIP; haproxy: UP). LabError after `timeout` seconds."""
        deadline, last = time.time() + timeout, ""
        want = {f"{h.address}:{APP_PORT}" for h in self.web_hosts()}
        while True:
            try:
                if self.lb_shape == "haproxy":
                    status = self.haproxy_servers()
                    last = f"haproxy: {status}"
                    if set(status) == {h.name for h in self.web_hosts()} and all(v == "UP" for v in status.values()):
                        return
                else:
                    names = directors or [h.name for h in self.directors()]
                    tables = {d: self.director_weights(d) for d in names}
                    holders = self.vip_holders() if directors is None else ["-"]
                    last = f"weights {tables}, VIP held by {holders or 'nobody'}"
                    if len(holders) == 1 and all(t == {r: 1 for r in want} for t in tables.values()):
                        return
            except (LabError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            if time.time() > deadline:
                raise LabError(f"the {self.lb_shape} pool is not in service after {timeout:.0f} s: {last} "
                               f"(logs in {self.state}/logs)")
            time.sleep(0.3)

    # ---------- down ----------
    def down(self, keep_logs: bool = False) -> dict:
        """Stop every guest and process (by PID), delete every namespace/veth, remove the state dir.

        Returns {"seconds": float, "removed_state": bool}."""
        require_root()
        t0 = time.time()
        m = self.meta() or {}
        pids = m.get("pids", {})
        # the BMC first (nothing may power the VM on again), then the VM (pid file)
        if pids.get("bmc.ipmi_sim"):
            self._kill({pids["bmc.ipmi_sim"]})
        pxe.stop_vm(self.state)
        net.del_link(PXE_VM_TAP)
        guest_pids = {k: v for k, v in pids.items() if "." not in k}
        if guest_pids:
            guests.stop_guests(self.state, guest_pids, engine=(m.get("engine") or {}).get("name", "uml"))
        # every process in the lab's namespaces (holders, sshd + sessions, app, memcached,
        # dnsmasq, UML helpers), plus the PIDs recorded
        victims = set(v for k, v in pids.items() if "." in k)
        for ns in net.lab_netns():
            victims.update(net.netns_pids(ns))
        victims.discard(os.getpid())
        self._kill(victims)
        net.delete_netns(net.lab_netns())
        if m and not m.get("run_netns_mounted", True) and _is_mount("/run/netns") \
                and not os.listdir("/run/netns"):
            subprocess.run(["umount", "/run/netns"], check=False)
            if not m.get("run_netns_existed", True):
                try:
                    os.rmdir("/run/netns")
                except OSError:
                    pass
        removed = self._remove_state(keep_logs)
        return {"seconds": time.time() - t0, "removed_state": removed}

    @staticmethod
    def _kill(pids: set[int]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = [p for p in pids if guests.alive(p)]
            for p in live:
                try:
                    os.kill(p, signal.SIGCONT)
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            t = time.time() + 2.0
            while time.time() < t and any(guests.alive(p) for p in live):
                for p in live:
                    guests.reap(p)
                time.sleep(0.02)
        for p in pids:
            guests.reap(p)

    def _remove_state(self, keep_logs: bool = False) -> bool:
        st = self.state
        if not os.path.isdir(st):
            return False
        # the lab made everything in here; never rm a directory that `up` did not mark as its own
        if st.rstrip("/").count("/") < 2 or not os.path.exists(os.path.join(st, MARKER)):
            return False
        # a mount below the state dir would be a leftover from a guest: never recurse into it
        with open("/proc/self/mounts") as f:
            mounted = [line.split()[1] for line in f if line.split()[1].startswith(st + "/")]
        if mounted:
            raise LabError(f"mounts left below {st}: {', '.join(mounted)}")
        if keep_logs:
            for entry in os.listdir(st):
                if entry not in ("logs", MARKER):
                    subprocess.run(["rm", "-rf", "--one-file-system", os.path.join(st, entry)], check=False)
            return True
        subprocess.run(["rm", "-rf", "--one-file-system", st], check=False)
        return True

    # ---------- status / ssh ----------
    def status(self) -> list[HostStatus]:
        m = self.meta()
        if m is None:
            return []
        pids = m.get("pids", {})
        out = []
        with ThreadPoolExecutor(16) as ex:
            topo = topology(m["web"], m.get("lb", DEFAULT_LB))
            banners = list(ex.map(lambda h: ssh_banner(h.address, 22, 3.0) if h.ssh else None, topo))
        for h, ssh_ok in zip(topo, banners):
            if h.kind == "guest":
                proc = guests.alive(pids.get(h.name, -1))
                up = proc and bool(ssh_ok)
                eng = (m.get("engine") or {}).get("name", "uml")
                detail = f"{eng} pid {pids.get(h.name)}" + ("" if proc else " (gone)")
            else:
                proc = guests.alive(pids.get(f"{h.name}.ns", -1))
                up = proc and (ssh_ok if h.ssh else True)
                detail = "netns " + h.netns
            if h.ssh and not ssh_ok:
                detail += ", no SSH"
            out.append(HostStatus(h.name, h.kind, h.address, h.roles, bool(up), detail))
        return out

    def ssh_argv(self, host: str, cmd: str | None = None, tty: bool = False) -> list[str]:
        h = self.host(host)
        argv = ["ssh", "-F", self.ssh_config]
        if tty:
            argv.append("-t")
        argv.append(h.name)
        if cmd:
            argv.append(cmd)
        return argv

    def run(self, host: str, cmd: str, timeout: float = 30.0, check: bool = True
            ) -> subprocess.CompletedProcess:
        """Run `cmd` on lab host `host` over SSH (pinned host key, lab key); return the result."""
        p = subprocess.run(self.ssh_argv(host, cmd), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise LabError(f"{host}: `{cmd}` exit {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
        return p

    def exec_in(self, host: str, argv: list[str], timeout: float = 30.0, check: bool = False
                ) -> subprocess.CompletedProcess:
        """Run argv inside a namespace host (netns + mount ns) without SSH (e.g. 'client')."""
        h = self.host(host)
        if h.kind != "ns":
            raise UsageError(f"{host} is a guest: use run()")
        holder = self.pid(f"{h.name}.ns")
        return subprocess.run(hosts.nsenter(holder) + argv, capture_output=True, text=True,
                              timeout=timeout, check=check, stdin=subprocess.DEVNULL)

    def client_get(self, path: str = "/", timeout: float = 3.0, addr: str | None = None,
                   port: int | None = None) -> tuple[int, dict, str]:
        """One HTTP GET from the client namespace to the VIP (or addr:port). (status, headers, body)."""
        url = f"http://{addr or VIP}:{port or self.vip_port}{path}"
        p = self.exec_in("client", ["curl", "-s", "-i", "-m", str(timeout), url], timeout=timeout + 5)
        if p.returncode != 0:
            return 0, {}, f"curl exit {p.returncode}"
        head, _, body = p.stdout.replace("\r\n", "\n").partition("\n\n")
        lines = head.split("\n")
        code = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return code, hdrs, body

    def client_load(self, n: int = 30, path: str = "/", timeout: float = 3.0) -> dict[str, int]:
        """n sequential GETs from the client namespace to the VIP -> {host or 'ERROR ...': count}.

        Runs one python process inside the client namespace (bounded count)."""
        code = (
            "import socket,sys,collections\n"
            "c=collections.Counter()\n"
            f"for _ in range({int(n)}):\n"
            "  try:\n"
            f"    s=socket.create_connection(({VIP!r},{self.vip_port}),timeout={timeout})\n"
            f"    s.sendall(b'GET {path} HTTP/1.0\\r\\n\\r\\n'); d=b''\n"
            "    while True:\n"
            "      x=s.recv(65536)\n"
            "      if not x: break\n"
            "      d+=x\n"
            "    s.close(); h=[l for l in d.split(b'\\r\\n') if l.lower().startswith(b'x-host:')]\n"
            "    c[h[0].split(b':',1)[1].strip().decode() if h else 'ERROR no X-Host']+=1\n"
            "  except Exception as e: c['ERROR '+type(e).__name__]+=1\n"
            "import json; print(json.dumps(c))\n")
        p = self.exec_in("client", ["python3", "-c", code], timeout=n * (timeout + 1) + 10)
        return json.loads(p.stdout)

    def place_release(self, host: str, ref: str = "v2", release_id: str = "20240101000000",
                      restart: bool = True) -> str:
        """Put `ref` of the sample repo as releases/<release_id> on a web host by hand, switch
        `current` to it (rename) and run `sh bin/restart` there. Returns the restart output.
        (What a deploy does, minus everything dsas adds; for lab tests.)"""
        d = DEPLOY_TO
        script = (f"set -e; mkdir -p {d}/releases {d}/shared; rm -rf {d}/releases/{release_id}; "
                  f"mkdir {d}/releases/{release_id}; tar -x -C {d}/releases/{release_id}; "
                  f"ln -s releases/{release_id} {d}/releases/current; mv {d}/releases/current {d}/; "
                  + (f"cd {d}/current && sh bin/restart" if restart else "true"))
        archive = subprocess.run(["git", "-C", self.app_repo, "archive", ref], capture_output=True,
                                 check=True).stdout
        p = subprocess.run(self.ssh_argv(host, script), input=archive, capture_output=True, timeout=30)
        if p.returncode:
            raise LabError(f"{host}: placing release {ref} failed: {p.stderr.decode().strip()}")
        return p.stdout.decode()

    def http_get(self, addr: str, port: int = APP_PORT, path: str = "/", timeout: float = 3.0
                 ) -> tuple[int, dict, str]:
        """One HTTP GET from the controller (root namespace), no proxies. (status, headers, body);
        status 0 and the error text as body when the connection fails."""
        import http.client
        try:
            c = http.client.HTTPConnection(addr, port, timeout=timeout)
            c.request("GET", path)
            r = c.getresponse()
            body = r.read().decode(errors="replace")
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            c.close()
            return r.status, hdrs, body
        except (OSError, http.client.HTTPException) as e:
            return 0, {}, f"{type(e).__name__}: {e}"

    def wait_app(self, host: str, timeout: float = 15.0, path: str = "/health",
                 status: int = 200) -> float:
        """Wait until the web host's app answers `path` with `status`; return seconds waited."""
        h = self.host(host)
        t0 = time.time()
        while True:
            code, _, body = self.http_get(h.address, APP_PORT, path, timeout=1.0)
            if code == status:
                return time.time() - t0
            if time.time() - t0 > timeout:
                raise LabError(f"{host}: {path} did not answer {status} within {timeout:.0f} s "
                               f"(last: {code} {body.strip()[:80]})")
            time.sleep(0.1)

    def dhcp_discover(self, mac: str = "", timeout: float = 5.0, host: str = "client",
                      iface: str = "eth1") -> dict:
        """Send one DHCPDISCOVER (broadcast flag set) from a namespace host's NIC (default: the
        client's br-boot NIC eth1; its own MAC unless `mac` is given); return the offer
        ({"yiaddr", "server", "file"}) or {} when nothing answered. E.g. host="web1",
        iface="eth0" probes br-priv, where boot1 answers reserved MACs only."""
        p = self.exec_in(host, ["python3", "-c", DHCP_PROBE, mac, str(timeout), iface],
                         timeout=timeout + 10)
        if p.returncode:
            raise LabError(f"DHCP probe in {host} failed: {p.stderr.strip()[-300:]}")
        return json.loads(p.stdout or "{}")

    def ipvs(self) -> str:
        """`ipvsadm -Ln` on the director."""
        return self.run("lb1", "ipvsadm -Ln").stdout

    def memory(self) -> dict:
        """Memory of the lab's processes: anonymous RSS of every process in its namespaces
        (UML guest RAM is a shared file in /dev/shm: counted by host Shmem, reported too), KiB.
        For a faithful total, compare host MemAvailable before `up` and after (see bench)."""
        rss = 0
        for ns in net.lab_netns():
            for pid in net.netns_pids(ns):
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("RssAnon:"):
                                rss += int(line.split()[1])
                except OSError:
                    pass
        return {"rss_anon_kib": rss, **meminfo()}


DHCP_PROBE = r"""
import json, os, socket, struct, sys, time
dev = sys.argv[3] if len(sys.argv) > 3 else "eth1"
mac = sys.argv[1] or open(f"/sys/class/net/{dev}/address").read().strip()
mac = bytes.fromhex(mac.replace(":", "")); timeout = float(sys.argv[2])
xid = os.urandom(4)
pkt = struct.pack("!BBBB4sHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0"*4, b"\0"*4,
                  b"\0"*4, b"\0"*4, mac + b"\0"*10, b"\0"*64, b"\0"*128)
pkt += b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\x37\x03\x01\x03\x43" + b"\xff"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
s.bind(("0.0.0.0", 68))
# the interface has no IPv4 address: read the (broadcast) offer at layer 2, as DHCP clients do
r = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
r.bind((dev, 0)); r.settimeout(timeout)
s.sendto(pkt, ("255.255.255.255", 67))
end = time.time() + timeout
while time.time() < end:
    try:
        frame = r.recv(4096)
    except socket.timeout:
        break
    ip = frame[14:]
    if ip[9] != 17:
        continue
    udp = ip[(ip[0] & 15) * 4:]
    if struct.unpack("!H", udp[2:4])[0] != 68:
        continue
    data = udp[8:]
    if data[4:8] != xid:
        continue
    opts, i, server, bootfile = data[240:], 0, "", ""
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1; continue
        code, ln = opts[i], opts[i + 1]
        if code == 54:
            server = socket.inet_ntoa(opts[i + 2:i + 6])
        if code == 67:
            bootfile = opts[i + 2:i + 2 + ln].rstrip(b"\0").decode()
        i += 2 + ln
    print(json.dumps({"yiaddr": socket.inet_ntoa(data[16:20]), "server": server,
                      "file": data[108:236].rstrip(b"\0").decode() or bootfile}))
    break
"""


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _is_mount(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def meminfo() -> dict:
    with open("/proc/meminfo") as f:
        mi = {ln.split(":")[0]: int(ln.split()[1]) for ln in f}
    return {"host_shmem_kib": mi.get("Shmem", 0), "host_available_kib": mi.get("MemAvailable", 0)}


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    for k in list(kids):
        kids += _children(k)
    return kids


def shell_quote(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)

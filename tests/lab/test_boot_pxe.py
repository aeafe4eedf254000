"""The lab's PXE machine, against real things: ipmi_sim + ipmitool lanplus, dnsmasq DHCP/TFTP,
pxelinux, a Debian kernel and the lab installer in a qemu VM (TCG), dropbear, boot1's HTTP server.

This file sorts before test_lab.py, whose last test takes the lab down. The full boot costs
~20-25 s; everything else here is cheap.
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import stat
import subprocess
import time

import paramiko
import pytest

from dsasdeploy.lab import Lab, topology
from dsasdeploy.lab.topology import (BMC_ADDR, BMC_PORT, BMC_USER, BOOT_HTTP_PORT, PXE_PRIV_ADDR,
                                     PXE_VM_IP, PXE_VM_MAC)

pytestmark = pytest.mark.lab
HOST = "pxetest1"  # the installed machine's name in this test
BOOT_TIMEOUT = 150.0  # TCG on a busy 2-core machine: usually ~20 s


def ipmitool(lab: Lab, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    """The exact command line a recipe would use; the password only in $IPMI_PASSWORD."""
    if password is None:
        with open(lab.bmc_password_file) as f:
            password = f.read().strip()
    return subprocess.run(["ipmitool", "-I", "lanplus", "-H", BMC_ADDR, "-p", str(BMC_PORT),
                           "-U", BMC_USER, "-E", "-C", "3", *args], capture_output=True, text=True,
                          env=dict(os.environ, IPMI_PASSWORD=password), timeout=30,
                          stdin=subprocess.DEVNULL)


def dnsmasq_reload(lab: Lab) -> None:
    """SIGHUP: dnsmasq forgets dhcp-hostsdir entries whose files were removed."""
    with open(os.path.join(lab.state, "run", "dnsmasq.pid")) as f:
        os.kill(int(f.read().strip()), signal.SIGHUP)


def raw_http(method: str, path: str, body: bytes | None = None, headers: dict | None = None
             ) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(topology.BOOT_ADDR, BOOT_HTTP_PORT, timeout=5)
    c.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        c.putheader(k, v)
    if body is not None and "Content-Length" not in (headers or {}):
        c.putheader("Content-Length", str(len(body)))
    c.endheaders(body)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def test_bmc_sets_boot_device_pxe_and_the_vm_is_off(lab):
    st = os.stat(lab.bmc_password_file)
    assert stat.S_IMODE(st.st_mode) == 0o600
    with open(lab.bmc_password_file) as f:
        password = f.read().strip()
    assert len(password) >= 12
    # never on a command line: not ipmi_sim's
    with open(f"/proc/{lab.pid('bmc.ipmi_sim')}/cmdline", "rb") as f:
        assert password.encode() not in f.read()
    assert lab.bmc_status()["bmc"] == "up"
    assert not lab.pxe_vm_running()
    assert ipmitool(lab, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
    p = ipmitool(lab, "chassis", "bootdev", "pxe")
    assert p.returncode == 0 and "Set Boot Device to pxe" in p.stdout, p.stdout + p.stderr
    p = ipmitool(lab, "chassis", "bootparam", "get", "5")
    assert p.returncode == 0 and "Boot Device Selector : Force PXE" in p.stdout, p.stdout + p.stderr
    # ... and back (ipmitool's "disk" is the BMC's "default")
    ipmitool(lab, "chassis", "bootdev", "disk")
    assert "Force Boot from default Hard-Drive" in ipmitool(lab, "chassis", "bootparam", "get", "5").stdout
    # a wrong password gets no session
    p = ipmitool(lab, "chassis", "power", "status", password="not-the-password")
    assert p.returncode != 0 and "Chassis Power" not in p.stdout


def test_boot_http_serves_files_and_stores_callbacks(lab):
    token = "t" + secrets.token_hex(10)
    spooled = os.path.join(topology.callback_dir(lab.state), token)
    answer = os.path.join(topology.answers_dir(lab.state), f"{token}.sh")
    try:
        with open(answer, "w") as f:
            f.write("HOSTNAME='x'\n")
        assert raw_http("GET", f"/answers/{token}.sh") == (200, b"HOSTNAME='x'\n")
        assert raw_http("GET", "/")[0] == 404  # no directory listing
        assert raw_http("GET", "/answers/")[0] == 404
        assert raw_http("GET", "/../dnsmasq.conf")[0] == 404  # no way out of the root
        assert raw_http("GET", "/%2e%2e/dnsmasq.conf")[0] == 404
        assert raw_http("GET", "/nope")[0] == 404
        assert raw_http("POST", "/callback/short", b"x")[0] == 400
        assert raw_http("POST", "/callback/" + "a" * 65, b"x")[0] == 400
        assert raw_http("POST", f"/callback/{token}", b"x" * (8 * 1024 + 1))[0] == 400
        assert raw_http("POST", f"/elsewhere/{token}", b"x")[0] == 404
        assert not os.path.exists(spooled)
        body = b"token=%s\nmac=52:54:00:00:00:01\n" % token.encode()
        assert raw_http("POST", f"/callback/{token}", body, {"Content-Type": "text/plain"}) == (200, b"ok")
        with open(spooled, "rb") as f:
            assert f.read() == body
        assert f"POST '/callback/{token}' 200" in lab.boot_http_log()
    finally:
        for p in (spooled, answer):
            if os.path.exists(p):
                os.unlink(p)


def test_br_priv_dhcp_answers_reserved_macs_only(lab):
    """An unknown MAC on br-priv gets nothing (dnsmasq logs it as ignored); a MAC with a
    dhcp-hostsdir file (picked up without a restart) gets its address."""
    unknown, known = "52:54:00:77:02:f1", "52:54:00:77:02:f2"
    entry = os.path.join(topology.dhcp_hosts_dir(lab.state), "pxetest-probe")
    assert lab.dhcp_discover(mac=unknown, timeout=1.5, host="web1", iface="eth0") == {}
    assert f"DHCPDISCOVER(eth2) {unknown} ignored" in lab.dnsmasq_log()
    try:
        with open(entry, "w") as f:
            f.write(f"{known},10.77.2.201,pxetest-probe\n")
        t0 = time.time()
        while True:
            offer = lab.dhcp_discover(mac=known, timeout=1.0, host="web1", iface="eth0")
            if offer or time.time() - t0 > 5:
                break
        assert offer == {"yiaddr": "10.77.2.201", "server": PXE_PRIV_ADDR, "file": "pxelinux.0"}
    finally:
        os.unlink(entry)
        dnsmasq_reload(lab)


def _ssh(address: str, known_hosts: str, key: str, timeout: float) -> paramiko.SSHClient:
    deadline = time.time() + timeout
    while True:
        c = paramiko.SSHClient()
        c.load_host_keys(known_hosts)
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            c.connect(address, username="root", key_filename=key, look_for_keys=False,
                      allow_agent=False, timeout=3, banner_timeout=5, auth_timeout=5)
            return c
        except (OSError, paramiko.SSHException):
            c.close()
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def _remote(c: paramiko.SSHClient, cmd: str) -> str:
    _, out, err = c.exec_command(cmd, timeout=30)
    text = out.read().decode()
    assert out.channel.recv_exit_status() == 0, f"{cmd}: {err.read().decode()}"
    return text


def test_pxe_install_through_the_bmc(lab, tmp_path):
    token = "pxetest" + secrets.token_hex(8)
    mac_dashes = PXE_VM_MAC.replace(":", "-")
    answer_url = f"http://{PXE_PRIV_ADDR}:{BOOT_HTTP_PORT}/answers/{HOST}.sh"
    per_mac = os.path.join(topology.tftp_root(lab.state), "pxelinux.cfg", f"01-{mac_dashes}")
    answer = os.path.join(topology.answers_dir(lab.state), f"{HOST}.sh")
    dhcp = os.path.join(topology.dhcp_hosts_dir(lab.state), HOST)
    spooled = os.path.join(topology.callback_dir(lab.state), token)
    with open(lab.ssh_key + ".pub") as f:
        pub = f.read().strip()
    dnsmasq_reload(lab)  # forget reservations of files an earlier test removed (same MAC)
    try:
        # what add-server writes: per-MAC pxelinux file, answer file, DHCP reservation
        with open(per_mac, "w") as f:
            f.write("DEFAULT install\nPROMPT 0\nTIMEOUT 0\nLABEL install\n  KERNEL vmlinuz\n"
                    f"  APPEND initrd=initrd.img console=ttyS0 panic=-1 dsas.answers={answer_url}\n"
                    "  IPAPPEND 2\n")
        with open(answer, "w") as f:
            f.write(f"# answer file of the lab installer (test)\nHOSTNAME='{HOST}'\nIP='{PXE_VM_IP}'\n"
                    f"PREFIX='24'\nGATEWAY='{topology.DIRECTOR_PRIV}'\nSSH_AUTHORIZED_KEY='{pub}'\n"
                    f"CALLBACK_URL='http://{PXE_PRIV_ADDR}:{BOOT_HTTP_PORT}/callback/{token}'\n"
                    f"CALLBACK_TOKEN='{token}'\nSOMETHING_ELSE='ignored by the installer'\n")
        with open(dhcp, "w") as f:
            f.write(f"{PXE_VM_MAC},{PXE_VM_IP},{HOST}\n")

        p = ipmitool(lab, "chassis", "bootdev", "pxe")
        assert "Set Boot Device to pxe" in p.stdout, p.stdout + p.stderr
        assert not lab.pxe_vm_running()
        t0 = time.time()
        p = ipmitool(lab, "chassis", "power", "on")
        assert p.returncode == 0 and "Up/On" in p.stdout, p.stdout + p.stderr
        assert lab.pxe_vm_running()
        assert ipmitool(lab, "chassis", "power", "status").stdout.strip() == "Chassis Power is on"

        while not os.path.exists(spooled):
            assert lab.pxe_vm_running(), "the VM stopped:\n" + lab.pxe_vm_console()[-3000:]
            assert time.time() - t0 < BOOT_TIMEOUT, \
                "no callback; console tail:\n" + lab.pxe_vm_console()[-3000:]
            time.sleep(0.1)
        t_callback = time.time() - t0
        with open(spooled) as f:
            fields = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
        assert fields["token"] == token and fields["mac"] == PXE_VM_MAC
        assert fields["hostname"] == HOST and fields["ip"] == PXE_VM_IP
        assert fields["hostkey"].startswith("ssh-ed25519 AAAA"), fields

        kt, kb = fields["hostkey"].split()[:2]
        known = tmp_path / "known_hosts"
        known.write_text(f"{PXE_VM_IP} {kt} {kb}\n")
        c = _ssh(PXE_VM_IP, str(known), lab.ssh_key, 30)
        try:
            t_ssh = time.time() - t0
            assert _remote(c, "hostname").strip() == HOST
            assert _remote(c, "python3 -c 'print(1)'") == "1\n"
            cmdline = _remote(c, "cat /proc/cmdline")
            assert f"BOOTIF=01-{mac_dashes}" in cmdline and f"dsas.answers={answer_url}" in cmdline
            assert f"inet {PXE_VM_IP}/24" in _remote(c, "ip -4 addr show")
            assert f"default via {topology.DIRECTOR_PRIV}" in _remote(c, "ip route")
            assert _remote(c, "test -d /srv && test -w /srv && which env python3").split() == \
                ["/usr/bin/env", "/usr/bin/python3"]
        finally:
            c.close()
        rss_kib = _vm_rss(lab)
        console = lab.pxe_vm_console()
        assert "callback accepted" in console and "ready:" in console
        log = lab.dnsmasq_log()
        assert f"sent {topology.tftp_root(lab.state)}/pxelinux.cfg/01-{mac_dashes} to {PXE_VM_IP}" in log
        assert f"DHCPACK(eth2) {PXE_VM_IP} {PXE_VM_MAC}" in log

        t1 = time.time()
        p = ipmitool(lab, "chassis", "power", "off")
        assert p.returncode == 0 and "Down/Off" in p.stdout, p.stdout + p.stderr
        while lab.pxe_vm_running():
            assert time.time() - t1 < 10, "the VM is still running after power off"
            time.sleep(0.05)
        t_off = time.time() - t1
        assert ipmitool(lab, "chassis", "power", "status").stdout.strip() == "Chassis Power is off"
        size = os.path.getsize(os.path.join(topology.tftp_root(lab.state), "initrd.img"))
        print(f"\n[pxe] power on -> callback {t_callback:.1f} s, -> SSH login {t_ssh:.1f} s; "
              f"power off {t_off:.2f} s; initramfs {size / 1e6:.1f} MB; "
              f"qemu RSS {rss_kib[0] / 1024:.0f} MiB (peak {rss_kib[1] / 1024:.0f} MiB)")
    finally:
        if lab.pxe_vm_running():
            ipmitool(lab, "chassis", "power", "off")
        ipmitool(lab, "chassis", "bootdev", "disk")
        for path in (per_mac, answer, dhcp, spooled):
            if os.path.exists(path):
                os.unlink(path)
        dnsmasq_reload(lab)


def _vm_rss(lab: Lab) -> tuple[int, int]:
    """(VmRSS, VmHWM) of qemu in KiB."""
    vals = {}
    with open(f"/proc/{lab.pxe_vm_pid()}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0])
    return vals["VmRSS"], vals["VmHWM"]

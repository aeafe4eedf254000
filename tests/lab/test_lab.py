"""The lab itself, against real things: sshd, IPVS in a guest (UML or qemu), DRBD 8.4, memcached, dnsmasq.

Order matters a little: the last test takes the lab down and checks nothing is left.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time

import paramiko
import pytest

from dsasdeploy.lab import Lab, faults, topology
from dsasdeploy.lab.lab import ipvs_rules, meminfo

pytestmark = pytest.mark.lab
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RS_ROW = re.compile(r"^\s+->\s+(\S+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)", re.M)


def ssh_client(lab: Lab, address: str, port: int = 22, timeout: float = 5.0) -> paramiko.SSHClient:
    c = paramiko.SSHClient()
    c.load_host_keys(lab.known_hosts)
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(address, port=port, username="root", key_filename=lab.ssh_key, look_for_keys=False,
              allow_agent=False, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout)
    return c


def remote(c: paramiko.SSHClient, cmd: str) -> str:
    _, out, err = c.exec_command(cmd, timeout=20)
    text = out.read().decode()
    assert out.channel.recv_exit_status() == 0, err.read().decode()
    return text


def stage_hosts(text: str) -> list[dict]:
    import yaml
    return yaml.safe_load(text)["hosts"]


def test_stage_file_describes_the_lab(lab):
    with open(os.path.join(REPO, "stages", "lab.yaml")) as f:
        repo_stage = f.read()
    assert repo_stage == topology.stage_yaml(3)
    with open(lab.stage_file()) as f:
        assert f.read() == repo_stage
    hosts = stage_hosts(repo_stage)
    assert [h["name"] for h in hosts if h["roles"] == ["web"]] == ["web1", "web2", "web3"]
    assert {k for h in hosts for k in h} <= {"name", "address", "port", "roles", "primary"}
    assert sum(1 for h in hosts if h.get("primary")) == 1


def test_every_host_answers_ssh_with_its_pinned_key(lab):
    with open(lab.stage_file()) as f:
        hosts = stage_hosts(f.read())
    for h in hosts:
        c = ssh_client(lab, h["address"], h.get("port", 22))
        try:
            assert remote(c, "hostname").strip() == h["name"]
        finally:
            c.close()
    # the same host with an empty known_hosts is refused (RejectPolicy), i.e. the key is checked
    c = paramiko.SSHClient()
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        c.connect(hosts[0]["address"], username="root", key_filename=lab.ssh_key,
                  look_for_keys=False, allow_agent=False, timeout=5)
    c.close()


def test_web_hosts_have_private_srv_behind_the_same_path(lab):
    for h in lab.web_hosts():
        with open(os.path.join(lab.host_srv(h.name), "marker"), "w") as f:
            f.write(h.name)
    for h in lab.web_hosts():
        assert lab.run(h.name, "cat /srv/marker").stdout == h.name
        os.unlink(os.path.join(lab.host_srv(h.name), "marker"))
    # and the host's own /srv was not touched
    assert not os.path.exists("/srv/marker")


def test_ipvs_lists_web_hosts_as_masq_real_servers(lab):
    out = lab.ipvs()
    assert f"TCP  {lab.vip}:{lab.vip_port} wrr" in out
    rows = {m[1]: (m[2], int(m[3])) for m in RS_ROW.finditer(out)}
    assert rows == {f"{h.address}:{lab.app_port}": ("Masq", 1) for h in lab.web_hosts()}


def test_vip_reaches_every_web_host_after_a_release(lab):
    for h in lab.web_hosts():
        out = lab.place_release(h.name, "v2", "20240101000000")
        assert "labapp restarted: release 20240101000000" in out
    for h in lab.web_hosts():
        lab.wait_app(h.name, timeout=15)
        code, hdrs, body = lab.http_get(h.address, lab.app_port, "/")
        assert code == 200 and hdrs["x-release"] == "20240101000000" and hdrs["x-host"] == h.name
        assert f"served-by={h.name} release=20240101000000" in body
    counts = lab.client_load(30)
    assert counts == {h.name: 10 for h in lab.web_hosts()}, counts
    code, hdrs, _ = lab.client_get("/")
    assert code == 200 and hdrs["x-release"] == "20240101000000"


def test_weight_0_with_method_restated_moves_new_requests_away(lab):
    vip = f"{lab.vip}:{lab.vip_port}"
    rs = f"{lab.host('web1').address}:{lab.app_port}"
    lab.run("lb1", f"ipvsadm -e -t {vip} -r {rs} -m -w 0")
    try:
        rows = {m[1]: (m[2], int(m[3])) for m in RS_ROW.finditer(lab.ipvs())}
        assert rows[rs] == ("Masq", 0)
        counts = lab.client_load(20)
        assert "web1" not in counts and sum(counts.values()) == 20, counts
        assert not any(k.startswith("ERROR") for k in counts), counts
    finally:
        lab.run("lb1", f"ipvsadm -e -t {vip} -r {rs} -m -w 1")
    assert "web1" in lab.client_load(6)


def test_memcached_is_a_real_page_cache(lab):
    with socket.create_connection(lab.memcached, timeout=3) as s:
        s.sendall(b"version\r\n")
        assert s.recv(100).startswith(b"VERSION 1.6")
    web2 = lab.host("web2").address
    lab.http_get(web2, lab.app_port, "/cached-page")
    code, hdrs, _ = lab.http_get(web2, lab.app_port, "/cached-page")
    assert code == 200 and hdrs["x-cache"] == "HIT"
    faults.memcached_unreachable(lab)
    try:
        code, hdrs, _ = lab.http_get(web2, lab.app_port, "/other-page", timeout=5)
        assert code == 200 and hdrs["x-cache"] == "NOCACHE"
    finally:
        faults.memcached_reachable(lab)
    code, hdrs, _ = lab.http_get(web2, lab.app_port, "/cached-page")
    assert hdrs["x-cache"] == "HIT"


def test_drbd_pair_is_primary_secondary_uptodate(lab):
    def state(host):
        out = lab.run(host, "drbdadm role r0; drbdadm cstate r0; drbdadm dstate r0").stdout.split()
        return out
    assert state("drbd-a") == ["Primary/Secondary", "Connected", "UpToDate/UpToDate"]
    assert state("drbd-b") == ["Secondary/Primary", "Connected", "UpToDate/UpToDate"]
    # the service on top answers on the service IP, from the mounted DRBD filesystem
    code, _, body = lab.http_get(lab.drbd_service[0], lab.drbd_service[1], "/hello.txt")
    assert code == 200 and body == "lab data written on drbd-a\n"
    assert "/dev/drbd0 /srv/data ext4" in lab.run("drbd-a", "cat /proc/mounts").stdout


def test_drbd_planned_switchover_and_back(lab):
    svc = lab.drbd_service
    for old, new in (("drbd-a", "drbd-b"), ("drbd-b", "drbd-a")):
        t0 = time.time()
        lab.run(old, "drbd-service stop && drbdadm secondary r0")
        lab.run(new, "drbdadm primary r0 && drbd-service start")
        while lab.http_get(*svc, "/hello.txt", timeout=1)[0] != 200:
            assert time.time() - t0 < 15, f"service IP not answering after switch to {new}"
            time.sleep(0.1)
        assert lab.run(new, "drbdadm role r0").stdout.strip() == "Primary/Secondary"
        assert lab.run(new, "hostname").stdout.strip() == new
    # a second primary is refused while connected
    p = lab.run("drbd-b", "drbdadm primary r0", check=False)
    assert p.returncode == 11 and "Multiple primaries not allowed" in p.stderr + p.stdout


def test_tftp_file_from_the_boot_server_matches(lab):
    p = subprocess.run(["curl", "-q", "-s", "--noproxy", "*", "-m", "5",
                        f"tftp://{topology.BOOT_ADDR}/hello.txt"], capture_output=True)
    with open(os.path.join(lab.state, "boot", "tftp", "hello.txt"), "rb") as f:
        assert p.returncode == 0 and p.stdout == f.read()
    assert "dnsmasq" in lab.run("boot1", "cat /proc/$(cat %s/run/dnsmasq.pid)/comm" % lab.state).stdout


def test_dhcp_offer_from_the_boot_server(lab):
    offer = lab.dhcp_discover()
    assert offer["server"] == topology.BOOT_NET_ADDR
    assert offer["yiaddr"].startswith("10.77.4.") and offer["file"] == "pxelinux.0"


def test_frozen_sshd_times_out_and_thaw_restores(lab):
    addr = lab.host("web2").address
    faults.freeze_sshd(lab, "web2")
    try:
        t0 = time.time()
        with pytest.raises((paramiko.SSHException, socket.timeout, OSError)):
            ssh_client(lab, addr, timeout=1.5)
        assert time.time() - t0 >= 1.0
    finally:
        faults.thaw_sshd(lab, "web2")
    c = ssh_client(lab, addr)
    assert remote(c, "hostname").strip() == "web2"
    c.close()


def test_stopped_sshd_refuses_and_restarts(lab):
    faults.stop_sshd(lab, "web3")
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        ssh_client(lab, lab.host("web3").address, timeout=2)
    faults.start_sshd(lab, "web3")
    assert lab.run("web3", "hostname").stdout.strip() == "web3"


def test_cut_link_and_unhealthy_app(lab):
    w3 = lab.host("web3").address
    faults.cut_link(lab, "web3")
    try:
        code, _, _ = lab.http_get(w3, lab.app_port, "/health", timeout=1)
        assert code == 0
    finally:
        faults.restore_link(lab, "web3")
    lab.wait_app("web3", timeout=5)
    faults.app_unhealthy(lab, "web3")
    assert lab.http_get(w3, lab.app_port, "/health")[0] == 503
    faults.app_healthy(lab, "web3")
    assert lab.http_get(w3, lab.app_port, "/health")[0] == 200


def test_bad_health_release_answers_500(lab):
    lab.place_release("web3", "bad-health", "20240103000000")
    lab.wait_app("web3", status=500, timeout=15)
    code, hdrs, _ = lab.http_get(lab.host("web3").address, lab.app_port, "/")
    assert hdrs.get("x-release") == "20240103000000"
    lab.place_release("web3", "v2", "20240101000000")
    lab.wait_app("web3", timeout=15)


def test_up_again_is_safe(lab):
    t0 = time.time()
    r = lab.up(web=3)
    assert r["already_running"] and time.time() - t0 < 5


def test_frozen_guest_and_thaw(lab):
    faults.freeze_guest(lab, "lb1")
    try:
        assert lab.client_get("/", timeout=1)[0] == 0  # the director forwards nothing
        with pytest.raises((paramiko.SSHException, socket.timeout, OSError)):
            ssh_client(lab, lab.host("lb1").address, timeout=1.5)
    finally:
        faults.thaw_guest(lab, "lb1")
    assert lab.client_get("/")[0] == 200


def test_killed_director_comes_back_alone_through_up(lab):
    """`dsas lab up` repairs a lab whose guest died: only that guest boots again, with its pinned
    host key, and the director serves the lab's virtual service as before."""
    before = {s.name: s for s in lab.status()}
    faults.kill_guest(lab, "lb1")
    assert lab.client_get("/", timeout=1)[0] == 0
    web_pids = {h.name: lab.pid(f"{h.name}.ns") for h in lab.web_hosts()}
    r = lab.up(web=3)
    assert r["restarted"] == ["lb1"] and r["already_running"]
    assert {h.name: lab.pid(f"{h.name}.ns") for h in lab.web_hosts()} == web_pids  # nothing else rebuilt
    c = ssh_client(lab, lab.host("lb1").address)  # RejectPolicy: the same host key or no session
    try:
        table = remote(c, "ipvsadm -Sn")
    finally:
        c.close()
    assert table == ipvs_rules(3)
    assert lab.client_get("/")[0] == 200
    assert [s.up for s in lab.status()] == [before[s.name].up for s in lab.status()]


def test_killed_drbd_node_restarted_alone_rejoins_the_resource(lab):
    faults.kill_guest(lab, "drbd-b")
    t0 = time.time()
    while lab.run("drbd-a", "drbdadm cstate r0").stdout.strip() == "Connected":
        assert time.time() - t0 < 30, "drbd-a never noticed its peer is gone"
        time.sleep(0.3)
    p = subprocess.run([os.sys.executable, "-m", "dsasdeploy", "lab", "restart", "drbd-b"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("drbd-b back in"), p.stdout + p.stderr
    t0 = time.time()
    while True:
        state = {n: (lab.run(n, "drbdadm role r0").stdout.strip(), lab.run(n, "drbdadm cstate r0").stdout.strip(),
                     lab.run(n, "drbdadm dstate r0").stdout.strip()) for n in ("drbd-a", "drbd-b")}
        if state == {"drbd-a": ("Primary/Secondary", "Connected", "UpToDate/UpToDate"),
                     "drbd-b": ("Secondary/Primary", "Connected", "UpToDate/UpToDate")}:
            break
        assert time.time() - t0 < 30, f"drbd-b did not rejoin: {state}"
        time.sleep(0.5)
    assert lab.http_get(*lab.drbd_service, "/hello.txt")[0] == 200
    c = ssh_client(lab, lab.host("drbd-b").address)
    c.close()


def test_killed_drbd_peer_shows_on_the_primary(lab):
    faults.kill_guest(lab, "drbd-b")
    t0 = time.time()
    while lab.run("drbd-a", "drbdadm cstate r0").stdout.strip() == "Connected":
        assert time.time() - t0 < 30, "drbd-a never noticed its peer is gone"
        time.sleep(0.5)
    assert lab.run("drbd-a", "drbdadm dstate r0").stdout.strip() == "UpToDate/DUnknown"
    assert not [s for s in lab.status() if s.name == "drbd-b"][0].up


def test_without_root_one_clear_line():
    p = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", os.sys.executable, "-c",
         "from dsasdeploy.lab import Lab\n"
         "try:\n  Lab('/nonexistent-dsas-lab').up()\n"
         "except Exception as e:\n  print(type(e).__name__, e)"],
        capture_output=True, text=True, cwd=REPO)
    assert p.stdout.startswith("UsageError dsas lab needs root"), p.stdout + p.stderr
    assert p.stdout.count("\n") == 1


def test_zz_down_leaves_nothing(lab):
    meta = lab.meta()
    pids = list(meta["pids"].values())
    for h in lab.web_hosts():  # the app processes the releases started
        try:
            with open(os.path.join(lab.host_srv(h.name), "labapp/shared/labapp.pid")) as f:
                pids.append(int(f.read()))
        except OSError:
            pass
    mem_before = meminfo()["host_available_kib"]
    r = lab.down()
    print(f"\n[lab] down in {r['seconds']:.2f} s; up was {lab.timings['up']:.2f} s, "
          f"{lab.timings['mem_mib']:.0f} MiB (+{(meminfo()['host_available_kib'] - mem_before) / 1024:.0f} "
          "MiB freed by down)")
    assert r["seconds"] < 10
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "dsaslab" not in out
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "Z", f"pid {p} still running"
        except FileNotFoundError:
            pass
    with open("/proc/self/mounts") as f:
        mounts = f.read()
    assert lab.state not in mounts and "/run/netns/dsaslab" not in mounts
    assert not os.path.exists(lab.state)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "dsaslab" not in links
    if not lab.owned:  # someone else's session fixture started it: give it back
        lab.up(web=3)

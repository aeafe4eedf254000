"""`dsas add-server lab`: a real network boot of the lab's bare-metal VM, driven through the
lab's BMC simulator, up to serving requests through the LVS VIP.

The first run fails on purpose in `bootstrap` (a peer's shared file is missing): the host
must be out of the pool, the stage file unchanged and the one-shot PXE file already gone.
The first `--resume` fails on purpose in `stage_file`, after the host joined the pool: it
must leave the pool again. The second `--resume` finishes. Named to sort before test_lab.py (it takes the lab
down at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from dsasdeploy.lab import faults
from dsasdeploy.lab.topology import VIP, VIP_PORT

ROOT = Path(__file__).resolve().parents[2]
DSAS = [sys.executable, "-m", "dsasdeploy"]
SCHEMA = json.loads((ROOT / "dsasdeploy" / "report" / "events.schema.json").read_text())
MAC, IP, NAME = "52:54:00:77:02:00", "10.77.2.200", "web4"
BMC = "127.0.0.1:9623"


@pytest.fixture
def project(lab, tmp_path):
    """A copy of the repo's lab project (its stage file is edited), with its own known_hosts."""
    proj = tmp_path / "project"
    (proj / "stages").mkdir(parents=True)
    known = tmp_path / "known_hosts"
    shutil.copy(os.path.join(lab.state, "ssh", "known_hosts"), known)
    text = (ROOT / "dsas.yaml").read_text().replace("/var/lib/dsas-lab/ssh/known_hosts", str(known))
    (proj / "dsas.yaml").write_text(text)
    shutil.copy(ROOT / "stages" / "lab.yaml", proj / "stages" / "lab.yaml")
    shutil.copytree(ROOT / "recipes", proj / "recipes")
    return proj


def run(env, *args, timeout=420):
    return subprocess.run([*DSAS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def events(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        event = json.loads(line)
        jsonschema.validate(event, SCHEMA)
        out.append(event)
    return out


def ipmitool(lab, *args) -> str:
    with open(lab.bmc_password_file) as f:
        password = f.read().strip()
    env = {**os.environ, "IPMI_PASSWORD": password}
    done = subprocess.run(["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", "9623", "-U", "admin", "-E", "-C",
                           "3", *args], env=env, capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def ipvs(lab) -> str:
    return lab.run("lb1", "ipvsadm -Sn").stdout


def cleanup(lab) -> None:
    """Whatever the test left: the VM out of the pool, off, its DHCP entry and boot files gone."""
    if f"{IP}:8080" in ipvs(lab):
        lab.run("lb1", f"ipvsadm -d -t {VIP}:{VIP_PORT} -r {IP}:8080", check=False)
    ipmitool(lab, "chassis", "power", "off")
    boot = Path(lab.boot_dir)
    for path in [boot / "dhcp-hosts" / f"dsas-{NAME}", boot / "tftp" / "pxelinux.cfg" / ("01-" + MAC.replace(":", "-")),
                 boot / "http" / "answers" / (MAC.replace(":", "-") + ".sh")]:
        path.unlink(missing_ok=True)
    for cb in (boot / "callbacks").glob("*"):
        cb.unlink()
    dnsmasq = lab.pid("boot1.dnsmasq")
    if dnsmasq:
        os.kill(dnsmasq, signal.SIGHUP)  # dnsmasq keeps a deleted hostsdir entry until SIGHUP


def test_add_server_refuses_to_power_on_when_the_bmc_rejects_pxe(lab, project, tmp_path):
    """ipmitool exits 0 when the BMC rejects `bootdev pxe`: dsas must read it back and stop."""
    env = {**os.environ, "DSAS_PROJECT": str(project), "DSAS_STATE_DIR": str(tmp_path / "state")}
    cleanup(lab)
    stage_before = (project / "stages" / "lab.yaml").read_text()
    faults.bmc_rejects_bootdev(lab)
    try:
        answer = ipmitool(lab, "chassis", "bootdev", "pxe")
        assert "failed" in answer and "Set Boot Device to pxe" not in answer, answer  # what the BMC says
        result = run(env, "add-server", "lab", "--name", NAME, "--mac", MAC, "--ip", IP, "--role", "web",
                     "--bmc", BMC, "--json", timeout=120)
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr
        assert "step 'power_on' failed" in result.stderr
        assert "did not accept boot device 'pxe'" in result.stderr
        assert "Traceback" not in result.stderr
        steps = {(e["phase"], e["status"]) for e in events(result.stdout) if e["type"] == "provision_step"}
        assert ("boot_files", "ok") in steps and ("power_on", "failed") in steps
        assert ("install", "started") not in steps
        time.sleep(1.5)  # a power-on would have started qemu by now
        assert not lab.pxe_vm_running()
        assert "Chassis Power is off" in ipmitool(lab, "chassis", "power", "status")
        assert (project / "stages" / "lab.yaml").read_text() == stage_before
        assert f"{IP}:8080" not in ipvs(lab)
    finally:
        faults.bmc_accepts_bootdev(lab)
        cleanup(lab)


def test_add_server_pxe_boot_to_serving_through_the_vip(lab, project, tmp_path):
    env = {**os.environ, "DSAS_PROJECT": str(project), "DSAS_STATE_DIR": str(tmp_path / "state")}
    env.pop("IPMI_PASSWORD", None)
    cleanup(lab)
    deployed = run(env, "deploy", "lab", "--revision", "v1", "--json")
    assert deployed.returncode == 0, deployed.stderr
    live = [e for e in events(deployed.stdout) if e["type"] == "summary"][0]["release"]
    stage_before = (project / "stages" / "lab.yaml").read_text()
    shared = Path(lab.host_path("web1", "/srv/labapp/shared/memcached.addr"))
    moved = shared.with_name("memcached.addr.away")
    pxe_file = Path(lab.boot_dir) / "tftp" / "pxelinux.cfg" / ("01-" + MAC.replace(":", "-"))
    args = ["add-server", "lab", "--name", NAME, "--mac", MAC, "--ip", IP, "--role", "web", "--bmc", BMC, "--json"]
    try:
        # run 1: everything up to bootstrap is real, then a peer's shared file is missing
        shared.rename(moved)
        started = time.monotonic()
        first = run(env, *args)
        first_seconds = time.monotonic() - started
        assert first.returncode == 1, first.stdout[-3000:] + first.stderr
        assert "step 'bootstrap' failed" in first.stderr and "--resume" in first.stderr, first.stderr
        assert "memcached.addr" in first.stderr
        steps = {(e["phase"], e["status"]): e for e in events(first.stdout) if e["type"] == "provision_step"}
        for step in ("validate", "boot_files", "power_on", "install", "pxe_cleanup"):
            assert (step, "ok") in steps, step
        assert ("bootstrap", "failed") in steps
        assert "pinned host key ssh-ed25519 SHA256:" in steps[("install", "ok")]["message"]
        # the machine really network-booted from the per-MAC file dsas wrote, and called back
        assert f"pxelinux.cfg/01-{MAC.replace(':', '-')}" in lab.dnsmasq_log()
        assert "callback" in lab.pxe_vm_console().lower()
        # one-shot: gone before anything else happened; next boot from disk
        assert not pxe_file.exists()
        assert not list((Path(lab.boot_dir) / "callbacks").glob("*"))
        assert "Hard-Drive" in ipmitool(lab, "chassis", "bootparam", "get", "5")
        # out of the pool, stage file untouched
        assert f"{IP}:8080" not in ipvs(lab)
        assert (project / "stages" / "lab.yaml").read_text() == stage_before
        # the pinned key is the one the VM's SSH server offers: OpenSSH with strict checking agrees
        ssh = subprocess.run(["ssh", "-i", os.path.join(lab.state, "ssh", "id_ed25519"), "-o", "BatchMode=yes",
                              "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
                              "-o", "ConnectTimeout=5", f"root@{IP}", "hostname"],
                             capture_output=True, text=True, timeout=30)
        assert ssh.returncode == 0 and ssh.stdout.strip() == NAME, ssh.stderr

        # a plain rerun is refused: the journal says --resume
        again = run(env, *args)
        assert again.returncode == 2 and "unfinished" in again.stderr and "--resume" in again.stderr

        # run 2: fixed; resume from the journal (only the name is needed). It gets as far as the
        # pool, then the stage file cannot be written (a directory sits on its temp name): the
        # host must leave the pool again, the stage file stay as it was
        moved.rename(shared)
        obstacle = project / "stages" / ".lab.yaml.dsas-tmp"
        obstacle.mkdir()
        second = run(env, "add-server", "lab", "--name", NAME, "--resume", "--json")
        assert second.returncode == 1, second.stdout[-3000:] + second.stderr
        assert "step 'stage_file' failed" in second.stderr, second.stderr
        evs = events(second.stdout)
        steps = {(e["phase"], e["status"]) for e in evs if e["type"] == "provision_step"}
        for step in ("boot_files", "power_on", "install", "pxe_cleanup"):
            assert (step, "skipped") in steps
        for step in ("validate", "bootstrap", "deploy", "join_pool"):
            assert (step, "ok") in steps
        assert [e for e in evs if e["type"] == "gate" and e["host"] == NAME and e["status"] == "ok"]
        assert [e for e in evs if e["type"] == "lb" and e["status"] == "joined"]
        assert [e for e in evs if e["type"] == "lb" and e["status"] == "left"]
        assert f"{IP}:8080" not in ipvs(lab)
        assert (project / "stages" / "lab.yaml").read_text() == stage_before

        # run 3: the obstacle gone, resume joins the pool again and writes the stage file
        obstacle.rmdir()
        started = time.monotonic()
        third = run(env, "add-server", "lab", "--name", NAME, "--resume", "--json")
        second_seconds = time.monotonic() - started
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr
        steps = {(e["phase"], e["status"]) for e in events(third.stdout) if e["type"] == "provision_step"}
        for step in ("bootstrap", "deploy"):
            assert (step, "skipped") in steps
        for step in ("validate", "join_pool", "stage_file"):
            assert (step, "ok") in steps
        # the same release as its peers, and it serves it
        status, headers, _ = lab.http_get(IP, 8080, "/", timeout=5)
        assert status == 200 and headers.get("x-release") == live, headers
        table = ipvs(lab)
        assert f"-a -t {VIP}:{VIP_PORT} -r {IP}:8080 -m -w 1" in table, table
        # requests through the VIP reach it
        hosts = set()
        for _ in range(24):
            code, hdrs, _ = lab.client_get("/")
            assert code == 200
            hosts.add(hdrs.get("x-host"))
        assert NAME in hosts, hosts
        # the stage file gained it, comments and the other hosts intact
        after = (project / "stages" / "lab.yaml").read_text()
        assert [line for line in stage_before.splitlines() if line.startswith("#")] == \
               [line for line in after.splitlines() if line.startswith("#")]
        assert f"  - name: {NAME}\n    address: {IP}\n" in after
        assert f'mac: "{MAC}"' in after
        config = run(env, "config", "lab", "--json")
        assert NAME in [h["name"] for h in json.loads(config.stdout)["hosts"]]
        print(f"\n[add-server] run 1 (to the failing bootstrap, incl. PXE boot) {first_seconds:.1f} s, "
              f"last resume (LVS join, stage file) {second_seconds:.1f} s")
    finally:
        if moved.exists():
            moved.rename(shared)
        cleanup(lab)

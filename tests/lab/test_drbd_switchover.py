"""`dsas drbd status|switchover` against the lab's real DRBD 8.4 pair (UML guests).

Named to sort before test_lab.py, whose last test takes the lab down.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dsasdeploy.lab import faults

ROOT = Path(__file__).resolve().parents[2]
DSAS = [sys.executable, "-m", "dsasdeploy"]
SERVICE = "http://10.77.0.20:8000"


@pytest.fixture
def env(lab, tmp_path):
    return {**os.environ, "DSAS_PROJECT": str(ROOT), "DSAS_STATE_DIR": str(tmp_path / "state"), "CI": "true"}


def dsas(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*DSAS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def role(lab, node: str) -> str:
    return lab.run(node, "drbdadm role r0").stdout.strip()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def healthy_pair(lab) -> bool:
    return all(lab.run(n, "drbdadm cstate r0; drbdadm dstate r0", check=False).stdout.split()
               == ["Connected", "UpToDate/UpToDate"] for n in ("drbd-a", "drbd-b"))


@pytest.fixture
def pair(lab):
    """drbd-a Primary with the service up, before and after each test."""
    wait_for(lambda: healthy_pair(lab), 30, "a healthy DRBD pair")
    assert role(lab, "drbd-a") == "Primary/Secondary"
    yield lab
    wait_for(lambda: healthy_pair(lab), 30, "the pair to be healthy again")
    assert role(lab, "drbd-a") == "Primary/Secondary", "a test left drbd-b primary"


def served_sha() -> str:
    with urllib.request.urlopen(f"{SERVICE}/payload", timeout=5) as reply:
        return hashlib.sha256(reply.read()).hexdigest()


def test_status_reports_both_nodes_and_a_verdict(pair, env):
    result = dsas(env, "drbd", "status", "lab", "--json")
    assert result.returncode == 0, result.stderr
    found = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    states = {e["host"]: e for e in found if e["type"] == "drbd_state"}
    assert states["drbd-a"]["role"] == "Primary" and states["drbd-a"]["mounted"] and states["drbd-a"]["service_ip"]
    assert states["drbd-b"]["role"] == "Secondary" and states["drbd-b"]["cstate"] == "Connected"
    verdict = [e for e in found if e["type"] == "drbd_verdict"][0]
    assert verdict["status"] == "safe" and verdict["primary"] == "drbd-a"


def test_switchover_and_back_keeps_the_data_and_the_service(pair, env):
    lab = pair
    written = lab.run("drbd-a", "head -c 1048576 /dev/urandom > /srv/data/payload && sync && "
                      "sha256sum /srv/data/payload").stdout.split()[0]
    assert served_sha() == written
    started = time.monotonic()
    result = dsas(env, "drbd", "switchover", "lab", "--json")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert role(lab, "drbd-b") == "Primary/Secondary"
    assert lab.run("drbd-b", "sha256sum /srv/data/payload").stdout.split()[0] == written
    assert served_sha() == written  # through the service IP, now on drbd-b
    assert "10.77.0.20/" not in lab.run("drbd-a", "ip -o addr show dev eth0").stdout
    steps = [json.loads(line) for line in result.stdout.splitlines() if '"drbd_step"' in line]
    assert [s["phase"] for s in steps] == ["stop services", "unmount", "demote", "drop service IP", "promote",
                                           "mount", "add service IP", "start services", "health"]
    print(f"\nswitchover command {seconds:.1f} s")
    back = dsas(env, "drbd", "switchover", "lab", "--to", "drbd-a")
    assert back.returncode == 0, back.stderr
    assert served_sha() == written and role(lab, "drbd-a") == "Primary/Secondary"
    # the steps themselves are reported in the summary message (< 10 s on UML); TCG emulates the CPU
    assert seconds < 15 * lab.time_factor


def test_refuses_when_the_target_is_the_primary(pair, env):
    result = dsas(env, "drbd", "switchover", "lab", "--to", "drbd-a")
    assert result.returncode == 1 and "already the Primary" in result.stderr and "nothing was changed" in result.stderr


def test_refuses_when_the_replication_link_is_cut(pair, env):
    lab = pair
    faults.cut_link(lab, "drbd-b", nic=1)  # eth1: the replication network
    try:
        lab.run("drbd-a", "echo poke > /srv/data/poke && sync")  # a write makes the primary notice
        wait_for(lambda: lab.run("drbd-a", "drbdadm cstate r0").stdout.strip() != "Connected", 20,
                 "the primary to see the cut")
        result = dsas(env, "drbd", "switchover", "lab")
        assert result.returncode == 1
        assert "not Connected" in result.stderr and "nothing was changed" in result.stderr
        assert role(lab, "drbd-a").startswith("Primary")
    finally:
        faults.restore_link(lab, "drbd-b", nic=1)


def test_refuses_while_a_resync_runs(pair, env):
    lab = pair
    lab.run("drbd-a", "drbdadm invalidate-remote r0 && drbdadm pause-sync r0")
    try:
        result = dsas(env, "drbd", "switchover", "lab")
        assert result.returncode == 1
        assert "resync is running" in result.stderr or "PausedSync" in result.stderr
    finally:
        lab.run("drbd-a", "drbdadm resume-sync r0", check=False)


def test_failed_mount_on_the_peer_walks_back(pair, env):
    lab = pair
    written = lab.run("drbd-a", "sha256sum /srv/data/payload 2>/dev/null || "
                      "(head -c 65536 /dev/urandom > /srv/data/payload && sync && sha256sum /srv/data/payload)"
                      ).stdout.split()[0]
    lab.run("drbd-b", "rmdir /srv/data && touch /srv/data")  # the peer's mount point is broken
    try:
        result = dsas(env, "drbd", "switchover", "lab", "--json")
        assert result.returncode == 1, result.stderr
        assert "mount on drbd-b failed" in result.stderr and "walked back" in result.stderr
        undone = [json.loads(line)["phase"] for line in result.stdout.splitlines() if '"drbd_step"' in line]
        assert undone[-4:] == ["undo drop service IP", "undo demote", "undo unmount", "undo stop services"]
        assert role(lab, "drbd-a") == "Primary/Secondary"
        assert served_sha() == written
    finally:
        lab.run("drbd-b", "rm -f /srv/data && mkdir -p /srv/data")


def test_a_walk_back_that_fails_too_exits_4_with_the_state(pair, env, tmp_path):
    """A mount option the kernel rejects breaks the mount on BOTH nodes: the walk back cannot
    remount on drbd-a, so dsas must say exactly where things stand (exit 4), not claim success."""
    lab = pair
    project = tmp_path / "project"
    (project / "stages").mkdir(parents=True)
    shutil.copy(ROOT / "stages" / "lab.yaml", project / "stages" / "lab.yaml")
    text = (ROOT / "dsas.yaml").read_text().replace("    fstype: ext4\n", "    fstype: ext4\n    mount_options: no-such-option\n")
    (project / "dsas.yaml").write_text(text)
    try:
        result = dsas({**env, "DSAS_PROJECT": str(project)}, "drbd", "switchover", "lab")
        assert result.returncode == 4, result.stderr
        assert "walking back failed too" in result.stderr and "State now: drbd-a: Primary/Secondary" in result.stderr
        assert "never --force" in result.stderr and "dsas drbd recover lab" in result.stderr
    finally:
        # what the message tells the human: fix the cause, then recover (which also closes the journal)
        recovered = dsas(env, "drbd", "recover", "lab")
        assert recovered.returncode == 0, recovered.stderr


def test_refuses_at_once_when_the_link_was_just_cut(pair, env):
    """DRBD says Connected for up to ping-int (10 s) after a cut: the pre-check must not trust it."""
    lab = pair
    faults.cut_link(lab, "drbd-b", nic=1)
    try:
        status = dsas(env, "drbd", "status", "lab", "--json")
        verdict = [json.loads(line) for line in status.stdout.splitlines() if '"drbd_verdict"' in line][0]
        assert verdict["status"] == "unsafe" and "replication link" in verdict["message"], verdict
        result = dsas(env, "drbd", "switchover", "lab")
        assert result.returncode == 1, result.stderr
        # by now DRBD itself may have noticed (not Connected): refused either way, nothing changed
        assert ("replication link" in result.stderr or "not Connected" in result.stderr), result.stderr
        assert "nothing was changed" in result.stderr
        assert role(lab, "drbd-a").startswith("Primary")
        assert lab.http_get(*lab.drbd_service, "/hello.txt")[0] == 200  # nothing was stopped
    finally:
        faults.restore_link(lab, "drbd-b", nic=1)


def test_link_lost_during_switchover_walks_back_to_the_original_primary(pair, env, tmp_path):
    """The peer refuses to promote (the link died after the pre-check): the walk back re-promotes
    drbd-a although it is disconnected (it holds the newest data, drbd-b never became Primary),
    mounts, takes the service IP and starts the service: exit 1, the service answers."""
    lab = pair
    written = lab.run("drbd-a", "head -c 65536 /dev/urandom > /srv/data/payload && sync && "
                      "sha256sum /srv/data/payload").stdout.split()[0]
    project = tmp_path / "project"
    (project / "stages").mkdir(parents=True)
    shutil.copy(ROOT / "stages" / "lab.yaml", project / "stages" / "lab.yaml")
    # the link goes away right after the services stop (a clean disconnect: both sides know at once)
    text = (ROOT / "dsas.yaml").read_text().replace("        stop: drbd-service stop\n",
                                                    "        stop: drbd-service stop && drbdadm disconnect r0\n")
    (project / "dsas.yaml").write_text(text)
    try:
        result = dsas({**env, "DSAS_PROJECT": str(project)}, "drbd", "switchover", "lab", "--json")
        assert result.returncode == 1, result.stderr
        assert "promote on drbd-b failed" in result.stderr and "walked back" in result.stderr, result.stderr
        undone = [json.loads(line)["phase"] for line in result.stdout.splitlines() if '"drbd_step"' in line]
        assert "undo demote" in undone
        assert role(lab, "drbd-a").startswith("Primary/") and role(lab, "drbd-b").startswith("Secondary/")
        assert served_sha() == written
    finally:
        lab.run("drbd-a", "drbdadm connect r0", check=False)
        lab.run("drbd-b", "drbdadm connect r0", check=False)


def test_killed_switchover_is_recovered_from_anywhere(pair, env, tmp_path):
    """SIGKILL right after the demote: no Primary, the service down, the stage lock held. The next
    switchover refuses and names recover; `dsas drbd recover` from another workspace (the
    journal's copies on the nodes) makes drbd-a Primary and serving again and frees the lock."""
    lab = pair
    written = lab.run("drbd-a", "head -c 65536 /dev/urandom > /srv/data/payload && sync && "
                      "sha256sum /srv/data/payload").stdout.split()[0]
    proc = subprocess.Popen([*DSAS, "drbd", "switchover", "lab", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("{"):
            event = json.loads(line)
            if event["type"] == "drbd_step" and event.get("phase") == "demote" and event["status"] == "ok":
                proc.kill()
                break
    proc.wait()
    assert proc.returncode == -9
    assert not role(lab, "drbd-a").startswith("Primary") and not role(lab, "drbd-b").startswith("Primary")
    elsewhere = {**env, "DSAS_STATE_DIR": str(tmp_path / "other-workspace")}
    refused = dsas(elsewhere, "drbd", "switchover", "lab")
    assert refused.returncode == 3, refused.stderr
    assert "never finished" in refused.stderr and "dsas drbd recover lab" in refused.stderr
    result = dsas(elsewhere, "drbd", "recover", "lab", "--json")
    assert result.returncode == 0, result.stderr
    assert role(lab, "drbd-a") == "Primary/Secondary"
    assert served_sha() == written
    for node in ("drbd-a", "drbd-b"):
        assert lab.run(node, "test -e /srv/labapp/.dsas-lock", check=False).returncode != 0, node
    again = dsas(elsewhere, "drbd", "recover", "lab")
    assert again.returncode == 0 and "no unfinished switchover" in again.stdout

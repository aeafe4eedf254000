"""Rolling releases through every load-balancer shape the lab builds: keepalived directors in a
VRRP pair, LVS direct routing, HAProxy (the default ipvsadm shape is test_deploy_rolling.py's).

Each shape is its own lab (`dsas lab up --lb SHAPE`), brought up once for its tests and taken
down after. Named to sort after test_lab.py, whose last test takes the default lab down.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dsasdeploy.lab import Lab, faults
from dsasdeploy.lab.lbshapes import HAPROXY_SOCKET, MAINTENANCE_FILE

from .conftest import lab_skip_reason
from .helpers import DSAS, ROOT, ClientLoad, dsas, events

WEB = ("web1", "web2", "web3")


def shape_lab(shape: str):
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    if lab.meta() and lab.lb_shape != shape:
        lab.down()
    started = lab.up(web=3, lb=shape)
    print(f"\n[lab --lb {shape}] up in {started['seconds']:.1f} s")
    return lab


@pytest.fixture(scope="module", params=["keepalived", "dr", "haproxy"])
def shaped(request):
    lab = shape_lab(request.param)
    yield lab
    lab.down()


@pytest.fixture
def env(shaped, tmp_path):
    return {**os.environ, "DSAS_PROJECT": str(ROOT), "DSAS_STATE_DIR": str(tmp_path / "state"),
            "DSAS_CACHE_DIR": str(tmp_path / "cache"), "CI": "true"}


def pool_state(lab) -> dict[str, dict[str, str]]:
    """Balancer -> server -> what it is in the pool: `method weight` on IPVS, the status on HAProxy."""
    if lab.lb_shape == "haproxy":
        return {"lb1": lab.haproxy_servers()}
    state = {}
    for director in lab.directors():
        table = lab.run(director.name, "ipvsadm -Sn").stdout
        state[director.name] = {ln.split()[4]: f"{ln.split()[5]} {ln.split()[-1]}"
                                for ln in table.splitlines() if ln.startswith("-a")}
    return state


def currents(lab) -> list[str]:
    return [os.path.basename(os.readlink(lab.host_path(h, "/srv/labapp/current"))) for h in WEB]


def maintenance(lab, host: str) -> Path:
    return Path(lab.host_path(host, MAINTENANCE_FILE))


def test_rolling_deploy_under_load(shaped, env, tmp_path):
    """0 failed requests, only the old or the new release served, every weight or state and the
    forwarding method back as they were."""
    lab = shaped
    before, old = pool_state(lab), set(currents(lab))
    load = ClientLoad(tmp_path, port=lab.vip_port)
    time.sleep(0.5)
    t0 = time.monotonic()
    result = dsas(env, "deploy", lab.stage_name, "--json")
    wall = time.monotonic() - t0
    traffic = load.finish()
    assert result.returncode == 0, result.stderr
    summary = [e for e in events(result.stdout) if e["type"] == "summary"][0]
    new = summary["release"]
    print(f"\n[{lab.lb_shape}] rolling deploy {wall:.1f} s, {traffic['ok'] + traffic['errors']} requests, "
          f"{traffic['errors']} failed, releases seen {traffic['releases']}")
    assert traffic["errors"] == 0, traffic["samples"]
    assert traffic["ok"] > 50
    assert set(traffic["releases"]) <= old | {new}, traffic["releases"]
    assert new in traffic["releases"]
    assert currents(lab) == [new] * 3
    lb = [e for e in events(result.stdout) if e["type"] == "lb"]
    assert {e["host"] for e in lb if e["status"] == "drained"} == set(WEB)
    assert {e["host"] for e in lb if e["status"] == "restored"} == set(WEB)
    lab.wait_pool(10)
    assert pool_state(lab) == before
    if lab.lb_shape == "dr":  # direct routing: the replies never crossed the director
        stats = lab.run("lb1", f"ipvsadm -Ln --stats -t {lab.vip}:{lab.vip_port}").stdout
        service = [ln.split() for ln in stats.splitlines() if ln.startswith("TCP")][0]
        assert int(service[3]) > 0 and int(service[4]) == 0, stats  # InPkts > 0, OutPkts == 0
    if lab.lb_shape == "keepalived":  # keepalived itself took each host out and back (no raw edit)
        for director in ("lb1", "lb2"):
            log = Path(lab.state, "logs", f"{director}.keepalived.log").read_text()
            for i in (1, 2, 3):
                assert f"Disabling service [10.77.2.1{i}]:tcp:8080" in log, director
        assert not any(maintenance(lab, h).exists() for h in WEB)


only_keepalived = pytest.mark.parametrize("shaped", ["keepalived"], indirect=True)
only_haproxy = pytest.mark.parametrize("shaped", ["haproxy"], indirect=True)


def weight_on(lab, director: str, host_index: int) -> int:
    return lab.director_weights(director)[f"10.77.2.1{host_index}:8080"]


@only_keepalived
def test_keepalived_reload_keeps_a_drained_server_out(shaped):
    """A drained server (maintenance file) stays at weight 0 on both directors across a reload of
    keepalived, and comes back when the file goes."""
    lab = shaped
    flag = maintenance(lab, "web2")
    flag.touch()
    try:
        deadline = time.time() + 10
        while any(weight_on(lab, d, 2) for d in ("lb1", "lb2")):
            assert time.time() < deadline, "keepalived did not drain web2"
            time.sleep(0.2)
        for director in ("lb1", "lb2"):
            lab.run(director, "kill -HUP $(cat /run/keepalived.pid)")
        seen = []
        end = time.time() + 4
        while time.time() < end:
            seen.append((weight_on(lab, "lb1", 2), weight_on(lab, "lb2", 2)))
            time.sleep(0.2)
        assert set(seen) == {(0, 0)}, seen
        for director in ("lb1", "lb2"):
            log = Path(lab.state, "logs", f"{director}.keepalived.log").read_text()
            assert "Reloading" in log, director
    finally:
        flag.unlink(missing_ok=True)
    lab.wait_pool(10)


@only_keepalived
def test_keepalived_director_failover_mid_rollout(shaped, env, tmp_path):
    """The VRRP MASTER is killed while a batch is drained: the BACKUP takes the VIP with the same
    drain state, the rollout goes on to the end, nothing is left drained on the survivor, the report
    names the lost director and where the VIP went; back, the lost director converges to its peer."""
    lab = shaped
    [master] = lab.vip_holders()
    backup = "lb2" if master == "lb1" else "lb1"
    load = ClientLoad(tmp_path, port=lab.vip_port)
    proc = subprocess.Popen([*DSAS, "deploy", lab.stage_name,
                             "--revision", "v2", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    killed_at = None
    try:
        deadline = time.time() + 60
        while not maintenance(lab, "web2").exists():  # batch 2 is being drained
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "batch 2 never started"
            time.sleep(0.05)
        faults.kill_guest(lab, master)  # the guest and its helper processes, at once
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        traffic = load.finish()
    took = time.monotonic() - killed_at
    found = events(out)
    summary = [e for e in found if e["type"] == "summary"][0]
    lost = [e for e in found if e["type"] == "lb" and e["status"] == "director_lost"]
    print(f"\n[keepalived failover] killed {master} (MASTER) during batch 2: exit {proc.returncode}, "
          f"{traffic['ok'] + traffic['errors']} requests, {traffic['errors']} failed (VRRP takeover), "
          f"rollout ended {took:.1f} s after the kill; lost: {lost}")
    assert proc.returncode == 0, err
    assert summary["status"] == "ok"
    assert [e["host"] for e in lost] == [master]
    assert lost[0]["directors"] == [backup]
    assert set(currents(lab)) == {summary["release"]}
    assert not any(maintenance(lab, h).exists() for h in WEB)
    assert lab.vip_holders() == [backup]
    assert set(lab.director_weights(backup).values()) == {1}
    # the lost director comes back alone and follows the same checks: the same state as its peer
    lab.restart(master)
    lab.wait_pool(20)
    assert lab.director_weights(master) == lab.director_weights(backup)
    # and the next rollout is not blocked by the copy of the journal that missed the end
    again = dsas(env, "deploy", lab.stage_name, "--revision", "v1", "--json")
    assert again.returncode == 0, again.stderr


@only_haproxy
def test_haproxy_leaves_an_operator_maint_server_alone(shaped, env):
    """A server an operator put in MAINT is refused for draining: nothing changes, and it stays MAINT."""
    lab = shaped
    sock = HAPROXY_SOCKET
    lab.run("lb1", f"echo 'set server web/web2 state maint' | socat stdio UNIX-CONNECT:{sock}")
    try:
        before = currents(lab)
        # the whole stage: web2 counts as out of service, so draining anyone else breaks max_unavailable
        result = dsas(env, "deploy", lab.stage_name, "--json")
        assert result.returncode == 1, result.stderr
        assert "capacity guard" in result.stderr and "already out: web2" in result.stderr, result.stderr
        # web2 alone: refused by name, never drained (a later `ready` would put it back in service)
        result = dsas(env, "deploy", lab.stage_name, "--hosts", "web2", "--json")
        assert result.returncode == 1, result.stderr
        assert "web2 is MAINT on lb1" in result.stderr, result.stderr
        assert currents(lab) == before
        status = lab.haproxy_servers()
        assert status["web2"].startswith("MAINT"), status
        assert status["web1"] == status["web3"] == "UP", status
    finally:
        lab.run("lb1", f"echo 'set server web/web2 state ready' | socat stdio UNIX-CONNECT:{sock}")
    lab.wait_pool(10)


@only_haproxy
def test_haproxy_waits_for_sessions_to_finish(shaped, env, tmp_path):
    """A drained server keeps its open session until it ends; dsas waits for it (scur 0) before the switch."""
    lab = shaped
    # three slow requests through the VIP, one on each server (roundrobin), held open for 6 s
    answers = []
    holders = [threading.Thread(target=lambda: answers.append(lab.client_get("/slow?seconds=6", timeout=15)))
               for _ in WEB]
    for holder in holders:
        holder.start()
        time.sleep(0.1)
    try:
        result = dsas(env, "deploy", lab.stage_name, "--json")
    finally:
        for holder in holders:
            holder.join()
    assert result.returncode == 0, result.stderr
    assert [a[0] for a in answers] == [200] * 3, answers  # none was cut by the restart
    waited = [e for e in events(result.stdout) if e["type"] == "lb" and e["status"] == "drain_complete"]
    assert len(waited) == 3
    assert max(e["seconds"] for e in waited) >= 2.0, waited  # the canary's held session was waited for

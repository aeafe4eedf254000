"""Rolling releases through a fake LVS director, in-process on fake hosts: a batch failing its
health gate and the fleet rollback, the capacity guard, and `dsas recover` after a crash.

Stage: web1..web3 behind lb1 (VIP 10.99.1.10:80; weights 5, 3 with thresholds, 7 by direct
routing), canary 1, batch 1, max_unavailable 1; health via ssh to each host's own HTTP server.
"""

from __future__ import annotations

import pytest

from tests.support.fakefleet import SimulatedCrash, fleet_fixture

WEBS = ("web1", "web2", "web3")


@pytest.fixture
def fleet(tmp_path, tmp_path_factory, app_repo, monkeypatch):
    fleet = fleet_fixture(tmp_path, tmp_path_factory, app_repo, monkeypatch, lb=True)
    yield fleet
    fleet.stop()


def deploy_v1(fleet) -> str:
    """The release every host serves, in service with its original weight, before the test."""
    run = fleet.run("deploy", "test", "--revision", "v1", "--json")
    assert run.code == 0, run.stderr
    assert {name: r["weight"] for name, r in fleet.ipvs_reals().items()} == {"web1": 5, "web2": 3, "web3": 7}
    return run.summary["release"]


def test_a_batch_failing_its_health_gate_rolls_the_whole_fleet_back(fleet):
    good = deploy_v1(fleet)
    pool = fleet.ipvs_reals()
    fleet.health_status = lambda host, release: 500 if host == "web2" and release != good else 200

    run = fleet.run("deploy", "test", "--json")

    assert run.code == 1
    new = run.summary["release"]
    assert "web2: health check failed" in run.stderr and "HTTP 500" in run.stderr
    assert [(e["status"], e["name"]) for e in run.of_type("batch")] == [
        ("started", "canary"), ("done", "canary"), ("started", "batch 2")]
    failed_gates = [(e["host"], e["release"]) for e in run.of_type("gate") if e["status"] == "failed"]
    assert failed_gates == [("web2", new)]
    for host in WEBS:
        assert fleet.current(host) == good
        assert fleet.dsas_log(host)[-1].split()[1:3] == ["failed", f"release={new}"]
        assert not fleet.locked(host)
    assert fleet.restarts("web1") == [good, new, good]  # the canary was live on the new release
    assert not run.scripts("web3", "publish") and not run.scripts("web3", "revert")  # batch 3 never began
    assert fleet.ipvs_reals() == pool  # every weight back, method and thresholds as they were
    # the canary went back through the pool too: drained before its switch back, restored after
    web1_back = run.scripts("web1", "revert")[0].index
    edits = [c.index for c in run.scripts("lb1", "lb_edit")]
    assert any(i < web1_back for i in edits[2:]) and edits[-1] > web1_back
    assert fleet.journal_records()[-1]["event"] == "end"


def test_the_capacity_guard_refuses_to_drain_below_the_limit(fleet):
    good = deploy_v1(fleet)
    fleet.set_weight("web3", 0)  # someone took web3 out by hand: one server is out already
    pool = fleet.ipvs_reals()

    run = fleet.run("deploy", "test", "--json")

    assert run.code == 1
    assert "capacity guard" in run.stderr and "more than max_unavailable=1" in run.stderr
    assert "already out: 10.99.2.13:8080" in run.stderr
    assert not run.scripts(phase="lb_edit") and not run.scripts(phase="publish")
    assert not run.scripts(phase="prepare")  # refused before the release was shipped anywhere
    assert fleet.ipvs_reals() == pool
    for host in WEBS:
        assert fleet.current(host) == good
        assert fleet.releases(host) == [good]
        assert not fleet.locked(host)
        assert not any(" failed " in line for line in fleet.dsas_log(host))  # nothing to call failed


def test_recover_after_a_crash_mid_rollout_restores_weights_and_releases_locks(fleet):
    good = deploy_v1(fleet)
    pool = fleet.ipvs_reals()
    fleet.crash_after("web2", "publish")  # batch 2: web2 drained and switched, then dsas is killed

    with pytest.raises(SimulatedCrash):
        fleet.run("deploy", "test", "--json")

    new = next(r["release"] for r in fleet.journal_records() if r["event"] == "begin")
    assert [fleet.current(h) for h in WEBS] == [new, new, good]
    assert fleet.ipvs_reals()["web2"]["weight"] == 0 and all(fleet.locked(h) for h in WEBS)
    fleet.answers.clear()
    fleet.journal_writer_exited()
    refused = fleet.run("deploy", "test")
    assert refused.code == 3 and "dsas recover test" in refused.stderr and not refused.scripts()

    run = fleet.run("recover", "test", "--json")

    assert run.code == 0, run.stderr
    started = run.of_type("recover")[0]
    assert (started["drained"], started["switched"]) == (["web2"], ["web1", "web2"])
    assert [fleet.current(h) for h in WEBS] == [good, good, good]
    assert fleet.restarts("web2")[-1] == good and fleet.restarts("web1")[-1] == good
    assert fleet.ipvs_reals() == pool  # web2's weight 3 and thresholds 100/50 from the journal
    assert not any(fleet.locked(h) for h in WEBS)
    assert fleet.journal_records()[-1] == {**fleet.journal_records()[-1], "event": "end", "outcome": "recovered_back"}
    again = fleet.run("recover", "test")  # safe to run twice: nothing left to do, nothing touched
    assert again.code == 0 and "nothing to recover" in again.stderr + again.stdout
    assert not again.scripts(phase="lb_edit") and not again.scripts(phase="revert")

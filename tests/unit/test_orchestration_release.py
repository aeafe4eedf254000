"""Deploy without a load balancer, in-process on fake hosts: all or nothing before the switch,
everyone back after it, and a live lock refused. Through `dsas deploy` and the Backend only."""

from __future__ import annotations

import os
import socket

import pytest

from dsasdeploy.execute.recording import fail
from tests.support.fakefleet import fleet_fixture

WEBS = ("web1", "web2", "web3")


@pytest.fixture
def fleet(tmp_path, tmp_path_factory, app_repo, monkeypatch):
    fleet = fleet_fixture(tmp_path, tmp_path_factory, app_repo, monkeypatch)
    yield fleet
    fleet.stop()


def deploy_v1(fleet) -> str:
    """The release every host serves before the test's deploy."""
    run = fleet.run("deploy", "test", "--revision", "v1", "--json")
    assert run.code == 0, run.stderr
    return run.summary["release"]


def test_one_host_failing_prepare_removes_the_new_release_everywhere(fleet):
    good = deploy_v1(fleet)
    fleet.answers.append(fail("web2", phase="prepare", exit_code=2, stderr="tar: Unexpected EOF in archive"))

    run = fleet.run("deploy", "test", "--json")

    assert run.code == 1
    assert "web2: prepare failed" in run.stderr and "Unexpected EOF" in run.stderr
    new = run.summary["release"]
    assert new and new != good
    prepared = {c.host for c in run.scripts(phase="prepare") if c.result.ok and f"DSAS prepared {new}" in c.result.stdout}
    assert prepared == {"web1", "web3"}  # they did unpack it ...
    for host in WEBS:  # ... and it is gone from every host again, nothing switched or restarted
        assert fleet.releases(host) == [good]
        assert fleet.current(host) == good
        assert fleet.restarts(host) == [good]
        assert not fleet.locked(host)
    assert not run.scripts(phase="publish")
    assert {c.host for c in run.scripts(phase="discard")} == set(WEBS)
    assert {name: h["outcome"] for name, h in run.summary["hosts"].items()} == dict.fromkeys(WEBS, "unchanged")


def test_publish_failing_on_one_host_switches_every_host_back(fleet):
    good = deploy_v1(fleet)
    # web3 switches and restarts, then reports the restart failed
    fleet.answers.append(fail("web3", phase="publish", run_first=True, stderr="app failed to start: bad config"))

    run = fleet.run("deploy", "test", "--json")

    assert run.code == 1
    assert "web3: publish failed" in run.stderr and "app failed to start" in run.stderr
    new = run.summary["release"]
    assert {c.host for c in run.scripts(phase="publish")} == set(WEBS)  # every host was switched
    for host in WEBS:
        assert fleet.current(host) == good
        assert fleet.restarts(host) == [good, new, good]  # the old release restarted after the switch back
        assert fleet.dsas_log(host)[-1].split()[1:3] == ["failed", f"release={new}"]
        assert not fleet.locked(host)
    assert {h["outcome"] for h in run.summary["hosts"].values()} == {"reverted"}
    # a rollback never picks the failed release: there is no earlier good one
    assert fleet.run("rollback", "test", "--yes").code == 2


def test_a_lock_held_by_a_live_run_is_refused_with_exit_3_and_nothing_changes(fleet):
    fleet.hold_lock("web2", pid=os.getpid(), controller=socket.gethostname())  # this process: alive
    owner = (fleet.deploy_to("web2") / ".dsas-lock" / "owner").read_text()

    run = fleet.run("deploy", "test", "--json")

    assert run.code == 3
    assert "locked on web2" in run.stderr and "alice@ci-7" in run.stderr and "STALE" not in run.stderr
    held = [e for e in run.of_type("lock") if e["status"] == "held"]
    assert [(e["host"], e["stale"]) for e in held] == [("web2", False)]
    assert not run.scripts(phase="prepare") and not run.scripts(phase="publish")
    assert all(fleet.releases(host) == [] for host in WEBS)
    assert not fleet.locked("web1") and not fleet.locked("web3")  # ours were given back
    assert (fleet.deploy_to("web2") / ".dsas-lock" / "owner").read_text() == owner  # theirs untouched
    assert run.summary["exit_code"] == 3

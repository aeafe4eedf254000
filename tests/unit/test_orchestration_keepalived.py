"""Rolling releases through a fake keepalived pair (lb1, lb2), in-process on fake hosts.

Each director's table is owned by a fake keepalived (tests/support/fakebin/ipvs_table.py): a web
host's weight reads 0 while <its deploy_to>/shared/maintenance exists, and a raw ipvsadm edit fails
as keepalived would undo it. lb1 goes silent while batch 2 is drained, as a killed VRRP MASTER does.
"""

from __future__ import annotations

import pytest

from dsasdeploy.errors import RemoteError
from dsasdeploy.execute.recording import Answer
from tests.support.fakefleet import fleet_fixture

WEBS = ("web1", "web2", "web3")
MAINTENANCE = "shared/maintenance"


@pytest.fixture
def fleet(tmp_path, tmp_path_factory, app_repo, monkeypatch):
    fleet = fleet_fixture(tmp_path, tmp_path_factory, app_repo, monkeypatch, lb=True, directors=2)
    for director in ("lb1", "lb2"):
        fleet.keepalived(director, MAINTENANCE)
    stage = fleet.project / "stages" / "test.yaml"
    stage.write_text(stage.read_text() + f"lb:\n  keepalived: maintenance_file\n  maintenance_file: {MAINTENANCE}\n")
    yield fleet
    fleet.stop()


def flagged(fleet) -> list[str]:
    return [h for h in WEBS if (fleet.deploy_to(h) / MAINTENANCE).exists()]


def test_drains_through_the_checks_and_a_silent_director_leaves_the_watch(fleet):
    first = fleet.run("deploy", "test", "--revision", "v1", "--json")
    assert first.code == 0, first.stderr  # every drain went through the maintenance file: no raw edit
    assert [e["host"] for e in first.of_type("lb") if e["status"] == "drained"] == list(WEBS)
    assert flagged(fleet) == []

    def silent_once_batch_2_is_drained(call):
        if (fleet.deploy_to("web2") / MAINTENANCE).exists():
            raise RemoteError("lb1: timed out")  # the director's SSH went quiet: DirectorCalls calls it silent
        return None  # before that: the script runs

    fleet.answers.append(Answer(silent_once_batch_2_is_drained, host="lb1", times=None))
    run = fleet.run("deploy", "test", "--json")

    assert run.code == 0, run.stderr
    lost = [e for e in run.of_type("lb") if e["status"] == "director_lost"]
    assert [(e["host"], e["directors"]) for e in lost] == [("lb1", ["lb2"])]
    assert "silent" in lost[0]["reason"] and "10.99.1.10" in lost[0]["vips"]
    assert any("director lb1 left the rollout" in e["message"] for e in run.of_type("warning"))
    release = run.summary["release"]
    assert all(fleet.current(h) == release for h in WEBS)
    assert flagged(fleet) == []  # nothing left drained
    restored = [e for e in run.of_type("lb") if e["status"] == "restored"]
    assert [e["host"] for e in restored] == list(WEBS)
    assert all("lb1" not in key for e in restored if e["host"] == "web3" for key in e["weights"])

    fleet.answers.clear()  # lb1 is back: its copy of the journal misses the run's end, lb2's has it
    again = fleet.run("deploy", "test", "--revision", "v1", "--json")
    assert again.code == 0, again.stderr


def test_every_director_silent_fails_the_rollout_and_says_a_human_must_look(fleet):
    assert fleet.run("deploy", "test", "--revision", "v1", "--json").code == 0

    def silent_once_web1_is_drained(call):
        if (fleet.deploy_to("web1") / MAINTENANCE).exists():
            raise RemoteError(f"{call.host}: timed out")
        return None

    fleet.answers.append(Answer(silent_once_web1_is_drained, host=None, pattern="ipvsadm", times=None))
    run = fleet.run("deploy", "test", "--json")

    # no director can confirm web1 is back: a human must look (exit 4), the file is gone already
    assert run.code == 4, run.stderr
    assert "lb1 did not answer" in run.stderr and "lb2 did not answer" in run.stderr
    assert "web1 may still be drained" in run.stderr and "dsas recover test" in run.stderr
    assert flagged(fleet) == []

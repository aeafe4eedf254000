"""`dsas drbd switchover` in-process on a fake DRBD pair (fake drbdadm, mount, ip): a promote the
peer refuses walks back to the original primary, which serves again.

Stage: drbd-a (Primary: r0 mounted, service IP 192.0.2.20 on fake0, service `files` running),
drbd-b (Secondary), both Connected and UpToDate; web1 holds the stage lock too.
"""

from __future__ import annotations

import pytest

from dsasdeploy.execute.recording import fail
from tests.support.fakefleet import fleet_fixture

SERVING = {"mounted": True, "service_ip": True, "service": True}
IDLE = {"mounted": False, "service_ip": False, "service": False}


@pytest.fixture
def fleet(tmp_path, tmp_path_factory, app_repo, monkeypatch):
    fleet = fleet_fixture(tmp_path, tmp_path_factory, app_repo, monkeypatch, web=1, drbd=True)
    yield fleet
    fleet.stop()


def test_a_refused_promote_walks_back_to_the_original_primary(fleet):
    fleet.answers.append(fail("drbd-b", pattern=r"drbdadm primary", exit_code=17,
                              stderr="r0: State change failed: (-2) Need access to UpToDate data"))

    run = fleet.run("drbd", "switchover", "test", "--json")

    assert run.code == 1
    assert "promote on drbd-b failed" in run.stderr and "Need access to UpToDate data" in run.stderr
    assert "walked back: drbd-a is the Primary again" in run.stderr
    steps = [(e["host"], e["phase"], e["status"]) for e in run.of_type("drbd_step")]
    assert steps == [
        ("drbd-a", "stop services", "ok"), ("drbd-a", "unmount", "ok"), ("drbd-a", "demote", "ok"),
        ("drbd-a", "drop service IP", "ok"), ("drbd-b", "promote", "failed"),
        ("drbd-b", "undo promote", "ok"),  # the peer is made Secondary before the original primary returns
        ("drbd-a", "undo drop service IP", "ok"), ("drbd-a", "undo demote", "ok"), ("drbd-a", "undo unmount", "ok"),
        ("drbd-a", "undo stop services", "ok")]
    assert fleet.drbd_roles() == {"drbd-a": "Primary", "drbd-b": "Secondary"}
    assert fleet.serving("drbd-a") == SERVING and fleet.serving("drbd-b") == IDLE
    assert not any(fleet.locked(h) for h in ("drbd-a", "drbd-b", "web1"))

    # nothing is left behind that would block the next switchover (lock, unfinished journal)
    again = fleet.run("drbd", "switchover", "test", "--json")
    assert again.code == 0, again.stderr
    assert fleet.drbd_roles() == {"drbd-a": "Secondary", "drbd-b": "Primary"}
    assert fleet.serving("drbd-b") == SERVING and fleet.serving("drbd-a") == IDLE

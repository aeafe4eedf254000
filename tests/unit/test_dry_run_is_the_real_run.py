"""`--dry-run` prints exactly the scripts a real run sends (issue 14): both come from one plan.

A dry run and then the real run go to the same fake hosts (tests/support/fakefleet.py); every
script the real run sent to a release host for a planned phase must equal the one the dry run
printed for that host and phase, up to what differs by nature between two runs: the release id
and the time (the dry run's clock is a second or two earlier), the lock token (the dry run holds
none), and the lock heartbeat the runner puts before every script to a locked host.
"""

from __future__ import annotations

import re

import pytest

from dsasdeploy.commands import lock as lockcmd
from dsasdeploy.execute.deploy import DRY_RUN_TOKEN
from dsasdeploy.paths import ReleasePaths
from tests.support.fakefleet import fleet_fixture

WEBS = ("web1", "web2", "web3")
PLANNED = ("prepare", "migrate", "publish", "finish")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(params=[False, True], ids=["all-at-once", "rolling"])
def fleet(request, tmp_path, tmp_path_factory, app_repo, monkeypatch):
    fleet = fleet_fixture(tmp_path, tmp_path_factory, app_repo, monkeypatch, lb=request.param)
    yield fleet
    fleet.stop()


def normal(text: str, release: str, token: str) -> str:
    text = TIME.sub("<time>", text.replace(release, "<release>"))
    return text.replace(token, DRY_RUN_TOKEN) if token else text


def printed(run, release: str) -> dict[tuple[str, str], str]:
    """(host, phase) -> the script the dry run printed."""
    return {(e["host"], e["phase"]): normal(e["script"], release, "") for e in run.of_type("script")}


def sent(run, fleet, release: str, token: str) -> dict[tuple[str, str], list[str]]:
    """(host, phase) -> the bodies of the planned scripts the real run sent (heartbeat taken off)."""
    bodies: dict[tuple[str, str], list[str]] = {}
    for call in run.scripts():
        if call.host not in WEBS or call.phase not in PLANNED or call.heartbeat:
            continue
        lines = call.script.splitlines()[1:]  # `set -eu`
        beat = lockcmd.heartbeat_lines(ReleasePaths(str(fleet.deploy_to(call.host))), token)
        if lines[:len(beat)] == beat:
            lines = lines[len(beat):]
        bodies.setdefault((call.host, call.phase), []).append(normal("\n".join(lines) + "\n", release, token))
    return bodies


def token_of(run) -> str:
    """The real run's lock token, as its lock owner file recorded it (in its probe script)."""
    for call in run.scripts():
        found = re.search(r"token=([0-9a-f]{32})", call.script)
        if found:
            return found.group(1)
    raise AssertionError("no lock token in any script of the real run")


def assert_same(dry, real, fleet, phases) -> None:
    expected = printed(dry, dry.summary["release"])
    got = sent(real, fleet, real.summary["release"], token_of(real))
    assert {phase for _, phase in expected} == set(phases)
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for key, script in expected.items():
        assert got[key] == [script], f"{key}: the real run sent another script than the dry run printed"


def test_deploy_dry_run_prints_what_the_real_deploy_sends(fleet):
    assert fleet.run("deploy", "test", "--revision", "v1", "--json").code == 0
    dry = fleet.run("deploy", "test", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    real = fleet.run("deploy", "test", "--json")
    assert real.code == 0, real.stderr
    assert_same(dry, real, fleet, ("prepare", "publish", "finish"))


def test_rollback_dry_run_prints_what_the_real_rollback_sends(fleet):
    for revision in ("v1", "v2"):
        assert fleet.run("deploy", "test", "--revision", revision, "--json").code == 0
    dry = fleet.run("rollback", "test", "--dry-run", "--json", "--yes")
    assert dry.code == 0, dry.stderr
    real = fleet.run("rollback", "test", "--json", "--yes")
    assert real.code == 0, real.stderr
    assert dry.summary["release"] == real.summary["release"]
    assert_same(dry, real, fleet, ("publish", "finish"))

"""Pure judgement of a lock's holder (pid here, heartbeat elsewhere) and the heartbeat scripts."""

from __future__ import annotations

import subprocess

from dsasdeploy.commands import lock as lockcmd
from dsasdeploy.commands.base import parse_markers, script
from dsasdeploy.commands.release import parse_probe
from dsasdeploy.paths import ReleasePaths

OWNER = lockcmd.LockOwner(token="t1", owner="alice", controller="ci-7", pid=42, stage="test",
                          since="2026-11-27T10:00:00Z", revision="abc", command="deploy")


def test_holder_is_stale():
    alive, dead, unknown = (lambda pid: True), (lambda pid: False), (lambda pid: None)
    assert lockcmd.holder_is_stale(None, None, "ci-7", alive) is True
    assert lockcmd.holder_is_stale(OWNER, 999, "ci-7", alive) is False  # here the pid decides
    assert lockcmd.holder_is_stale(OWNER, 1, "ci-7", dead) is True
    assert lockcmd.holder_is_stale(OWNER, 1, "ci-7", unknown) is False  # then the heartbeat does
    assert lockcmd.holder_is_stale(OWNER, 3, "elsewhere", dead) is False
    assert lockcmd.holder_is_stale(OWNER, lockcmd.HEARTBEAT_STALE + 1, "elsewhere", alive) is True
    assert lockcmd.holder_is_stale(OWNER, None, "elsewhere", alive) is None  # an old dsas: no heartbeat


def _sh(lines: list[str]) -> str:
    return subprocess.run(["sh", "-c", script(lines)], capture_output=True, text=True, check=True).stdout


def test_heartbeat_is_written_by_its_token_only_and_reported_with_its_age(tmp_path):
    paths = ReleasePaths(str(tmp_path / "app"))
    (tmp_path / "app").mkdir()
    probe = parse_probe(parse_markers(_sh(lockcmd.acquire_lines(paths, OWNER))))
    assert probe.lock == "acquired"
    probe = parse_probe(parse_markers(_sh(lockcmd.report_lines(paths))))
    assert probe.lock == "held" and probe.lock_owner == OWNER and 0 <= probe.lock_heartbeat_age <= 2
    beat = tmp_path / "app" / ".dsas-lock" / "heartbeat"
    beat.write_text("1000\n")
    _sh(lockcmd.heartbeat_lines(paths, "someone-else"))
    assert beat.read_text() == "1000\n"  # never revives another run's lock
    assert parse_probe(parse_markers(_sh(lockcmd.report_lines(paths)))).lock_heartbeat_age > 10 ** 9
    _sh(lockcmd.heartbeat_lines(paths, "t1"))
    assert parse_probe(parse_markers(_sh(lockcmd.report_lines(paths)))).lock_heartbeat_age <= 2
    beat.write_text("garbage")
    assert parse_probe(parse_markers(_sh(lockcmd.report_lines(paths)))).lock_heartbeat_age is None

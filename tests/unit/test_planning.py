"""Pure planners: pruning, rollback target, host selection, hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsasdeploy.commands.revlog import LogEntry
from dsasdeploy.config.load import load_stage
from dsasdeploy.errors import UsageError
from dsasdeploy.inventory import select_hosts, split_list
from dsasdeploy.plan.hooks import remote_hooks, unmatched_remote_hooks
from dsasdeploy.plan.releases import common_releases, releases_to_prune, rollback_target

IDS = [f"2026010{d}000000" for d in range(1, 8)]


def failed(rid: str) -> LogEntry:
    return LogEntry("t", "failed", {"release": rid})


def test_prune_keeps_newest_and_protected():
    assert releases_to_prune(IDS, 3, [IDS[-1], IDS[0]]) == IDS[1:4]


def test_prune_drops_failed_first():
    assert releases_to_prune(IDS, 3, [IDS[-1]], failed=[IDS[5]]) == IDS[:3] + [IDS[5]]


def test_prune_never_removes_current_even_if_old():
    assert IDS[0] not in releases_to_prune(IDS, 1, [IDS[0]])


def test_rollback_target_is_previous_good_release():
    assert rollback_target(IDS, IDS[-1], [failed(IDS[5])]) == IDS[4]


def test_rollback_to_explicit_release_checks_it():
    assert rollback_target(IDS, IDS[-1], [], IDS[1]) == IDS[1]
    with pytest.raises(UsageError, match="marked failed"):
        rollback_target(IDS, IDS[-1], [failed(IDS[1])], IDS[1])
    with pytest.raises(UsageError, match="not on every host"):
        rollback_target(IDS[:3], IDS[-1], [], IDS[4])
    with pytest.raises(UsageError, match="no earlier good release"):
        rollback_target(IDS[:1], IDS[0], [])


def test_common_releases():
    assert common_releases([IDS[:3], IDS[1:4]]) == set(IDS[1:3])


@pytest.fixture
def stage(tmp_path: Path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "dsas.yaml").write_text(
        "application: a\nrepo: .\ndeploy_to: /srv/a\nroles:\n  worker: {release: true}\n"
        "hooks:\n  after_publish:\n    - {remote: migrate, roles: [worker], once: true}\n"
        "    - {remote: warm, roles: [web]}\n    - {remote: never, roles: [lb]}\n")
    (tmp_path / "stages" / "s.yaml").write_text(
        "hosts:\n"
        "  - {name: web1, address: 10.0.0.1, roles: [web]}\n"
        "  - {name: web2, address: 10.0.0.2, roles: [web, worker]}\n"
        "  - {name: job1, address: 10.0.0.3, roles: [worker], primary: true}\n"
        "  - {name: lb1, address: 10.0.0.9, roles: [lb]}\n")
    return load_stage("s", tmp_path)


def test_select_by_globs_and_roles(stage):
    assert [h.name for h in select_hosts(stage, ["web*"], None)] == ["web1", "web2"]
    assert [h.name for h in select_hosts(stage, None, ["worker"])] == ["web2", "job1"]
    assert [h.name for h in select_hosts(stage, ["10.0.0.1"], None)] == ["web1"]
    with pytest.raises(UsageError, match="'wbe1' matches no host"):
        select_hosts(stage, ["wbe1"], None)
    assert split_list("a, b,,c d") == ["a", "b", "c", "d"]


def test_release_hosts_skip_lb(stage):
    assert [h.name for h in stage.release_hosts()] == ["web1", "web2", "job1"]


def test_once_hook_runs_on_the_roles_primary_only(stage):
    run = stage.release_hosts()
    by_host = {h.name: [c for _, c in remote_hooks(stage, "after", "publish", h, run)] for h in run}
    assert by_host == {"web1": ["warm"], "web2": ["warm"], "job1": ["migrate"]}
    assert unmatched_remote_hooks(stage, run) == ["after_publish[2]"]

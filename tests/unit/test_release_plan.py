"""The pure release plan: per host and phase, the exact script with its hooks; prune; batches."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dsasdeploy.commands.release import HostProbe
from dsasdeploy.commands.revlog import LogEntry
from dsasdeploy.config.load import load_stage
from dsasdeploy.plan.release import deploy_plan, rollback_plan

OLD = [f"2026010{d}000000" for d in range(1, 6)]
NEW = "20260201000000"


@pytest.fixture
def stage(tmp_path: Path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "dsas.yaml").write_text(
        "application: a\nrepo: .\ndeploy_to: /srv/a\nkeep_releases: 3\nrestart:\n  web: sh bin/restart\n"
        "roles:\n  db: {release: true}\n"
        "migrate: {command: sh bin/migrate, role: db}\n"
        "hooks:\n  before_prepare:\n    - {remote: sh bin/before-prepare}\n"
        "  after_publish:\n    - {remote: sh bin/after-publish, roles: [web]}\n"
        "  before_finish:\n    - {remote: sh bin/before-finish}\n"
        "  after_rollback:\n    - {remote: sh bin/after-rollback}\n"
        "  before_migrate:\n    - {remote: sh bin/before-migrate}\n"
        "lb: {driver: lvs}\nrollout: {canary: 1, batch: 1, max_unavailable: 1}\n")
    (tmp_path / "stages" / "s.yaml").write_text(
        "hosts:\n"
        "  - {name: web1, address: 10.0.0.1, roles: [web]}\n"
        "  - {name: web2, address: 10.0.0.2, roles: [web]}\n"
        "  - {name: db1, address: 10.0.0.3, roles: [db]}\n"
        "  - {name: lb1, address: 10.0.0.9, roles: [lb]}\n")
    return load_stage("s", tmp_path)


def probes(stage, current=OLD[-1]):
    return {h.name: HostProbe(exists=True, writable=True, current=current, releases={r: "abc" for r in OLD},
                              lock="acquired", tar=True) for h in stage.release_hosts()}


def test_deploy_plan_holds_every_phase_with_its_hooks(stage):
    hosts = stage.release_hosts()
    plan = deploy_plan(stage, hosts, probes(stage), NEW, "f" * 40, stage.primary("db"))
    web1, db1 = hosts[0], hosts[2]
    assert plan.context(web1).previous == OLD[-1] and plan.release_id == NEW
    assert any("bin/before-prepare" in line for line in plan.script("prepare", web1))
    assert any("bin/after-publish" in line for line in plan.script("publish", web1))
    assert not any("bin/after-publish" in line for line in plan.script("publish", db1))  # roles: [web]
    # keep 3: the new one, the current one, and the newest other; the rest is pruned
    assert plan.hosts["web1"].prune == tuple(OLD[:3])
    entry = LogEntry("2026-02-01T00:00:00Z", "deployed", {"release": NEW})
    finish = plan.finish_script(web1, entry, "TOKEN")
    assert any("bin/before-finish" in line for line in finish) and any("TOKEN" in line for line in finish)
    host, migrate = plan.migrate
    assert host.name == "db1" and any("bin/migrate" in line for line in migrate)
    assert any("bin/before-migrate" in line for line in migrate)
    assert [[h.name for h in b] for b in plan.batches] == [["web1"], ["web2"], ["db1"]]
    order = [(h, p) for h, p, _ in plan.scripts_in_order(entry, "TOKEN")]
    assert order[:3] == [("web1", "prepare"), ("web1", "publish"), ("web1", "finish")]
    assert order.index(("db1", "migrate")) == order.index(("db1", "publish")) - 1


def test_rollback_plan_switches_back_with_the_rollback_hooks(stage):
    hosts = stage.release_hosts()
    plan = rollback_plan(stage, hosts, probes(stage), OLD[-2], "e" * 40)
    script = plan.script("publish", hosts[0])
    assert plan.hook_phase == "rollback" and plan.release_id == OLD[-2]
    assert any("bin/after-rollback" in line for line in script)
    assert not any("bin/after-publish" in line for line in script)
    assert plan.hosts["web1"].prune == ()


def test_plan_scripts_are_valid_sh(stage):
    hosts = stage.release_hosts()
    plan = deploy_plan(stage, hosts, probes(stage), NEW, "f" * 40, stage.primary("db"))
    entry = LogEntry("2026-02-01T00:00:00Z", "deployed", {"release": NEW})
    for host, phase, lines in plan.scripts_in_order(entry, "TOKEN"):
        checked = subprocess.run(["sh", "-n"], input="\n".join(lines) + "\n", text=True, capture_output=True)
        assert checked.returncode == 0, (host, phase, checked.stderr)

"""The real program run in-process in an Environment: its streams, its confirm, its backend."""

from __future__ import annotations

import io

import pytest

from dsasdeploy.environment import Environment
from tests.support.fakefleet import fleet_fixture
from tests.support.inprocess import run_dsas


@pytest.fixture
def fleet(tmp_path, tmp_path_factory, app_repo, monkeypatch):
    fleet = fleet_fixture(tmp_path, tmp_path_factory, app_repo, monkeypatch, web=2)
    yield fleet
    fleet.stop()


def test_output_and_exit_codes_go_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSAS_PROJECT", raising=False)
    code, out, err = run_dsas(["--version"])
    assert code == 0 and out.startswith("dsas ") and err == ""
    code, out, err = run_dsas(["deploy", "staging"])
    assert code == 2 and "no dsas.yaml" in err and "FAILED: no dsas.yaml" in out  # the summary line
    code, out, err = run_dsas(["deploy", "--help"])
    assert code == 0 and "--lock-wait" in out


def test_a_terminal_is_what_the_environment_says(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert Environment().is_terminal is False  # CI never asks, whatever the streams are
    out = io.StringIO()
    person = Environment(stdin=io.StringIO("y\n"), stdout=out, is_terminal=True)
    assert person.ask("deploy?") is True and out.getvalue() == "deploy? [y/N] "
    assert Environment(stdin=io.StringIO("\n"), stdout=io.StringIO()).ask("deploy?") is False


def test_deploy_and_rollback_run_on_the_environment_backend_and_confirm(fleet):
    first = fleet.run("deploy", "test", "--revision", "v1", "--json")
    assert first.code == 0, first.stderr
    assert [c.phase for c in first.scripts("web1")] == ["probe", "prepare", "publish", "finish"]
    assert first.scripts("web1", "prepare")[0].stdin_bytes > 0  # the archive went to its stdin
    good = first.summary["release"]
    second = fleet.run("deploy", "test", "--json").summary["release"]
    assert [fleet.current(h) for h in ("web1", "web2")] == [second, second]

    questions = []
    refused = fleet.run("rollback", "test", is_terminal=True, confirm=lambda q: questions.append(q) or False)
    assert refused.code == 1 and "rollback cancelled" in refused.stderr
    assert questions == ["roll back stage 'test' on 2 host(s) to the previous release"]
    assert not refused.scripts()  # asked before any host was touched

    assert fleet.run("rollback", "test").code == 2  # no terminal, no --yes: refused, never a hanging prompt
    done = fleet.run("rollback", "test", is_terminal=True, confirm=lambda q: True)
    assert done.code == 0, done.stderr
    assert [fleet.current(h) for h in ("web1", "web2")] == [good, good]
    assert fleet.restarts("web2")[-1] == good

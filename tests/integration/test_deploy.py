"""Deploy, rollback, pruning, locks and host keys against real sshd test hosts.

Every test drives the installed CLI as a subprocess (no TTY, CI=true), the way
users and pipelines do, and checks the hosts' files directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

from pathlib import Path

import jsonschema
import pytest

import dsasdeploy
from dsasdeploy.commands.lock import LockOwner

pytestmark = pytest.mark.sshd


SCHEMA = json.loads((Path(dsasdeploy.__file__).parent / "report" / "events.schema.json").read_text())
REPORT_SCHEMA = json.loads((Path(dsasdeploy.__file__).parent / "report" / "report.schema.json").read_text())


def events(stdout: str) -> list[dict]:
    """The --json events of a run, each validated against the published schema."""
    found = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    for event in found:
        jsonschema.validate(event, SCHEMA)
    return found


def summary(stdout: str) -> dict:
    return [e for e in events(stdout) if e["type"] == "summary"][-1]


def snapshot(project) -> dict:
    """Every path under each host's deploy root with its link target / mtime."""
    state = {}
    for host in project.hosts.hosts:
        for root, dirs, files in os.walk(host.deploy_to):
            for name in dirs + files:
                path = os.path.join(root, name)
                state[path] = os.readlink(path) if os.path.islink(path) else os.lstat(path).st_mtime_ns
    return state


def test_deploy_to_three_hosts(project):
    result = project.run("deploy", "test", "--json")
    assert result.returncode == 0, result.stderr
    done = summary(result.stdout)
    release = done["release"]
    assert done["status"] == "ok" and done["revision"] == project.shas["v2"]
    assert all(count <= 4 for count in done["round_trips"].values()), done["round_trips"]
    for index in range(3):
        root = project.deploy_root(index)
        assert project.current(index) == release
        assert (root / "current" / "REVISION").read_text().strip() == project.shas["v2"]
        assert (root / "current" / "app.txt").read_text() == "version 2\n"
        assert (root / "current" / "log").resolve() == (root / "shared" / "log")
        assert (root / "shared" / "restarts.log").read_text().split() == [release, release]
        user = __import__("pwd").getpwuid(os.getuid()).pw_name
        assert project.log(index)[-1] == f"Branch main (at {project.shas['v2']}) deployed as release {release} by {user}"
        assert project.dsas_log(index)[-1].split()[1:3] == ["deployed", f"release={release}"]
        assert not (root / ".dsas-lock").exists()


def test_second_deploy_then_rollback_and_rollback_to(project):
    first = summary(project.run("deploy", "test", "--revision", "v1", "--json").stdout)["release"]
    second = summary(project.run("deploy", "test", "--json").stdout)["release"]
    assert second > first
    assert [project.current(i) for i in range(3)] == [second] * 3
    assert (project.deploy_root(0) / "current" / "app.txt").read_text() == "version 2\n"

    result = project.run("rollback", "test", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert [project.current(i) for i in range(3)] == [first] * 3
    assert (project.deploy_root(1) / "current" / "app.txt").read_text() == "version 1\n"
    assert project.log(2)[-1].endswith(f" rolled back to release {first}")
    assert project.dsas_log(2)[-1].split()[1] == "rolled_back"

    result = project.run("rollback", "test", "--to", second, "--yes")
    assert result.returncode == 0, result.stderr
    assert [project.current(i) for i in range(3)] == [second] * 3

    result = project.run("rollback", "test", "--to", "20000101000000", "--yes")
    assert result.returncode == 2 and "not on every host" in result.stderr


def test_rollback_needs_yes_without_a_terminal(project):
    project.run("deploy", "test", "--revision", "v1")
    project.run("deploy", "test")
    before = [project.current(i) for i in range(3)]
    result = project.run("rollback", "test")
    assert result.returncode == 2 and "pass --yes" in result.stderr
    assert [project.current(i) for i in range(3)] == before


def test_pruning_keeps_keep_releases(project):
    ids = [summary(project.run("deploy", "test", "--json").stdout)["release"] for _ in range(5)]
    for index in range(3):
        assert project.releases(index) == ids[-3:]  # keep_releases: 3
        assert project.current(index) == ids[-1]


def test_failed_restart_reverts_every_host_and_marks_release_failed(project):
    good = summary(project.run("deploy", "test", "--json").stdout)["release"]
    result = project.run("deploy", "test", "--revision", "broken", "--json")
    assert result.returncode == 1
    done = summary(result.stdout)
    bad = done["release"]
    assert "restart web" in result.stderr and "app failed to start" in result.stderr
    assert {h["outcome"] for h in done["hosts"].values()} == {"reverted"}
    for index in range(3):
        assert project.current(index) == good
        failed_line = project.dsas_log(index)[-1].split()
        assert failed_line[1] == "failed"
        assert not (project.deploy_root(index) / ".dsas-lock").exists()
        # the good release was restarted again after the revert
        assert project.deploy_root(index).joinpath("shared/restarts.log").read_text().split()[-2:] == [good, good]
    # rollback never picks the failed release; there is no earlier good one here
    result = project.run("rollback", "test", "--yes")
    assert result.returncode == 2 and "no earlier good release" in result.stderr
    assert bad > good and f"release={bad}" in " ".join(project.dsas_log(0))
    assert not any(bad in line for line in project.log(0))  # Capistrano logs no failed deploys


def test_failure_preparing_one_host_leaves_every_host_on_the_old_release(project):
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text()
                  + "hooks:\n  after_prepare:\n    - remote: test ! -e \"$DSAS_DEPLOY_TO/shared/fail-here\"\n")
    good = summary(project.run("deploy", "test", "--json").stdout)["release"]
    (project.deploy_root(1) / "shared" / "fail-here").write_text("")
    before = snapshot(project)
    result = project.run("deploy", "test", "--json")
    assert result.returncode == 1
    assert "web2: prepare failed at step 'hook after_prepare[0]'" in result.stderr
    assert [project.current(i) for i in range(3)] == [good] * 3
    assert [project.releases(i) for i in range(3)] == [[good]] * 3  # new release removed everywhere
    after = snapshot(project)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert all("shared/restarts.log" not in p for p in changed)  # nothing restarted
    assert not any(".dsas-lock" in p for p in after)


def test_missing_linked_file_is_refused_before_any_change(project):
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text() + "linked_files: [config/db.yml]\n")
    for index in (0, 2):
        path = project.deploy_root(index) / "shared" / "config"
        path.mkdir(parents=True)
        (path / "db.yml").write_text("x")
    result = project.run("deploy", "test")
    assert result.returncode == 1
    assert "web2: missing linked file(s)" in result.stderr and "config/db.yml" in result.stderr
    assert all(project.releases(i) == [] for i in range(3))
    assert all(not (project.deploy_root(i) / ".dsas-lock").exists() for i in range(3))


def _hold_lock(project, index: int, pid: int, controller: str | None = None) -> None:
    lock = project.deploy_root(index) / ".dsas-lock"
    lock.mkdir(parents=True)
    owner = LockOwner(token="other", owner="alice@ci-7", controller=controller or socket.gethostname(), pid=pid,
                      stage="test", since="2026-11-27T10:00:00Z", revision="abcdef1234567890", command="deploy")
    (lock / "owner").write_text(owner.file_text())


def test_concurrent_deploy_is_refused_with_exit_3(project):
    _hold_lock(project, 2, os.getpid())  # a live process holds it
    result = project.run("deploy", "test")
    assert result.returncode == 3
    assert "locked on web3" in result.stderr and "alice@ci-7" in result.stderr and "abcdef123456" in result.stderr
    assert all(project.releases(i) == [] for i in range(3))
    assert not (project.deploy_root(0) / ".dsas-lock").exists()  # ours were given back
    assert (project.deploy_root(2) / ".dsas-lock").exists()  # theirs untouched


def test_two_deploys_at_once_one_wins(project):
    procs = [subprocess.Popen([*__import__("tests.conftest", fromlist=["DSAS"]).DSAS, "deploy", "test"],
                              env={**os.environ, "CI": "true"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes in ([0, 3], [0, 0])  # 0/0 only if the second started after the first finished
    assert all(len(project.releases(i)) == codes.count(0) for i in range(3))


def test_lock_wait_waits_for_the_other_deploy(project):
    _hold_lock(project, 0, os.getpid())
    threading.Timer(2.0, lambda: __import__("shutil").rmtree(project.deploy_root(0) / ".dsas-lock")).start()
    started = time.monotonic()
    result = project.run("deploy", "test", "--lock-wait", "20")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 2.0


def test_stale_lock_is_reported_and_unlock_breaks_it(project):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _hold_lock(project, 1, dead.pid)
    result = project.run("deploy", "test")
    assert result.returncode == 3 and "STALE" in result.stderr and "dsas unlock test" in result.stderr
    result = project.run("unlock", "test")
    assert result.returncode == 0, result.stderr
    assert not (project.deploy_root(1) / ".dsas-lock").exists()
    assert project.run("deploy", "test").returncode == 0


def test_unlock_of_a_live_lock_needs_yes(project):
    _hold_lock(project, 0, os.getpid(), controller="another-controller")
    result = project.run("unlock", "test")
    assert result.returncode == 2 and "pass --yes" in result.stderr
    assert (project.deploy_root(0) / ".dsas-lock").exists()
    assert project.run("unlock", "test", "--yes").returncode == 0
    assert not (project.deploy_root(0) / ".dsas-lock").exists()


def test_changed_host_key_is_refused_and_nothing_changes(project):
    project.hosts.hosts[1].regenerate_host_key()  # known_hosts still pins the old key
    try:
        result = project.run("deploy", "test", "--accept-new-host-keys")
        assert result.returncode == 1
        assert "HOST KEY CHANGED" in result.stderr and "SHA256:" in result.stderr and "web2" in result.stderr
        assert all(project.releases(i) == [] for i in range(3))
    finally:
        project.hosts.write_known_hosts()


def test_unknown_host_key_refused_unless_accepted(project):
    known = project.hosts.known_hosts
    lines = known.read_text().splitlines(keepends=True)
    known.write_text("".join(lines[:2]))  # web3 unknown
    result = project.run("deploy", "test")
    assert result.returncode == 1 and "unknown host key" in result.stderr and "--accept-new-host-keys" in result.stderr
    result = project.run("deploy", "test", "--accept-new-host-keys")
    assert result.returncode == 0, result.stderr
    assert known.read_text().count("\n") == 3


def test_unreachable_host_changes_nothing(project):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stage = (project.dir / "stages" / "test.yaml").read_text()
    project.write("stages/test.yaml", stage + f"  - name: web9\n    address: 127.0.0.1\n    port: {port}\n"
                  "    roles: [web]\n    deploy_to: /nonexistent\n")
    result = project.run("deploy", "test", "--json")
    assert result.returncode == 1
    assert "web9" in result.stderr and "unreachable" in result.stderr
    assert summary(result.stdout)["exit_code"] == 1
    assert all(project.releases(i) == [] for i in range(3))


def test_dry_run_touches_nothing_and_prints_scripts(project):
    project.run("deploy", "test", "--revision", "v1")
    before = snapshot(project)
    result = project.run("deploy", "test", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert snapshot(project) == before
    assert "web2: publish (would run)" in result.stdout and "mv -- " in result.stdout
    assert "tar -xzf - -C" in result.stdout


def test_sigterm_during_prepare_discards_everywhere(project):
    # the after_prepare hook says it runs (the new release is unpacked on that host), then holds
    # the prepare phase open: the signal is sent once it runs on every host, never after a guess
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text()
                  + "hooks:\n  after_prepare:\n"
                    "    - remote: touch \"$DSAS_DEPLOY_TO/shared/preparing\" && sleep 3\n")
    good = summary(project.run("deploy", "test", "--revision", "v1", "--json").stdout)["release"]
    markers = [project.deploy_root(i) / "shared" / "preparing" for i in range(3)]
    for marker in markers:
        marker.unlink()
    from tests.conftest import DSAS

    proc = subprocess.Popen([*DSAS, "deploy", "test", "--json"], env={**os.environ, "CI": "true"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = False
        for line in proc.stdout:  # however long start-up takes on a busy machine
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("type") == "phase_started" and event.get("phase") == "prepare":
                started = True
                break
        assert started, f"no prepare phase: {proc.stderr.read()}"
        deadline = time.monotonic() + 60
        while not all(m.exists() for m in markers):
            assert time.monotonic() < deadline and proc.poll() is None, "the prepare hook never ran everywhere"
            time.sleep(0.02)
        unpacked = [set(project.releases(i)) - {good} for i in range(3)]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all(len(new) == 1 for new in unpacked), unpacked  # the new release was on every host
    assert proc.returncode == 1, err
    assert "interrupted before any switch" in err
    assert [project.current(i) for i in range(3)] == [good] * 3
    assert [project.releases(i) for i in range(3)] == [[good]] * 3
    assert not any((project.deploy_root(i) / ".dsas-lock").exists() for i in range(3))


def test_releases_lists_current_and_failed(project):
    good = summary(project.run("deploy", "test", "--json").stdout)["release"]
    project.run("deploy", "test", "--revision", "broken")
    result = project.run("releases", "test", "--json")
    states = [e for e in events(result.stdout) if e["type"] == "host_state"]
    assert len(states) == 3
    rels = states[0]["releases"]
    assert [r["id"] for r in rels if r["current"]] == [good]
    assert [r["failed"] for r in rels] == [False, True]


def test_check_reports_each_host(project):
    result = project.run("check", "test", "--json")
    assert result.returncode == 0, result.stderr
    states = [e for e in events(result.stdout) if e["type"] == "host_state"]
    assert {s["status"] for s in states} == {"ok"}
    _hold_lock(project, 0, os.getpid())
    result = project.run("check", "test")
    assert result.returncode == 1 and "lock FAIL (held by alice@ci-7" in result.stdout


def test_config_command_and_errors(project):
    result = project.run("config", "test")
    assert result.returncode == 0 and "deploy_to:" in result.stdout and "web3" in result.stdout
    result = project.run("deploy", "tset")
    assert result.returncode == 2
    assert "unknown stage 'tset' (did you mean 'test'?) (known stages: test)" in result.stderr
    assert "Traceback" not in result.stderr
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text() + "keep_relases: 2\n")
    result = project.run("deploy", "test")
    assert result.returncode == 2 and "dsas.yaml:" in result.stderr and "did you mean 'keep_releases'" in result.stderr


def test_ci_pipeline_report_and_exit_codes(project, tmp_path):
    """No TTY, CI=true: every failure class gives its exit code, a summary event and a report."""
    report = tmp_path / "report.json"
    ok = project.run("deploy", "test", "--json", "--report", str(report))
    assert ok.returncode == 0
    data = json.loads(report.read_text())
    jsonschema.validate(data, REPORT_SCHEMA)
    assert data["exit_code"] == 0 and data["release"] == project.current(0)
    assert set(data["hosts"]) == {"web1", "web2", "web3"}
    assert all(h["outcome"] == "deployed" for h in data["hosts"].values())

    _hold_lock(project, 0, os.getpid())
    locked = project.run("deploy", "test", "--json", "--report", str(report))
    assert locked.returncode == 3 and summary(locked.stdout)["exit_code"] == 3
    assert json.loads(report.read_text())["exit_code"] == 3
    __import__("shutil").rmtree(project.deploy_root(0) / ".dsas-lock")

    failed = project.run("deploy", "test", "--revision", "broken", "--json", "--report", str(report))
    assert failed.returncode == 1 and summary(failed.stdout)["exit_code"] == 1
    assert {h["outcome"] for h in json.loads(report.read_text())["hosts"].values()} == {"reverted"}

    bad_config = project.run("deploy", "nope", "--json", "--report", str(report))
    assert bad_config.returncode == 2 and summary(bad_config.stdout)["exit_code"] == 2


def test_ci_credentials_from_environment_never_echoed(project):
    key_text = project.hosts.client_key.read_text()
    known_text = project.hosts.known_hosts.read_text()
    text = (project.dir / "dsas.yaml").read_text()
    project.write("dsas.yaml", text.replace(str(project.hosts.client_key), "/nonexistent/key")
                  .replace(str(project.hosts.known_hosts), "/nonexistent/known_hosts"))
    env = {"DSAS_SSH_PRIVATE_KEY": key_text, "DSAS_KNOWN_HOSTS": known_text}
    result = project.run("deploy", "test", "--json", env=env)
    assert result.returncode == 0, result.stderr
    secret_line = key_text.splitlines()[1]
    assert secret_line not in result.stdout and secret_line not in result.stderr
    # a wrong known_hosts secret is a refusal, not a silent trust
    other = "[127.0.0.1]:1 ssh-ed25519 " + known_text.split()[2] + "\n"
    result = project.run("deploy", "test", env={**env, "DSAS_KNOWN_HOSTS": other})
    assert result.returncode == 1 and "unknown host key" in result.stderr and "$DSAS_KNOWN_HOSTS" in result.stderr


def test_deploy_through_a_gateway_with_verified_keys(project):
    bastion = project.hosts.hosts[0]
    user = __import__("getpass").getuser()
    text = (project.dir / "dsas.yaml").read_text()
    project.write("dsas.yaml", text.replace("ssh:\n", f"ssh:\n  gateway: {user}@127.0.0.1:{bastion.port}\n"))
    result = project.run("deploy", "test", "--hosts", "web2,web3", "--json")
    assert result.returncode == 0, result.stderr
    assert project.current(1) and project.current(2) and project.current(0) is None
    # the bastion's own key is verified too: an unknown bastion is refused
    known = project.hosts.known_hosts
    known.write_text("".join(line for line in known.read_text().splitlines(keepends=True)
                             if f"]:{bastion.port} " not in line))
    result = project.run("deploy", "test", "--hosts", "web2")
    assert result.returncode == 1 and "gateway" in result.stderr and "unknown host key" in result.stderr


def test_proxyjump_in_a_stage_ssh_config_is_refused(project):
    (project.dir / "stages" / "ssh_config").write_text("Host 127.0.0.1\n  ProxyJump jump@192.0.2.1\n")
    text = (project.dir / "dsas.yaml").read_text()
    project.write("dsas.yaml", text.replace("ssh:\n", "ssh:\n  ssh_config: stages/ssh_config\n"))
    result = project.run("deploy", "test")
    assert result.returncode == 2 and "ProxyJump" in result.stderr and "ssh.gateway" in result.stderr


def test_a_reader_that_goes_away_does_not_stop_the_deploy(project):
    """`dsas deploy test --json | head -1`: the pipe closes after one line; the deploy must still
    finish on every host and exit with its own code, not die half-way on a broken pipe."""
    good = summary(project.run("deploy", "test", "--revision", "v1", "--json").stdout)["release"]
    from tests.conftest import DSAS

    proc = subprocess.Popen([*DSAS, "deploy", "test", "--json"], env={**os.environ, "CI": "true"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader is gone
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    new = [project.current(i) for i in range(3)]
    assert len(set(new)) == 1 and new[0] != good

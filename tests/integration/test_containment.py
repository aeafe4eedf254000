"""Issue 12 against real sshd hosts: containment, secrets, input errors, Capistrano on disk.

Like test_deploy.py, every test drives the CLI (as a subprocess unless it needs to plant
a bug) and then looks at the hosts' files and at what the child processes saw.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_deploy import snapshot, summary
from tests.support.apprepo import RESTART_OK, commit_files, git

pytestmark = pytest.mark.sshd

USER = pwd.getpwuid(os.getuid()).pw_name


def repo_with_symlink(path: Path, link: str, target: Path) -> None:
    """A repository that commits `link -> target` (an absolute path outside deploy_to)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "bin").mkdir()
    os.symlink(target, path / link)
    commit_files(path, {"app.txt": "evil\n", "bin/restart": RESTART_OK}, "symlinked")


def use_repo(project, repo: Path, extra: str = "") -> None:
    """Deploy `repo`, with `extra` keys replacing the project's own."""
    keys = {line.split(":")[0] for line in extra.splitlines()} | {"repo"}
    kept = [line for line in (project.dir / "dsas.yaml").read_text().splitlines(keepends=True)
            if line.split(":")[0] not in keys]
    project.write("dsas.yaml", "".join(kept) + f"repo: {repo}\n" + extra)


# ---- 1. nothing outside deploy_to is written ---------------------------------------------------

@pytest.mark.parametrize("link, extra, victim", [
    ("logs", "linked_dirs: [logs/app]\n", "app"),
    ("conf", "linked_files: [conf/db.yml]\n", "db.yml"),
], ids=["linked_dirs", "linked_files"])
def test_committed_symlink_is_never_followed(project, tmp_path, link, extra, victim):
    good = summary(project.run("deploy", "test", "--json").stdout)["release"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / victim).write_text("precious\n")
    for index in range(3):
        shared = project.deploy_root(index) / "shared" / "conf"
        shared.mkdir(parents=True, exist_ok=True)
        (shared / "db.yml").write_text("shared\n")
    repo_with_symlink(tmp_path / "evil", link, outside)
    use_repo(project, tmp_path / "evil", extra)
    result = project.run("deploy", "test")
    assert result.returncode == 1, result.stderr
    assert f"{link} is a symlink (to {outside})" in result.stderr and "refusing to write through it" in result.stderr
    assert sorted(p.name for p in outside.iterdir()) == [victim]
    assert (outside / victim).read_text() == "precious\n" and not (outside / victim).is_symlink()
    assert [project.current(i) for i in range(3)] == [good] * 3  # nothing switched
    assert [project.releases(i) for i in range(3)] == [[good]] * 3  # the new release is gone


def test_stage_is_a_name_never_a_path(project, tmp_path):
    outside = project.dir.parent / "outside.yaml"
    outside.write_text((project.dir / "stages" / "test.yaml").read_text())
    for name in ("../../outside", str(outside.with_suffix(""))):
        result = project.run("deploy", name)
        assert result.returncode == 2 and "STAGE: expected a name" in result.stderr, result.stderr
    assert all(project.releases(i) == [] for i in range(3))


# ---- 2. secrets never reach a child process -----------------------------------------------------

def test_ssh_secrets_are_not_in_any_child_environment(project, tmp_path):
    key = tmp_path / "key"
    key.write_bytes(project.hosts.client_key.read_bytes())
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "s3cret-passphrase", "-f", str(key)], check=True)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\ncat /proc/$$/environ > {dumps}/git-$$.env\nexec /usr/bin/git \"$@\"\n")
    wrapper.chmod(0o755)
    text = (project.dir / "dsas.yaml").read_text()
    project.write("dsas.yaml", text.replace(str(project.hosts.client_key), "/nonexistent/key") + (
        "hooks:\n  before_prepare:\n"
        f"    - local: cat /proc/$$/environ > {dumps}/hook-$$.env\n"
        f"    - local: git --version > /dev/null\n"))
    key_text = key.read_text()
    env = {"DSAS_SSH_PRIVATE_KEY": key_text, "DSAS_SSH_KEY_PASSPHRASE": "s3cret-passphrase",
           "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    result = project.run("deploy", "test", env=env)
    assert result.returncode == 0, result.stderr
    seen = {p.name.split("-")[0] for p in dumps.iterdir()}
    assert seen == {"git", "hook"}, seen  # GitPython's git processes and the local hook ran
    secret_line = key_text.splitlines()[1]
    for dump in dumps.iterdir():
        environ = dump.read_bytes().split(b"\0")
        names = {item.partition(b"=")[0] for item in environ}
        assert b"DSAS_SSH_PRIVATE_KEY" not in names and b"DSAS_SSH_KEY_PASSPHRASE" not in names, dump.name
        assert b"s3cret-passphrase" not in dump.read_bytes() and secret_line.encode() not in dump.read_bytes()
    assert any(b"DSAS_STAGE=test" in d.read_bytes() for d in dumps.glob("hook-*"))  # the hook's own env is there


# ---- 3. input errors are exit 2, found before any host is touched ------------------------------

def _untouched(project, before: dict) -> None:
    assert snapshot(project) == before
    assert all(not (project.deploy_root(i) / ".dsas-lock").exists() for i in range(3))


@pytest.mark.parametrize("variable, value, expected", [
    ("DSAS_STATE_DIR", "/dev/null/state", "$DSAS_STATE_DIR: /dev/null/state is not usable: /dev/null is not a directory"),
    ("DSAS_CACHE_DIR", "/dev/null/cache", "$DSAS_CACHE_DIR: /dev/null/cache is not usable"),
    ("DSAS_SSH_KEY_FILE", "/nonexistent/id", "$DSAS_SSH_KEY_FILE: /nonexistent/id does not exist"),
    ("DSAS_KNOWN_HOSTS", "# ok\n127.0.0.1 ssh-ed25519 not*base64\n", "$DSAS_KNOWN_HOSTS:2: the key of 127.0.0.1 is not valid base64"),
    ("DSAS_KNOWN_HOSTS_FILE", "/nonexistent/known_hosts", "$DSAS_KNOWN_HOSTS_FILE: /nonexistent/known_hosts does not exist"),
], ids=["state_dir", "cache_dir", "key_file", "known_hosts_text", "known_hosts_file"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry_run"])
def test_unusable_environment_is_exit_2_before_any_host(project, variable, value, expected, dry_run):
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text() + "lb:\n  driver: none\n")  # rolling: journal
    before = snapshot(project)
    result = project.run("deploy", "test", *(["--dry-run"] if dry_run else []), env={variable: value})
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr
    assert "ssh.identity_file" not in result.stderr and "Traceback" not in result.stderr
    _untouched(project, before)


def test_bad_branch_blames_the_key_not_the_option(project):
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text().replace("branch: main", "branch: mian"))
    result = project.run("deploy", "test")
    assert result.returncode == 2
    assert "dsas.yaml:3: branch: 'mian' is not a branch" in result.stderr and "--revision" not in result.stderr
    result = project.run("deploy", "test", "--revision", "nope")
    assert result.returncode == 2 and "--revision: 'nope' is not a branch" in result.stderr


def test_known_hosts_markers_and_missing_file(project):
    known = project.hosts.known_hosts
    lines = known.read_text().splitlines(keepends=True)
    web2_key = lines[1].split(None, 1)[1]
    ca_line = "@cert-authority *.example.com " + web2_key
    known.write_text(ca_line + "".join(lines))
    result = project.run("deploy", "test", "--json")
    assert result.returncode == 0, result.stderr
    assert f"{known}:1: @cert-authority line skipped" in result.stdout

    known.write_text("".join(lines) + "@revoked * " + web2_key)
    before = snapshot(project)
    result = project.run("deploy", "test")
    assert result.returncode == 1
    assert "is REVOKED" in result.stderr and f"{known}:4" in result.stderr and "SHA256:" in result.stderr
    _untouched(project, before)

    mistyped = known.with_name("known_host")
    text = (project.dir / "dsas.yaml").read_text()
    project.write("dsas.yaml", text.replace(str(known), str(mistyped)))
    result = project.run("deploy", "test", "--accept-new-host-keys")
    assert result.returncode == 2 and f"ssh.known_hosts: {mistyped} does not exist" in result.stderr
    assert "dsas.yaml:" in result.stderr and not mistyped.exists()
    known.write_text("".join(lines))


def test_dry_run_that_finds_a_stop_exits_non_zero(project):
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text() + "linked_files: [config/db.yml]\n")
    result = project.run("deploy", "test", "--dry-run")
    assert result.returncode == 1 and "a real deploy would stop" in result.stderr and "config/db.yml" in result.stderr
    for index in range(3):
        (project.deploy_root(index) / "shared" / "config").mkdir(parents=True)
        (project.deploy_root(index) / "shared" / "config" / "db.yml").write_text("x")
    assert project.run("deploy", "test", "--dry-run").returncode == 0


def test_internal_error_says_whether_anything_changed(project, monkeypatch, capsys):
    from dsasdeploy import cli
    from dsasdeploy.execute import deploy
    from dsasdeploy.execute.context import RunContext

    def bug(*args, **kwargs):
        raise RuntimeError("planted bug")

    def run() -> tuple[int, str]:
        with pytest.raises(SystemExit) as info:
            cli.main(["dsas", "deploy", "test"])
        return info.value.code, capsys.readouterr().err

    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # keep pytest's SIGTERM handler
    connect_all = RunContext.connect_all
    monkeypatch.setattr(RunContext, "connect_all", bug)  # before any host is touched
    code, err = run()
    assert code == 1 and "internal error: RuntimeError: planted bug; nothing was changed" in err
    monkeypatch.setattr(RunContext, "connect_all", connect_all)
    monkeypatch.setattr(deploy, "ready_problems", bug)  # after the lock was taken on every host
    code, err = run()
    assert code == 4 and "hosts may have been changed" in err


# ---- 4. Capistrano on disk -----------------------------------------------------------------------

CAP_RELEASES = ("20250101000000", "20250102000000")


def capistrano_tree(root: Path, shas: dict) -> None:
    """What `cap deploy` leaves: releases with REVISION, shared/, an absolute `current`, its log."""
    for rid, tag in zip(CAP_RELEASES, ("v1", "v2")):
        release = root / "releases" / rid
        (release / "bin").mkdir(parents=True)
        (release / "REVISION").write_text(shas[tag] + "\n")
        (release / "app.txt").write_text(f"capistrano {tag}\n")
        (release / "bin" / "restart").write_text(RESTART_OK)
    (root / "shared" / "log").mkdir(parents=True)
    os.symlink(root / "releases" / CAP_RELEASES[-1], root / "current")  # Capistrano's link is absolute
    (root / "revisions.log").write_text(
        f"Branch main (at {shas['v1']}) deployed as release {CAP_RELEASES[0]} by deploy\n"
        f"Branch main (at {shas['v2']}) deployed as release {CAP_RELEASES[1]} by deploy\n")


def test_capistrano_tree_deployed_listed_and_rolled_back(project):
    for index in range(3):
        capistrano_tree(project.deploy_root(index), project.shas)
    listed = project.run("releases", "test", "--json")
    assert listed.returncode == 0, listed.stderr
    states = [e for e in map(__import__("json").loads, listed.stdout.splitlines()) if e["type"] == "host_state"]
    assert {s["current"] for s in states} == {CAP_RELEASES[1]}
    assert [r["id"] for r in states[0]["releases"]] == list(CAP_RELEASES)

    env = {"USER": "", "LOGNAME": ""}  # the log names the uid's user even so
    release = summary(project.run("deploy", "test", "--json", env=env).stdout)["release"]
    assert [project.current(i) for i in range(3)] == [release] * 3
    log = project.log(0)
    assert log[:2] == (project.deploy_root(0) / "revisions.log").read_text().splitlines()[:2]
    assert log[-1] == f"Branch main (at {project.shas['v2']}) deployed as release {release} by {USER}"

    result = project.run("rollback", "test", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert [project.current(i) for i in range(3)] == [CAP_RELEASES[1]] * 3
    assert (project.deploy_root(1) / "current" / "app.txt").read_text() == "capistrano v2\n"
    assert project.log(2)[-1] == f"{USER} rolled back to release {CAP_RELEASES[1]}"
    assert not any("0@" in line or "=" in line for line in project.log(0))  # only Capistrano's lines

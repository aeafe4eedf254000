"""Truthful ends against real sshd hosts (issue 13): a live run is waited for, a host that could
not finish is never exit 0, every lock holder is seen by check/unlock/recover.

Runs are driven as subprocesses; the tests wait for their --json events, never for fixed times.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dsasdeploy.commands.lock import LockOwner
from tests.conftest import DSAS
from tests.integration.test_deploy import events, summary

pytestmark = pytest.mark.sshd


class Running:
    """A dsas run in the background whose --json events can be awaited one by one."""

    def __init__(self, project, *args: str):
        env = {**os.environ, "DSAS_PROJECT": str(project.dir), "CI": "true"}
        self.proc = subprocess.Popen([*DSAS, *args, "--json"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, predicate, timeout: float = 60) -> dict:
        """The first event matching `predicate`; fails if the run ends (or time runs out) first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"the run ended (exit {self.proc.wait()}) before the awaited event: "
                                     f"{self.proc.stderr.read()}\n{''.join(self.seen[-5:])}")
            self.seen.append(line)
            if line.startswith("{") and predicate(json.loads(line)):
                return json.loads(line)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return code, "".join(self.seen), self.proc.stderr.read()


def kill_ssh(host) -> None:
    """The host's SSH dies: its sshd and every session it forked (SIGKILL, by pid)."""
    root = host.process.pid
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    doomed, todo = [], [root]
    while todo:
        pid = todo.pop()
        doomed.append(pid)
        todo += children.get(pid, [])
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    host.process.wait()
    host.process = None


def revive(host) -> None:
    host.start(host.authorized_keys)
    host.wait_ready()


def hold_lock(root: Path, pid: int, controller: str, heartbeat: int | None = None, token: str = "other") -> None:
    lock = root / ".dsas-lock"
    lock.mkdir(parents=True)
    owner = LockOwner(token=token, owner="alice@ci-7", controller=controller, pid=pid, stage="test",
                      since="2026-11-27T10:00:00Z", revision="abcdef1234567890", command="deploy")
    (lock / "owner").write_text(owner.file_text())
    if heartbeat is not None:
        (lock / "heartbeat").write_text(f"{heartbeat}\n")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def wait_gate(path: Path) -> str:
    return f"while [ ! -e {path} ]; do sleep 0.05; done"


# ---- item 7: --lock-wait waits for a live run -------------------------------------------------

def test_lock_wait_waits_for_a_live_rolling_release(project, tmp_path):
    gate = tmp_path / "go"
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text() + "lb:\n  driver: none\n"
                  f"hooks:\n  before_publish:\n    - remote: {wait_gate(gate)}\n")
    first = Running(project, "deploy", "test")
    first.wait_for(lambda e: e["type"] == "batch" and e["status"] == "started")  # its rollout has begun
    beat = int((project.deploy_root(0) / ".dsas-lock" / "heartbeat").read_text())
    assert abs(time.time() - beat) < 60  # the lock says its run is alive
    second = Running(project, "deploy", "test", "--lock-wait", "120")
    waiting = second.wait_for(lambda e: e["type"] == "lock" and e["status"] in ("waiting", "held"))
    assert waiting["status"] == "waiting", waiting
    gate.write_text("")
    code, out, err = first.finish()
    assert code == 0, err
    code, out2, err2 = second.finish()
    assert code == 0, err2
    assert summary(out2)["release"] > summary(out)["release"]
    assert [project.current(i) for i in range(3)] == [summary(out2)["release"]] * 3


def test_heartbeat_tells_a_live_lock_from_a_dead_one_across_controllers(project):
    now = int(time.time())
    hold_lock(project.deploy_root(0), os.getpid(), "another-controller", heartbeat=now - 600)
    started = time.monotonic()
    result = project.run("deploy", "test", "--lock-wait", "60")
    assert result.returncode == 3 and "STALE" in result.stderr, result.stderr
    assert time.monotonic() - started < 30  # not waited for: its run is gone
    assert project.run("unlock", "test").returncode == 0  # stale: no --yes needed
    assert not (project.deploy_root(0) / ".dsas-lock").exists()

    hold_lock(project.deploy_root(0), os.getpid(), "another-controller", heartbeat=now)
    result = project.run("deploy", "test")
    assert result.returncode == 3 and "STALE" not in result.stderr and "--lock-wait" in result.stderr
    result = project.run("unlock", "test")
    assert result.returncode == 2 and "pass --yes" in result.stderr  # live: never broken silently


# ---- item 8: a host that could not finish is never exit 0 -------------------------------------

def test_host_lost_after_its_switch_is_exit_4_and_names_unlock(project, tmp_path):
    gate = tmp_path / "go"
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text()
                  + f"hooks:\n  after_publish:\n    - local: {wait_gate(gate)}\n")
    web2 = project.hosts.hosts[1]
    run = Running(project, "deploy", "test")
    run.wait_for(lambda e: e["type"] == "phase_finished" and e["phase"] == "publish" and e["status"] == "ok")
    try:
        kill_ssh(web2)
        gate.write_text("")
        code, out, err = run.finish()
        events(out)
        assert code == 4, err
        release = summary(out)["release"]
        assert "web2" in err and "dsas unlock test --hosts web2" in err and "web2: web2" not in err
        assert summary(out)["hosts"]["web2"]["outcome"] == "deployed_unfinished"
        for index in (0, 2):  # released where it could be
            assert not (project.deploy_root(index) / ".dsas-lock").exists()
            assert project.log(index)[-1].endswith(f"deployed as release {release} by " + project.log(index)[-1].split()[-1])
        assert (project.deploy_root(1) / ".dsas-lock").exists() and project.log(1) == []
        assert project.current(1) == release
    finally:
        if web2.process is None:
            revive(web2)
    result = project.run("unlock", "test", "--hosts", "web2")  # the command the message names
    assert result.returncode == 0, result.stderr
    assert not (project.deploy_root(1) / ".dsas-lock").exists()


# ---- item 2: every host that can hold the stage lock ------------------------------------------

def _drbd_stage(project) -> None:
    hosts = project.hosts.stage_yaml().replace("roles: [web]", "roles: [db]", 3).replace("roles: [db]", "roles: [web]", 1)
    project.write("stages/test.yaml", hosts + "drbd:\n  - name: r0\n    nodes: [web2, web3]\n    mount: /srv/data\n")


def test_check_and_unlock_cover_drbd_nodes(project):
    _drbd_stage(project)
    assert project.run("config", "test").returncode == 0
    hold_lock(project.deploy_root(2), dead_pid(), socket.gethostname())  # left by a killed switchover
    result = project.run("check", "test", "--json")
    assert result.returncode == 1, result.stdout
    states = {e["host"]: e for e in events(result.stdout) if e["type"] == "host_state"}
    assert set(states) == {"web1", "web2", "web3"}
    assert states["web3"]["status"] == "failed" and states["web2"]["status"] == "ok"
    lock = [c for c in states["web3"]["checks"] if c[0] == "lock"][0]
    assert "STALE" in lock[2] and "dsas unlock test --hosts web3" in lock[2]
    result = project.run("unlock", "test", "--hosts", "web3")
    assert result.returncode == 0, result.stderr
    assert not (project.deploy_root(2) / ".dsas-lock").exists()


# ---- item 10: recover names the lock that blocks deploys ----------------------------------------

def test_recover_names_a_stale_lock_and_releases_its_own_dead_runs(project, tmp_path):
    project.write("dsas.yaml", (project.dir / "dsas.yaml").read_text() + "lb:\n  driver: none\n")
    hold_lock(project.deploy_root(1), dead_pid(), socket.gethostname())
    result = project.run("recover", "test")
    assert result.returncode == 3, result.stderr
    assert "nothing to recover" in result.stderr and "dsas unlock test --hosts web2" in result.stderr
    assert (project.deploy_root(1) / ".dsas-lock").exists()  # someone else's: named, not broken
    project.run("unlock", "test")

    # the journal's last run finished its rollout, then died holding a lock: that one is released
    state = tmp_path / "state"
    journal = state / "journal" / "test.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"event": "begin", "token": "mine", "pid": dead_pid(),
                                   "controller": socket.gethostname()}) + "\n"
                       + json.dumps({"event": "end", "outcome": "deployed"}) + "\n")
    hold_lock(project.deploy_root(1), dead_pid(), socket.gethostname(), token="mine")
    result = project.run("recover", "test", env={"DSAS_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    assert not (project.deploy_root(1) / ".dsas-lock").exists()

"""Shared fixtures: real sshd test hosts on loopback and a dsas project pointing at them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dsasdeploy.devhosts import SSHD, DevHosts
from tests.support.apprepo import make_app_repo

os.environ.setdefault("DSAS_STRICT_EVENTS", "1")
DSAS = [sys.executable, "-m", "dsasdeploy"]


@pytest.fixture(scope="session")
def devhosts(tmp_path_factory):
    """Three real sshd processes on 127.0.0.1, each with its own host key and deploy root."""
    if not os.path.exists(SSHD):
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    hosts = DevHosts(tmp_path_factory.mktemp("devhosts"), 3).start()
    yield hosts
    hosts.stop()


@pytest.fixture(scope="session")
def app_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "app"
    shas = make_app_repo(repo)
    return repo, shas


@dataclass
class Project:
    """A dsas project directory for the devhosts; `run` drives the installed CLI."""

    dir: Path
    hosts: DevHosts
    shas: dict

    def run(self, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "DSAS_PROJECT": str(self.dir), "CI": "true", **(env or {})}
        return subprocess.run([*DSAS, *args], capture_output=True, text=True, env=full_env,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def deploy_root(self, index: int) -> Path:
        return self.hosts.hosts[index].deploy_to

    def current(self, index: int) -> str | None:
        link = self.deploy_root(index) / "current"
        return os.readlink(link).split("/")[-1] if link.is_symlink() else None

    def releases(self, index: int) -> list[str]:
        releases = self.deploy_root(index) / "releases"
        return sorted(p.name for p in releases.iterdir() if p.is_dir() and not p.is_symlink()) if releases.exists() else []

    def log(self, index: int) -> list[str]:
        """Capistrano's revisions.log."""
        path = self.deploy_root(index) / "revisions.log"
        return path.read_text().splitlines() if path.exists() else []

    def dsas_log(self, index: int) -> list[str]:
        """dsas's own log: every deploy, failure and rollback with its detail."""
        path = self.deploy_root(index) / ".dsas-revisions.log"
        return path.read_text().splitlines() if path.exists() else []

    def write(self, name: str, text: str) -> None:
        (self.dir / name).parent.mkdir(parents=True, exist_ok=True)
        (self.dir / name).write_text(text)


@pytest.fixture
def project(devhosts, app_repo, tmp_path, monkeypatch):
    """A fresh project: dsas.yaml + stages/test.yaml for the 3 hosts, empty deploy roots."""
    repo, shas = app_repo
    for host in devhosts.hosts:
        shutil.rmtree(host.deploy_to.parent, ignore_errors=True)
        host.deploy_to.mkdir(parents=True)
    devhosts.write_known_hosts()
    project_dir = tmp_path / "project"
    project_dir.mkdir()
    (project_dir / "dsas.yaml").write_text(
        "application: shop\n"
        f"repo: {repo}\n"
        "branch: main\n"
        "deploy_to: /srv/shop\n"
        "keep_releases: 3\n"
        "linked_dirs: [log]\n"
        "restart:\n  web: sh bin/restart\n"
        + devhosts.ssh_yaml()
    )
    (project_dir / "stages").mkdir()
    (project_dir / "stages" / "test.yaml").write_text(devhosts.stage_yaml())
    monkeypatch.setenv("DSAS_PROJECT", str(project_dir))
    monkeypatch.setenv("DSAS_CACHE_DIR", str(tmp_path / "cache"))
    return Project(project_dir, devhosts, shas)

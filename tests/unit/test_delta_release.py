"""Delta releases (issue 15): a host whose current release is intact gets only what changed.

Each revision of a real git repository changes the tree in one more way (add, modify, delete,
rename, mode, symlink target, a file becoming a directory and back, a name with a space and a
newline); each is deployed with `dsas deploy` to fake hosts (scripts run under sh, see
tests/support/fakefleet.py). After every delta deploy the new release must be the same tree
(paths, types, modes, symlink targets, content) as a full extraction of its revision, and
the release it was built from must be unchanged, inodes included.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.apprepo import RESTART_OK, git
from tests.support.fakefleet import fleet_fixture

STEPS = [
    ("base", {"app.txt": "v0\n", "bin/restart": RESTART_OK, "lib/a.py": "a = 1\n", "lib/b.py": "b = 1\n",
              "doc/readme": "read me\n", "conf": "plain file\n", "link": ("symlink", "app.txt"),
              "log/.keep": "", "tool.sh": "#!/bin/sh\necho hi\n"}, []),
    ("modify", {"app.txt": "v1\n"}, []),
    ("add", {"lib/new/c.py": "c = 3\n", "sp ace/n\nl": "odd name\n"}, []),
    ("delete", {}, ["lib/b.py"]),
    ("rename", {"doc/README.md": "read me\n"}, ["doc/readme"]),
    ("mode", {"tool.sh": ("mode", 0o755)}, []),
    ("symlink", {"link": ("symlink", "lib/a.py")}, []),
    ("file-to-dir", {"conf/main.ini": "[main]\n"}, ["conf"]),
    ("dir-to-file", {"conf": "plain again\n"}, ["conf/main.ini"]),
]


def commit(repo: Path, changes: dict, deletions: list, message: str) -> str:
    for name in deletions:
        git(repo, "rm", "-q", "-r", "--", name)
    for name, content in changes.items():
        path = repo / name
        if isinstance(content, tuple) and content[0] == "mode":
            path.chmod(content[1])
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        if isinstance(content, tuple):
            path.symlink_to(content[1])
        else:
            path.write_text(content)
            if name == "bin/restart":
                path.chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    git(repo, "tag", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("delta-repo") / "app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    shas = {name: commit(path, changes, deletions, name) for name, changes, deletions in STEPS}
    return path, shas


@pytest.fixture
def fleet(tmp_path, tmp_path_factory, repo, monkeypatch):
    fleet = fleet_fixture(tmp_path, tmp_path_factory, repo, monkeypatch, web=2)
    yield fleet
    fleet.stop()


def tree(root: Path, skip=("REVISION", "log")) -> dict[str, tuple]:
    """relative path -> (type, mode, content digest or link target), linked and dsas paths left out."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel.split("/")[0] in skip:
                continue
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir",)
            else:
                found[rel] = ("file", oct(st.st_mode & 0o7777), hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def inodes(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.lstat().st_ino, p.lstat().st_mode, p.lstat().st_mtime_ns)
            for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


def full_extraction(repo: Path, sha: str, into: Path) -> Path:
    """What a full archive of `sha` unpacks to (git archive | tar -x, as prepare does)."""
    into.mkdir(parents=True)
    data = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha], check=True,
                          capture_output=True).stdout
    subprocess.run(["tar", "-xf", "-", "-C", str(into)], input=data, check=True)
    return into


def release_dir(fleet, host: str, release: str) -> Path:
    return fleet.deploy_to(host) / "releases" / release


def test_every_kind_of_change_gives_the_tree_of_a_full_extraction(fleet, repo, tmp_path):
    path, shas = repo
    first = fleet.run("deploy", "test", "--revision", "base", "--json")
    assert first.code == 0, first.stderr
    assert {h["shipped"] for h in first.summary["hosts"].values()} == {"full"}  # nothing to build on
    previous = first.summary["release"]
    for name, _, _ in STEPS[1:]:
        before = inodes(release_dir(fleet, "web1", previous))
        run = fleet.run("deploy", "test", "--revision", name, "--json")
        assert run.code == 0, (name, run.stderr)
        release = run.summary["release"]
        hosts = run.summary["hosts"]
        assert {h["shipped"] for h in hosts.values()} == {f"delta from {previous}"}, name
        assert all(h["bytes_sent"] < 4096 for h in hosts.values()), (name, hosts)
        expected = tree(full_extraction(path, shas[name], tmp_path / f"full-{name}"))
        for host in ("web1", "web2"):
            assert tree(release_dir(fleet, host, release)) == expected, (name, host)
        assert inodes(release_dir(fleet, "web1", previous)) == before, f"{name}: the base release changed"
        previous = release


def test_a_tampered_base_gets_the_full_archive_and_full_forces_it(fleet, repo):
    assert fleet.run("deploy", "test", "--revision", "base").code == 0
    current = fleet.current("web2")
    (release_dir(fleet, "web2", current) / "lib" / "a.py").write_text("a = 'edited on the host'\n")

    run = fleet.run("deploy", "test", "--revision", "modify", "--json")

    assert run.code == 0, run.stderr
    shipped = {name: h["shipped"] for name, h in run.summary["hosts"].items()}
    assert shipped == {"web1": f"delta from {current}", "web2": "full"}
    new = run.summary["release"]
    assert (release_dir(fleet, "web2", new) / "lib" / "a.py").read_text() == "a = 1\n"
    forced = fleet.run("deploy", "test", "--revision", "add", "--full", "--json")
    assert forced.code == 0, forced.stderr
    assert {h["shipped"] for h in forced.summary["hosts"].values()} == {"full"}


def test_a_delta_keeps_runtime_files_of_the_base_out_of_the_new_release(fleet, repo):
    """Files an app or a hook wrote into its release are not part of its manifest: not copied."""
    assert fleet.run("deploy", "test", "--revision", "base").code == 0
    current = fleet.current("web1")
    (release_dir(fleet, "web1", current) / "tmp-cache").write_text("runtime\n")

    run = fleet.run("deploy", "test", "--revision", "modify", "--json")

    assert run.code == 0, run.stderr
    assert run.summary["hosts"]["web1"]["shipped"] == f"delta from {current}"
    assert not (release_dir(fleet, "web1", run.summary["release"]) / "tmp-cache").exists()

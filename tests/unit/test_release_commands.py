"""Release script builders: exact text where it matters, and real behaviour under sh."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from datetime import datetime, timezone

import pytest

from dsasdeploy.commands import release as rel
from dsasdeploy.commands.base import parse_markers, script
from dsasdeploy.commands.lock import LockOwner, acquire_lines, release_lines
from dsasdeploy.commands.revlog import LogEntry, failed_releases, parse_line
from dsasdeploy.paths import ReleasePaths, next_release_id

OWNER = LockOwner(token="t0k", owner="ci@runner", controller="runner", pid=4242, stage="production",
                  since="2026-11-27T10:00:00Z", revision="3f2a" * 10, command="deploy")


def sh(lines: list[str], stdin: bytes = b"", strict: bool = True) -> tuple[int, str, str]:
    done = subprocess.run(["sh", "-c", script(lines, strict=strict)], input=stdin, capture_output=True)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_switch_is_a_rename_never_ln_sfn():
    lines = rel.switch_lines(ReleasePaths("/srv/my app"), "20261127100000")
    assert "ln -s releases/20261127100000 '/srv/my app/releases/current'" in lines
    assert "mv -- '/srv/my app/releases/current' '/srv/my app/'" in lines
    assert not any("ln -sfn" in line or "mv -T" in line for line in lines)


def test_switch_replaces_current_atomically_under_sh(tmp_path):
    paths = ReleasePaths(str(tmp_path))
    for rid in ("20260101000000", "20260102000000"):
        (tmp_path / "releases" / rid).mkdir(parents=True)
    assert sh(rel.switch_lines(paths, "20260101000000"))[0] == 0
    assert os.readlink(tmp_path / "current") == "releases/20260101000000"
    code, out, _ = sh(rel.switch_lines(paths, "20260102000000"))
    assert code == 0 and "DSAS switched 20260102000000" in out
    assert os.readlink(tmp_path / "current") == "releases/20260102000000"
    assert not (tmp_path / "releases" / "current").exists()


def test_switch_refuses_a_missing_release(tmp_path):
    (tmp_path / "releases").mkdir()
    code, _, err = sh(rel.switch_lines(ReleasePaths(str(tmp_path)), "20260101000000"))
    assert code == 3 and "release 20260101000000 is missing" in err


def test_prepare_unpacks_links_and_writes_revision(tmp_path):
    paths = ReleasePaths(str(tmp_path))
    (tmp_path / "releases").mkdir()
    (tmp_path / "shared" / "config").mkdir(parents=True)
    (tmp_path / "shared" / "config" / "db.yml").write_text("secret: x\n")
    ctx = rel.ReleaseContext("production", "20260101000000", "abc123", None)
    lines = rel.prepare_script(paths, ctx, ["config/db.yml"], ["log", "tmp/cache"])
    code, out, err = sh(lines, archive({"app.txt": "hello\n", "log/old.log": "x"}))
    assert code == 0, err
    release = tmp_path / "releases" / "20260101000000"
    assert (release / "app.txt").read_text() == "hello\n"
    assert (release / "REVISION").read_text() == "abc123\n"
    assert os.readlink(release / "log") == str(tmp_path / "shared" / "log")
    assert (release / "tmp" / "cache").is_symlink()
    assert (release / "config" / "db.yml").read_text() == "secret: x\n"
    assert "DSAS prepared 20260101000000" in out


def test_prepare_failure_removes_the_half_made_release(tmp_path):
    paths = ReleasePaths(str(tmp_path))
    (tmp_path / "releases").mkdir()
    ctx = rel.ReleaseContext("production", "20260101000000", "abc123", None)
    code, out, err = sh(rel.prepare_script(paths, ctx, ["config/missing.yml"], []), archive({"a": "b"}))
    assert code == 3
    assert "missing linked file" in err
    assert [m.value for m in parse_markers(out) if m.key == "step"][-1] == "link_file config/missing.yml"
    assert not (tmp_path / "releases" / "20260101000000").exists()


def test_corrupt_archive_fails_and_cleans_up(tmp_path):
    (tmp_path / "releases").mkdir()
    ctx = rel.ReleaseContext("p", "20260101000000", "abc", None)
    code, _, _ = sh(rel.prepare_script(ReleasePaths(str(tmp_path)), ctx, [], []), b"not a tarball")
    assert code != 0
    assert list((tmp_path / "releases").iterdir()) == []


def test_probe_reports_layout_lock_and_log(tmp_path):
    paths = ReleasePaths(str(tmp_path))
    (tmp_path / "releases" / "20260101000000").mkdir(parents=True)
    (tmp_path / "releases" / "20260101000000" / "REVISION").write_text("aaa\n")
    (tmp_path / "releases" / "20260102000000").mkdir()
    os.symlink("releases/20260101000000", tmp_path / "current")
    (tmp_path / "revisions.log").write_text(  # an older dsas wrote its own lines here
        "2026-01-02T00:00:00Z failed release=20260102000000 revision=bbb stage=p by=x@y reason=restart\n"
        "Branch main (at aaa) deployed as release 20260101000000 by deploy\n")
    (tmp_path / ".dsas-revisions.log").write_text(
        "2026-01-02T00:00:00Z failed release=20260103000000 revision=ccc stage=p by=x@y reason=restart\n")
    code, out, _ = sh(rel.probe_script(paths, ["config/db.yml"], OWNER, create=True))
    probe = rel.parse_probe(parse_markers(out))
    assert code == 0
    assert probe.current == "20260101000000"
    assert probe.releases == {"20260101000000": "aaa", "20260102000000": ""}
    assert probe.missing_linked_files == ("config/db.yml",)
    assert probe.lock == "acquired" and probe.writable and probe.tar
    assert failed_releases(probe.log) == {"20260102000000", "20260103000000"}
    assert ("deployed", "20260101000000", "deploy") in {(e.event, e.release, e.user) for e in probe.log}
    # a second run finds the lock held and says by whom
    second = rel.parse_probe(parse_markers(sh(rel.probe_script(paths, [], OWNER, create=True))[1]))
    assert second.lock == "held" and second.lock_owner == OWNER


def test_dry_probe_creates_nothing(tmp_path):
    target = tmp_path / "srv" / "app"
    code, out, _ = sh(rel.probe_script(ReleasePaths(str(target)), [], None, create=False))
    probe = rel.parse_probe(parse_markers(out))
    assert code == 0 and not probe.exists and probe.writable and probe.lock == "free"
    assert not (tmp_path / "srv").exists()


def test_lock_release_only_with_our_token(tmp_path):
    paths = ReleasePaths(str(tmp_path))
    sh(acquire_lines(paths, OWNER))
    sh(release_lines(paths, "someone-else"))
    assert (tmp_path / ".dsas-lock").is_dir()
    assert "DSAS lock released" in sh(release_lines(paths, "t0k"))[1]
    assert not (tmp_path / ".dsas-lock").exists()


def test_revert_switches_back_and_logs_failure(tmp_path):
    paths = ReleasePaths(str(tmp_path))
    for rid in ("20260101000000", "20260102000000"):
        (tmp_path / "releases" / rid).mkdir(parents=True)
    os.symlink("releases/20260102000000", tmp_path / "current")
    ctx = rel.ReleaseContext("p", "20260102000000", "bbb", "20260101000000")
    entry = LogEntry("2026-01-02T00:00:00Z", "failed", {"release": "20260102000000", "reason": "restart web@web2"})
    code, out, _ = sh(rel.revert_script(paths, ctx, [("web", "pwd -P > ../../restarted")], entry, "t"), strict=False)
    assert code == 0 and "DSAS reverted 20260101000000" in out
    assert os.readlink(tmp_path / "current") == "releases/20260101000000"
    assert (tmp_path / "restarted").read_text().strip().endswith("20260101000000")
    assert parse_line((tmp_path / ".dsas-revisions.log").read_text()).fields["reason"] == "restart_web@web2"
    assert not (tmp_path / "revisions.log").exists()  # Capistrano's log has no failed deploys


def test_log_line_round_trip():
    entry = LogEntry("2026-11-27T10:00:00Z", "deployed", {"release": "20261127100000", "ref": "main", "by": "a@b"})
    assert entry.line() == "2026-11-27T10:00:00Z deployed release=20261127100000 ref=main by=a@b"
    assert parse_line(entry.line()) == entry
    assert parse_line("Tagged release v1 for the team") is None  # neither dsas's nor Capistrano's


@pytest.mark.parametrize("entry, line", [
    (LogEntry("t", "deployed", {"release": "20261127100000", "revision": "3f2a", "ref": "main", "by": "alice@ci-7"}),
     "Branch main (at 3f2a) deployed as release 20261127100000 by alice"),
    (LogEntry("t", "rolled_back", {"release": "20261127100000", "from": "20261127110000", "by": "root@vm"}),
     "root rolled back to release 20261127100000"),
    (LogEntry("t", "failed", {"release": "20261127100000", "by": "root@vm"}), None),
], ids=["deployed", "rolled_back", "failed"])
def test_capistrano_lines_written_and_read_back(entry, line):
    assert entry.capistrano_line() == line
    if line is not None:
        back = parse_line(line)
        assert (back.event, back.release, back.user) == (entry.event, entry.release, entry.user)
        assert back.fields.get("revision") == entry.fields.get("revision")


def test_finish_writes_capistrano_and_dsas_lines(tmp_path):
    entry = LogEntry("2026-01-02T00:00:00Z", "deployed", {"release": "20260102000000", "revision": "bbb",
                                                          "ref": "v1.2", "by": "ci@runner"})
    code, _, err = sh(rel.finish_script(ReleasePaths(str(tmp_path)), entry, [], "t"))
    assert code == 0, err
    assert (tmp_path / "revisions.log").read_text() == "Branch v1.2 (at bbb) deployed as release 20260102000000 by ci\n"
    assert (tmp_path / ".dsas-revisions.log").read_text() == entry.line() + "\n"


def test_release_id_never_repeats_or_goes_back():
    now = datetime(2026, 11, 27, 10, 0, 0, tzinfo=timezone.utc)
    assert next_release_id(now, []) == "20261127100000"
    assert next_release_id(now, ["20261127100000"]) == "20261127100001"
    assert next_release_id(now, ["20261127120000"]) == "20261127120001"  # a host clock ahead


def test_lock_owner_describe_says_who_and_since():
    now = datetime(2026, 11, 27, 10, 3, 0, tzinfo=timezone.utc)
    text = OWNER.describe(now)
    assert text.startswith("ci@runner (pid 4242 on runner) since 2026-11-27T10:00:00Z (3m ago)")
    assert "3f2a3f2a3f2a" in text
    assert LockOwner.from_lines(OWNER.file_text().splitlines()) == OWNER
    assert LockOwner.from_lines(["token=x"]) is None


def test_revert_reports_a_failed_restart_with_its_exit_code(tmp_path):
    paths = ReleasePaths(str(tmp_path))
    for rid in ("20260101000000", "20260102000000"):
        (tmp_path / "releases" / rid).mkdir(parents=True)
    ctx = rel.ReleaseContext("p", "20260102000000", "bbb", "20260101000000")
    code, out, _ = sh(rel.revert_script(paths, ctx, [("web", "exit 7")], None, None), strict=False)
    assert code == 1 and "DSAS error restart_web" in out
    assert os.readlink(tmp_path / "current") == "releases/20260101000000"  # the switch still happened


def test_revert_fails_loudly_when_the_switch_fails(tmp_path):
    """A failing mv (full or read-only disk) must not read as 'switched back' (shells ignore set -e
    inside `if ( ... )`); the restart must not run on the failed release; the lock stays."""
    paths = ReleasePaths(str(tmp_path))
    for rid in ("20260101000000", "20260102000000"):
        (tmp_path / "releases" / rid).mkdir(parents=True)
    os.symlink("releases/20260102000000", tmp_path / "current")
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "mv").write_text("#!/bin/sh\necho 'mv: cannot move: No space left on device' >&2\nexit 1\n")
    (fakebin / "mv").chmod(0o755)
    sh(acquire_lines(paths, OWNER))
    ctx = rel.ReleaseContext("p", "20260102000000", "bbb", "20260101000000")
    lines = [f"PATH={fakebin}:$PATH"] + rel.revert_script(paths, ctx, [("web", "touch restarted-here")], None, "t0k")
    code, out, _ = sh(lines, strict=False)
    assert code == 1 and "DSAS error switch" in out and "DSAS reverted" not in out
    assert os.readlink(tmp_path / "current") == "releases/20260102000000"
    assert not (tmp_path / "releases" / "20260102000000" / "restarted-here").exists()
    assert (tmp_path / ".dsas-lock").is_dir()


def test_hooks_never_read_the_archive_on_stdin(tmp_path):
    paths = ReleasePaths(str(tmp_path))
    (tmp_path / "releases").mkdir()
    ctx = rel.ReleaseContext("p", "20260101000000", "abc", None)
    lines = rel.prepare_script(paths, ctx, [], [], before=[("eat", "cat > /dev/null")])
    code, _, err = sh(lines, archive({"a.txt": "x"}))
    assert code == 0, err
    assert (tmp_path / "releases" / "20260101000000" / "a.txt").read_text() == "x"


def archive_with_links(files: dict[str, str], links: dict[str, str]) -> bytes:
    """A release archive holding symlinks, as `git archive` of a repository that commits them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


@pytest.mark.parametrize("linked_files, linked_dirs, link, victim", [
    ([], ["logs/app"], "logs", "app"),  # rm -rf + ln -s through a committed dir symlink
    (["conf/db.yml"], [], "conf", "db.yml"),  # a linked file through one
    ([], ["a/b/c"], "a/b", "c"),  # a deeper parent
], ids=["linked_dir", "linked_file", "deeper"])
def test_prepare_never_writes_through_a_committed_symlink(tmp_path, linked_files, linked_dirs, link, victim):
    deploy_to, outside = tmp_path / "deploy", tmp_path / "outside"
    (deploy_to / "releases").mkdir(parents=True)
    (deploy_to / "shared" / "conf").mkdir(parents=True)
    (deploy_to / "shared" / "conf" / "db.yml").write_text("shared\n")
    outside.mkdir()
    (outside / victim).write_text("keep me\n")
    ctx = rel.ReleaseContext("production", "20260101000000", "abc123", None)
    files = {"a/x": "x"} if link == "a/b" else {}
    lines = rel.prepare_script(ReleasePaths(str(deploy_to)), ctx, linked_files, linked_dirs)
    code, _, err = sh(lines, archive_with_links(files, {link: str(outside)}))
    assert code == 3, err
    assert f"{deploy_to}/releases/20260101000000/{link} is a symlink (to {outside})" in err
    assert (outside / victim).read_text() == "keep me\n" and not (outside / victim).is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == [victim]
    assert not (deploy_to / "releases" / "20260101000000").exists()


def test_prepare_does_not_write_revision_through_a_committed_symlink(tmp_path):
    deploy_to, outside = tmp_path / "deploy", tmp_path / "outside.txt"
    (deploy_to / "releases").mkdir(parents=True)
    outside.write_text("keep me\n")
    ctx = rel.ReleaseContext("production", "20260101000000", "abc123", None)
    code, _, err = sh(rel.prepare_script(ReleasePaths(str(deploy_to)), ctx, [], []),
                      archive_with_links({}, {"REVISION": str(outside)}))
    assert code == 0, err
    assert outside.read_text() == "keep me\n"
    assert (deploy_to / "releases" / "20260101000000" / "REVISION").read_text() == "abc123\n"

"""Command groups (`dsas lab`, `dsas drbd`) answer as the README writes them."""

from __future__ import annotations

import pytest

from dsasdeploy.cli import group_help, normalize_words
from dsasdeploy.tasks import builtin_collection

from .test_cli import dsas


@pytest.mark.parametrize("args", [["lab"], ["lab", "--help"], ["lab", "-h"]])
def test_lab_group_help_lists_its_commands(tmp_path, args):
    result = dsas(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: dsas lab <command>")
    for command in ("up", "down", "status", "restart", "ssh"):
        assert f"\n  {command} " in result.stdout
    assert result.stderr == ""


def test_drbd_group_help(tmp_path):
    result = dsas("drbd", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "switchover" in result.stdout and "status" in result.stdout


def test_group_help_only_for_a_bare_group():
    ns = builtin_collection()
    assert group_help(["dsas", "lab", "up"], ns) is None
    assert group_help(["dsas", "deploy", "--help"], ns) is None
    assert group_help(["dsas", "lab", "ssh", "--help"], ns) is None


def test_lab_ssh_takes_host_and_command_as_words():
    ns = builtin_collection()
    words = normalize_words(["dsas", "lab", "ssh", "web1", "uptime"], ns)
    assert words == ["dsas", "lab.ssh", "web1", "uptime"]
    ssh = ns.collections["lab"]["ssh"]
    assert ssh.positional == ["host", "cmd"]

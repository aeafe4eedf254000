"""The installed `dsas` as a user and a pipeline run it: help, usage errors, init, completion."""

from __future__ import annotations

import os
import subprocess
import sys

DSAS = [sys.executable, "-m", "dsasdeploy"]


def dsas(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "DSAS_PROJECT"}
    full_env.update({"CI": "true", **(env or {})})
    return subprocess.run([*DSAS, *args], capture_output=True, text=True, cwd=cwd, env=full_env,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_help_lists_commands_and_exit_codes(tmp_path):
    result = dsas("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("deploy", "rollback", "releases", "check", "unlock", "config", "recover", "init", "lab.up"):
        assert command in result.stdout
    assert "3 stage locked" in result.stdout


def test_task_help_does_not_run_the_task(tmp_path):
    result = dsas("deploy", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--lock-wait" in result.stdout and "error" not in result.stderr


def test_usage_errors_exit_2_without_traceback(tmp_path):
    for args in (["deploy"], ["no-such-command"], ["deploy", "x", "--bogus"]):
        result = dsas(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.startswith("dsas: error:")


def test_no_project_is_a_usage_error(tmp_path):
    result = dsas("deploy", "staging", cwd=tmp_path)
    assert result.returncode == 2 and "no dsas.yaml" in result.stderr and "dsas init" in result.stderr


def test_init_scaffolds_a_project_that_validates(tmp_path):
    result = dsas("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("dsas.yaml", "stages/staging.yaml", "stages/production.yaml", "recipes/example.py"):
        assert (tmp_path / name).is_file()
    for stage in ("staging", "production"):
        checked = dsas("config", stage, "--json", cwd=tmp_path)
        assert checked.returncode == 0, checked.stderr
    assert "example.disk" in dsas("--help", cwd=tmp_path).stdout  # the recipe is mounted
    again = dsas("init", cwd=tmp_path)
    assert again.returncode == 2 and "already exist" in again.stderr


def test_shell_completion_scripts():
    for shell in ("bash", "zsh"):
        result = dsas("--print-completion-script", shell)
        assert result.returncode == 0 and "dsas" in result.stdout and "--complete" in result.stdout
    listed = dsas("--complete", "--", "dsas")
    assert "deploy" in listed.stdout.split()


def test_version():
    result = dsas("--version")
    assert result.returncode == 0 and result.stdout.startswith("dsas ") and "paramiko" in result.stdout

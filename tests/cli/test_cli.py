"""The installed `dsas` as a user and a pipeline run it: help, usage errors, init, completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    for name in ("dsas.yaml", "stages/staging.yaml", "stages/production.yaml", "recipes/example.py",
                 "recipes/templates/preseed.cfg.j2", "recipes/templates/kickstart.cfg.j2",
                 "recipes/templates/pxelinux.cfg.j2", "recipes/templates/grub.cfg.j2"):
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


def add_server_project(tmp_path):
    """The repo's lab project, with its own key and known_hosts (the lab need not be up)."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "stages").mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    (tmp_path / "known_hosts").write_text("")
    text = (root / "dsas.yaml").read_text().replace("/var/lib/dsas-lab/ssh/id_ed25519", str(tmp_path / "key")) \
        .replace("/var/lib/dsas-lab/ssh/known_hosts", str(tmp_path / "known_hosts"))
    (tmp_path / "dsas.yaml").write_text(text)
    (tmp_path / "stages" / "lab.yaml").write_text((root / "stages" / "lab.yaml").read_text())
    return tmp_path


def test_add_server_bad_request_is_one_line_per_problem_exit_2(tmp_path):
    project = add_server_project(tmp_path)
    result = dsas("add-server", "lab", "--name", "web1", "--mac", "52:54:00:zz:00:01", "--ip", "10.77.2.12",
                  "--role", "web,wbe", "--bmc", "127.0.0.1:9623", cwd=project)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for needle in ("already has a host named web1", "not a MAC address", "10.77.2.12: already used by web2",
                   "--role wbe: unknown role"):
        assert needle in result.stderr, result.stderr
    missing = dsas("add-server", "lab", "--name", "web9", cwd=project)
    assert missing.returncode == 2 and "needs --mac, --ip, --role, --bmc" in missing.stderr, missing.stderr
    resume = dsas("add-server", "lab", "--name", "web9", "--resume", cwd=project)
    assert resume.returncode == 2 and "no unfinished add-server of web9" in resume.stderr, resume.stderr


def test_add_server_needs_a_bmc_password_and_never_takes_it_as_an_argument(tmp_path):
    project = add_server_project(tmp_path)
    (project / "dsas.yaml").write_text((project / "dsas.yaml").read_text().replace(
        "password_file: /var/lib/dsas-lab/ipmi/password", "password_file: /nonexistent/pw"))
    result = dsas("add-server", "lab", "--name", "web9", "--mac", "52:54:00:77:02:09", "--ip", "10.77.2.209",
                  "--role", "web", "--bmc", "127.0.0.1:9623", cwd=project, env={"IPMI_PASSWORD": ""})
    assert result.returncode == 2 and "provision.bmc.password_file /nonexistent/pw" in result.stderr, result.stderr
    assert "--password" not in dsas("add-server", "--help").stdout  # no option that would put it in argv


def test_add_server_reinstall_needs_yes_without_a_terminal(tmp_path):
    project = add_server_project(tmp_path)
    result = dsas("add-server", "lab", "--name", "web9", "--mac", "52:54:00:77:02:09", "--ip", "10.77.2.209",
                  "--role", "web", "--bmc", "127.0.0.1:9623", "--reinstall", cwd=project)
    assert result.returncode == 2, result.stderr
    assert "WIPE whatever machine answers at 10.77.2.209" in result.stderr and "pass --yes" in result.stderr


@pytest.mark.parametrize("argv", [["--complete", "--", "dsas", ""], ["config", "lab"]])
def test_a_reader_that_closes_the_pipe_early_is_not_an_error(argv):
    """`dsas releases prod | head -1`: the reader leaves; dsas exits 0 without a word on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before dsas writes a byte
    env = {**os.environ, "DSAS_PROJECT": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "dsasdeploy", *argv], stdout=write_end, stderr=subprocess.PIPE,
                          text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")

"""`dsas` starts fast: --version and --help import no command code, `config` no SSH code.

Checked on what a run imports (sys.modules in a child process), which is deterministic,
not on time (bench/cli_start.py measures the time). And the static command index the
fast answers come from says what the real command collection says.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsasdeploy import cli, cli_index
from dsasdeploy.cli_program import command_summaries
from dsasdeploy.config import load as config_load
from dsasdeploy.tasks import builtin_collection
from tests.support.inprocess import run_dsas

ROOT = Path(__file__).resolve().parents[2]

# a command's modules, imported only when that command runs (or lists the commands)
SSH_AND_FRIENDS = ("fabric", "paramiko", "cryptography", "rich", "git", "jinja2", "ruamel", "dsasdeploy.execute",
                   "dsasdeploy.commands", "dsasdeploy.plan", "dsasdeploy.scm", "dsasdeploy.report")
PROGRAM = ("invoke", "pydantic", "yaml", "dsasdeploy.tasks", "dsasdeploy.cli_program", "dsasdeploy.config",
           "dsasdeploy.lab")

PROBE = """\
import json, sys
from dsasdeploy.cli import main
try:
    main(["dsas", *sys.argv[1:]])
finally:
    sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


def imported_by(*args: str, cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `dsas ARGS` as the console script does, in a fresh interpreter: (result, its modules)."""
    full_env = {k: v for k, v in os.environ.items() if k != "DSAS_PROJECT"}
    full_env.update({"CI": "true", **(env or {})})
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd,
                            env=full_env, stdin=subprocess.DEVNULL, timeout=60)
    marker = result.stderr.rindex("\nMODULES ")
    modules = set(json.loads(result.stderr[marker + len("\nMODULES "):]))
    result.stderr = result.stderr[:marker]
    return result, modules


def loaded(modules: set[str], prefixes) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_the_index_lists_what_the_collection_holds():
    assert sorted(cli_index.COMMANDS) == sorted(command_summaries(builtin_collection()))


def test_the_fast_answers_print_what_the_program_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSAS_PROJECT", raising=False)
    for args in (["--version"], ["-V"], ["--help"], ["-h"], []):
        fast = io.StringIO()
        assert cli.answer_at_once(args, fast), args
        code, out, err = run_dsas(args)  # the invoke program, in-process
        assert (code, err) == (0, "") and fast.getvalue() == out, args


def test_version_names_the_imported_libraries():
    import fabric
    import invoke
    import paramiko

    assert cli_index.version_line() == (f"dsas {cli_index.__version__} (fabric {fabric.__version__}, "
                                        f"invoke {invoke.__version__}, paramiko {paramiko.__version__})")


@pytest.mark.parametrize("name", ["fabric", "invoke", "paramiko", "dsasdeploy", "PyYAML", "ruamel.yaml"])
def test_installed_version_is_what_importlib_metadata_says(name):
    from importlib.metadata import version

    assert cli_index.installed_version(name) == version(name)


def test_installed_version_reads_the_first_dist_info_on_the_path(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "Some_Lib-2.0.1.dist-info").mkdir(parents=True)
    (second / "some_lib-1.0.dist-info").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "gone"), str(first), str(second)])
    assert cli_index.installed_version("some-lib") == "2.0.1"


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["--help"], ["-h"], []])
def test_version_and_help_import_no_command_code(tmp_path, args):
    result, modules = imported_by(*args, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == ""
    assert result.stdout.startswith("dsas ")
    assert loaded(modules, SSH_AND_FRIENDS + PROGRAM) == []


def test_config_imports_no_ssh_code(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "dsas.yaml").write_text((ROOT / "dsas.yaml").read_text())
    (tmp_path / "stages" / "lab.yaml").write_text((ROOT / "stages" / "lab.yaml").read_text())
    result, modules = imported_by("config", "lab", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "application: labapp" in result.stdout
    assert loaded(modules, SSH_AND_FRIENDS + ("dsasdeploy.lab",)) == []  # the lab group: not for `config`


def recipe_project(tmp_path: Path) -> Path:
    """A project whose one recipe leaves a mark when it is imported."""
    (tmp_path / "stages").mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "dsas.yaml").write_text((ROOT / "dsas.yaml").read_text())
    (tmp_path / "stages" / "lab.yaml").write_text((ROOT / "stages" / "lab.yaml").read_text())
    (tmp_path / "recipes" / "hello.py").write_text(
        "from pathlib import Path\n"
        "from invoke import task\n"
        "Path(__file__).with_name('imported').touch()\n\n"
        "@task\n"
        "def world(c):\n"
        "    '''Say hello.'''\n"
        "    print('hello world')\n")
    return tmp_path


def test_recipes_are_mounted_for_help_and_their_commands_only(tmp_path):
    project = recipe_project(tmp_path)
    mark = project / "recipes" / "imported"
    for args in (["--help"], [], ["-h"]):  # the fast path cannot know the recipe's commands
        result, modules = imported_by(*args, cwd=project / "stages")
        assert result.returncode == 0 and "  hello.world    Say hello." in result.stdout, args
        assert mark.exists()
        mark.unlink()
    result, _ = imported_by("hello.world", cwd=project)
    assert result.returncode == 0 and result.stdout == "hello world\n" and mark.exists()
    mark.unlink()
    result, modules = imported_by("config", "lab", cwd=project)  # a built-in command: no recipe needed
    assert result.returncode == 0 and not mark.exists()
    result, _ = imported_by("--help", cwd=tmp_path.parent, env={"DSAS_PROJECT": str(project)})
    assert "hello.world" in result.stdout


def test_the_fast_path_finds_the_project_dsas_finds(tmp_path, monkeypatch):
    """cli.recipes_may_add_commands looks where config.load.find_project_dir looks."""
    assert cli.PROJECT_FILE == config_load.PROJECT_FILE
    project = recipe_project(tmp_path / "p")
    deep = project / "stages" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.delenv("DSAS_PROJECT", raising=False)
    for cwd in (project, deep):
        monkeypatch.chdir(cwd)
        assert config_load.find_project_dir() == project and cli.recipes_may_add_commands()
    monkeypatch.chdir(tmp_path)
    assert not cli.recipes_may_add_commands()
    monkeypatch.setenv("DSAS_PROJECT", str(project))
    assert config_load.find_project_dir() == project and cli.recipes_may_add_commands()
    (project / "recipes" / "hello.py").rename(project / "recipes" / "_hello.py")  # not mounted
    assert not cli.recipes_may_add_commands()

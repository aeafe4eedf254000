"""The `dsas` program: an invoke Program with a fixed set of subcommands.

One place maps failures to exit codes (status.ExitStatus): task errors arrive as
invoke Exit with their code; parse errors are usage errors (2); anything
unexpected is a bug, reported in one line (--traceback for the trace): exit 1 when it
changed nothing (before any remote command, a read-only command), else exit 4.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional

from invoke import Argument, Collection, Exit, ParseError, Program, UnexpectedExit

from . import __version__
from .environment import Environment, using_environment
from .errors import DsasError
from .status import ExitStatus
from .tasks import builtin_collection

HELP_TEXT = """\
dsas {version}: releases over SSH, Capistrano-style.

Usage: dsas <command> STAGE [options]        dsas <command> --help

Commands:
{commands}

A project is a directory with dsas.yaml (application, repo, deploy_to, ...) and
stages/<stage>.yaml (hosts and roles); dsas finds it from the current directory
upwards, or from $DSAS_PROJECT.

Global options (before the command):
  --traceback     show the Python traceback of an unexpected error
  -V, --version   show versions
  --print-completion-script=bash|zsh   shell completion (see README)

Exit codes: 0 ok, 1 failed and rolled back cleanly, 2 usage or config error,
3 stage locked by another deploy, 4 failed and NOT fully restored (look now).
"""


class DsasProgram(Program):
    """`dsas`: invoke's parser, dsas's help, errors and exit codes, in an Environment
    (its streams, confirmation and backend: environment.py)."""

    def __init__(self, *args, env: Optional[Environment] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.env = env or Environment()

    def core_args(self) -> list:
        return super().core_args() + [
            Argument(names=("traceback",), kind=bool, default=False,
                     help="Show the Python traceback of an unexpected error."),
        ]

    def print_version(self) -> None:
        import fabric
        import invoke
        import paramiko

        print(f"dsas {__version__} (fabric {fabric.__version__}, invoke {invoke.__version__}, "
              f"paramiko {paramiko.__version__})", file=self.env.stdout)

    def print_help(self) -> None:
        lines = []
        for name in sorted(self.namespace.task_names):
            task = self.namespace[name]
            doc = (task.__doc__ or "").strip().splitlines()
            lines.append(f"  {name:<14} {doc[0] if doc else ''}")
        print(HELP_TEXT.format(version=__version__, commands="\n".join(lines)), file=self.env.stdout)

    def print_task_help(self, name: str) -> None:
        super().print_task_help(name)

    def normalize_argv(self, argv) -> None:
        super().normalize_argv(argv)
        text = group_help(self.argv, self.namespace)
        if text is not None:  # `dsas lab`, `dsas lab --help`: the group's commands
            print(text, file=self.env.stdout)
            sys.exit(0)
        self.argv = normalize_words(self.argv, self.namespace)

    def run(self, argv: Optional[list] = None, exit: bool = True) -> None:
        with using_environment(self.env):
            self._run(argv, exit)

    def _run(self, argv: Optional[list], exit: bool) -> None:
        stderr = self.env.stderr
        try:
            self.create_config()
            self.parse_core(argv)
            self.parse_collection()
            self.parse_tasks()
            self.parse_cleanup()
            self.update_config()
            self.execute()
        except ParseError as exc:
            print(f"dsas: error: {exc} (see `dsas --help`)", file=stderr)
            if exit:
                sys.exit(int(ExitStatus.USAGE))
        except Exit as exc:
            if exc.message:
                print(exc.message, file=stderr)
            if exit:
                sys.exit(exc.code)
            elif exc.code:
                raise
        except DsasError as exc:  # raised by a task outside run_remote (e.g. `dsas lab up` without root)
            print("\n".join(f"dsas: error: {line}" for line in str(exc).splitlines()), file=stderr)
            if exit:
                sys.exit(int(exc.exit_status))
        except UnexpectedExit as exc:
            print(f"dsas: error: {str(exc).splitlines()[0]}", file=stderr)
            if exit:
                sys.exit(int(ExitStatus.FAILED_ROLLED_BACK))
        except KeyboardInterrupt:
            print("dsas: interrupted", file=stderr)
            if exit:
                sys.exit(int(ExitStatus.FAILED_ROLLED_BACK))
        except Exception as exc:  # a bug: one line, the trace only on request
            if getattr(self, "core", None) is not None and self.args.traceback.value:
                traceback.print_exc(file=stderr)
            # exit 4 means a human must look at the hosts: only when a host may have been changed
            unchanged = getattr(exc, "dsas_nothing_changed", False)
            print(f"dsas: internal error: {type(exc).__name__}: {exc}"
                  + ("; nothing was changed" if unchanged else "; hosts may have been changed: check them")
                  + " (rerun with --traceback; please report it)", file=stderr)
            if exit:
                sys.exit(int(ExitStatus.FAILED_ROLLED_BACK if unchanged else ExitStatus.NEEDS_HUMAN))
            raise


def group_help(words: list[str], namespace: Collection) -> Optional[str]:
    """Help text of a command group (`dsas lab`, `dsas drbd --help`), or None for anything else."""
    if len(words) < 2 or words[1] not in namespace.collections:
        return None
    if len(words) > 2 and not all(w in ("--help", "-h") for w in words[2:]):
        return None
    group = namespace.collections[words[1]]
    lines = [f"Usage: dsas {words[1]} <command> [options]        dsas {words[1]} <command> --help", "",
             "Commands:"]
    for name in sorted(group.task_names):
        doc = (group[name].__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<14} {doc[0] if doc else ''}")
    return "\n".join(lines)


def normalize_words(words: list[str], namespace: Collection) -> list[str]:
    """Make the natural forms work: `dsas lab up` -> `lab.up`; `dsas deploy --help` -> task help.

    (invoke names nested tasks with dots, and a positional argument would swallow `--help`.)
    """
    words = list(words)
    if len(words) >= 3 and words[1] in namespace.collections and "." not in words[1]:
        sub = namespace.collections[words[1]]
        if words[2] in sub.task_names:
            words[1:3] = [f"{words[1]}.{words[2]}"]
    if len(words) >= 3 and words[1] in namespace.task_names and any(w in ("--help", "-h") for w in words[2:]):
        return [words[0], "--help", words[1]]
    return words


def load_project_recipes(namespace: Collection, project_dir: Optional[Path], stderr=None) -> None:
    """Mount each recipes/*.py of the user's project (its `ns` or its tasks) by file name."""
    if project_dir is None:
        return
    for path in sorted((project_dir / "recipes").glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"dsas_recipes_{path.stem}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            collection = getattr(module, "ns", None) or Collection.from_module(module)
            namespace.add_collection(collection, name=path.stem.replace("_", "-"))
        except Exception as exc:  # a broken recipe must not break `dsas deploy`
            print(f"dsas: warning: recipes/{path.name} not loaded: {type(exc).__name__}: {exc}",
                  file=stderr or sys.stderr)


def _project_dir() -> Optional[Path]:
    from .config.load import find_project_dir
    from .errors import DsasError

    try:
        return find_project_dir()
    except DsasError:
        return None


def make_program(env: Optional[Environment] = None) -> DsasProgram:
    """The `dsas` program with the built-in commands and the project's recipes, run in `env`
    (default: the process's streams, a terminal if there is one, SSH)."""
    env = env or Environment()
    namespace = builtin_collection()
    load_project_recipes(namespace, _project_dir(), env.stderr)
    return DsasProgram(name="dsas", binary="dsas", binary_names=["dsas"], version=__version__, namespace=namespace,
                       env=env)


def _terminate_as_interrupt(signum, frame) -> None:
    # SIGTERM (CI cancelling a job) takes the same way back as Ctrl-C.
    raise KeyboardInterrupt


def main(argv: Optional[list] = None) -> None:
    """Console entry point."""
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    make_program().run(argv)

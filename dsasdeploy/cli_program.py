"""The `dsas` program: an invoke Program with a fixed set of subcommands (cli.main runs it
when it cannot answer from cli_index alone).

One place maps failures to exit codes (status.ExitStatus): task errors arrive as
invoke Exit with their code; parse errors are usage errors (2); anything
unexpected is a bug, reported in one line (--traceback for the trace): exit 1 when it
changed nothing (before any remote command, a read-only command), else exit 4.
"""

from __future__ import annotations

import importlib.util
import os
import select
import sys
import traceback
from pathlib import Path
from typing import Optional

from invoke import Argument, Collection, Exit, ParseError, Program, UnexpectedExit

from . import __version__
from .cli_index import help_text, version_line
from .environment import Environment, using_environment
from .errors import DsasError
from .status import ExitStatus
from .tasks import builtin_collection, mount_lab


class DsasProgram(Program):
    """`dsas`: invoke's parser, dsas's help, errors and exit codes, in an Environment
    (its streams, confirmation and backend: environment.py).

    With `mount_later`, the `lab` group and then the project's recipes/*.py are mounted once
    the command line is known, unless it runs a built-in top-level command (neither can
    replace one: a name would conflict), so that `dsas config STAGE` does not import them."""

    def __init__(self, *args, env: Optional[Environment] = None, mount_later: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.env = env or Environment()
        self.mount_later = mount_later

    def core_args(self) -> list:
        return super().core_args() + [
            Argument(names=("traceback",), kind=bool, default=False,
                     help="Show the Python traceback of an unexpected error."),
        ]

    def print_version(self) -> None:
        print(version_line(), file=self.env.stdout)

    def print_help(self) -> None:
        print(help_text(command_summaries(self.namespace)), file=self.env.stdout)

    def print_task_help(self, name: str) -> None:
        super().print_task_help(name)

    def normalize_argv(self, argv) -> None:
        super().normalize_argv(argv)
        if self.mount_later:
            self.mount_later = False
            if not runs_builtin_command(self.argv, self.namespace):
                mount_lab(self.namespace)
                load_project_recipes(self.namespace, _project_dir(), self.env.stderr)
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
            if isinstance(exc, BrokenPipeError) and reader_gone(self.env.stdout):
                # `dsas releases prod | head -1`: the reader has what it wanted; nothing failed
                if exit:
                    sys.exit(0)
                return
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


def reader_gone(stream) -> bool:
    """Whether `stream` is a pipe whose reader closed it; if so, later writes (the interpreter's
    own flush at exit included) go to /dev/null instead of raising again."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):  # a pipe without readers
        return False
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)
    return True


def command_summaries(namespace: Collection) -> list[tuple[str, str]]:
    """(name, first line of its docstring) of every task of `namespace`, dotted names included."""
    summaries = []
    for name in namespace.task_names:
        doc = (namespace[name].__doc__ or "").strip().splitlines()
        summaries.append((name, doc[0] if doc else ""))
    return summaries


def runs_builtin_command(words: list[str], namespace: Collection) -> bool:
    """`dsas deploy ...`, `dsas config ...`: the first word is a top-level built-in task.

    Not a group (`dsas lab ...`): a recipe named lab.py would replace that collection."""
    return len(words) > 1 and words[1] in namespace.tasks


def group_help(words: list[str], namespace: Collection) -> Optional[str]:
    """Help text of a command group (`dsas lab`, `dsas drbd --help`), or None for anything else."""
    if len(words) < 2 or words[1] not in namespace.collections:
        return None
    if len(words) > 2 and not all(w in ("--help", "-h") for w in words[2:]):
        return None
    group = namespace.collections[words[1]]
    lines = [f"Usage: dsas {words[1]} <command> [options]        dsas {words[1]} <command> --help", "",
             "Commands:"]
    lines += [f"  {name:<14} {summary}" for name, summary in sorted(command_summaries(group))]
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
    """The `dsas` program with the built-in commands, the lab's and the project's recipes, run
    in `env` (default: the process's streams, a terminal if there is one, SSH)."""
    return DsasProgram(name="dsas", binary="dsas", binary_names=["dsas"], version=__version__,
                       namespace=builtin_collection(lab=False), env=env or Environment(), mount_later=True)

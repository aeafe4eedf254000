"""`dsas`, the console entry point: answers `--version` and `--help` at once, runs the rest.

`dsas --version`, `dsas`, `dsas --help` and `dsas -h` are answered from cli_index (a static
list of the commands) without importing invoke or any command's code; everything else, and
these too when a project's recipes/*.py could add commands, runs the invoke program
(cli_program.py), which imports only what the command it runs needs.

One place maps failures to exit codes (status.ExitStatus): cli_program.DsasProgram.
"""

from __future__ import annotations

import os
import signal
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Optional, TextIO

from .cli_index import COMMANDS, help_text, version_line

PROJECT_FILE = "dsas.yaml"  # as config/load.py: find_project_dir

# what cli.py defined before cli_program.py, still importable from here (tests/support/inprocess.py)
_PROGRAM_NAMES = ("DsasProgram", "make_program", "group_help", "normalize_words", "load_project_recipes")


def __getattr__(name: str):
    if name in _PROGRAM_NAMES:
        from . import cli_program

        return getattr(cli_program, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def recipes_may_add_commands() -> bool:
    """Whether the project dsas would find (config.load.find_project_dir: $DSAS_PROJECT, else
    the current directory or a parent with dsas.yaml) has recipes/*.py the program would mount.

    Errs on the side of yes: $DSAS_PROJECT counts even without its dsas.yaml."""
    explicit = os.environ.get("DSAS_PROJECT")
    if explicit:
        candidates = [Path(explicit).expanduser()]
    else:
        here = Path.cwd().resolve()
        candidates = [next((d for d in (here, *here.parents) if (d / PROJECT_FILE).is_file()), None)]
    return any(not path.name.startswith("_") for project in candidates if project is not None
               for path in (project / "recipes").glob("*.py"))


def answer_at_once(args: list[str], stdout: TextIO) -> bool:
    """Print what `dsas ARGS` prints when the static index is enough to know it; else False."""
    if args in (["--version"], ["-V"]):
        print(version_line(), file=stdout)
        return True
    if args in ([], ["--help"], ["-h"]):
        if find_spec("dsasdeploy.lab") is None or recipes_may_add_commands():
            return False  # the list differs from COMMANDS: let the program build it
        print(help_text(COMMANDS), file=stdout)
        return True
    return False


def _terminate_as_interrupt(signum, frame) -> None:
    # SIGTERM (CI cancelling a job) takes the same way back as Ctrl-C.
    raise KeyboardInterrupt


def main(argv: Optional[list] = None) -> None:
    """Console entry point."""
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if answer_at_once(list((sys.argv if argv is None else argv)[1:]), sys.stdout):
        return
    from .cli_program import make_program

    make_program().run(argv)

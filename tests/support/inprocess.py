"""Run the real `dsas` program in this process, in an Environment the test makes."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from typing import Optional

from dsasdeploy.cli import make_program
from dsasdeploy.environment import Environment


def quiet_environment(**overrides) -> Environment:
    """String streams, no terminal (as in CI), SSH unless `backend_factory` says otherwise."""
    values = {"stdin": io.StringIO(), "stdout": io.StringIO(), "stderr": io.StringIO(), "is_terminal": False,
              **overrides}
    return Environment(**values)


def run_dsas(argv: list[str], env: Optional[Environment] = None) -> tuple[int, str, str]:
    """`dsas ARGV...` in-process: (exit code, stdout, stderr).

    What the program writes goes to the environment's streams (string streams by default);
    what a library prints to sys.stdout/sys.stderr meanwhile (invoke's task help) is captured
    there too. A BaseException other than SystemExit (a simulated crash) is not caught.
    """
    env = env or quiet_environment()
    program = make_program(env)
    code = 0
    with redirect_stdout(env.stdout), redirect_stderr(env.stderr):
        try:
            program.run(["dsas", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, _text(env.stdout), _text(env.stderr)


def _text(stream) -> str:
    getvalue = getattr(stream, "getvalue", None)
    return getvalue() if getvalue is not None else ""

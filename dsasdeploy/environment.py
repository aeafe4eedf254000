"""What a dsas run talks to: its streams, whether a person is there, and its transport.

Modelled on httpie's `Environment`: the real `dsas` runs in the default one (the process's
std streams, a terminal when stdin and stdout are TTYs and $CI is unset, a prompt on that
terminal, SSH to the hosts). A test builds one with string streams, a canned confirm and a
recording backend (execute/recording.py), and runs the real program in-process with it.

The program (cli.py) makes its environment the current one for the run; `run_remote`
(tasks/common.py) takes the reporter's stream, the confirmation and the backend from it.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional, TextIO

if TYPE_CHECKING:
    from .execute.backend import Backend
    from .inventory import Stage

BackendFactory = Callable[["Stage", bool], "Backend"]  # (stage, accept_new_host_keys) -> an open backend


def ssh_backend(stage: "Stage", accept_new_host_keys: bool) -> "Backend":
    """The real transport: Fabric connections per the stage's ssh settings, keys verified."""
    from .execute.backend import SshBackend
    from .execute.session import SessionFactory

    return SshBackend(SessionFactory(stage.settings.ssh, stage.project_dir, accept_new_host_keys,
                                     blame=stage.blame))


def in_ci() -> bool:
    """$CI says this is a pipeline (no person to ask, whatever the streams are)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class Environment:
    """The streams, the person (or not) and the transport of one dsas run."""

    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    is_terminal: Optional[bool] = None  # None: stdin and stdout are TTYs and $CI is unset
    confirm: Optional[Callable[[str], bool]] = None  # None: ask on stdin/stdout
    backend_factory: BackendFactory = ssh_backend

    def __post_init__(self) -> None:
        if self.is_terminal is None:
            self.is_terminal = _isatty(self.stdin) and _isatty(self.stdout) and not in_ci()

    def ask(self, question: str) -> bool:
        """A yes/no question to the person at the terminal: `confirm` if given, else a prompt."""
        if self.confirm is not None:
            return self.confirm(question)
        if self.stdin is sys.stdin and self.stdout is sys.stdout:
            answer = input(f"{question} [y/N] ")  # line editing on a real terminal
        else:
            self.stdout.write(f"{question} [y/N] ")
            self.stdout.flush()
            answer = self.stdin.readline()
        return answer.strip().lower() in ("y", "yes")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False


_current: ContextVar[Optional[Environment]] = ContextVar("dsas_environment", default=None)


def current_environment() -> Environment:
    """The environment of the running program; outside one (e.g. `fab deploy`), the default."""
    return _current.get() or Environment()


@contextmanager
def using_environment(env: Environment) -> Iterator[Environment]:
    """Make `env` the current environment for the block."""
    token = _current.set(env)
    try:
        yield env
    finally:
        _current.reset(token)

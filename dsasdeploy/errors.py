"""The exceptions dsas raises on purpose. Each maps to one exit code in cli.py.

Messages are one line, written for the operator: what went wrong, and where.
"""

from __future__ import annotations

from .status import ExitStatus


class DsasError(Exception):
    """Base of every error dsas reports without a traceback."""

    exit_status = ExitStatus.FAILED_ROLLED_BACK


class UsageError(DsasError):
    """Bad command-line arguments, missing prerequisites (e.g. not root for the lab)."""

    exit_status = ExitStatus.USAGE


class ConfigError(UsageError):
    """One or more problems in dsas.yaml or a stage file; each problem is one line.

    The message shows the first MAX_SHOWN problems and says how many more there are.
    """

    MAX_SHOWN = 20

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:self.MAX_SHOWN]
        hidden = len(self.problems) - len(shown)
        if hidden:
            shown.append(f"... and {hidden} more problem(s) not shown; fix these first")
        super().__init__("\n".join(shown))


class LockHeld(DsasError):
    """The stage lock is held by another deploy (or a stale one)."""

    exit_status = ExitStatus.LOCKED


class RemoteError(DsasError):
    """A step failed on a host; everything was put back (exit 1)."""


class HostKeyError(RemoteError):
    """A host presented an unknown or changed SSH host key; nothing was run on it."""


class IncompleteRestore(DsasError):
    """A failure could not be fully undone: the message says what a human must do."""

    exit_status = ExitStatus.NEEDS_HUMAN

"""Helpers for pure command builders: quoting, scripts, and the marker protocol.

Every remote phase is ONE POSIX sh script. It reports progress as marker lines on
stdout, `DSAS <key> <value...>`; everything else it runs writes to stderr, so
markers cannot be forged by a restart command's chatter.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Iterable, Mapping

MARK = "DSAS"


def q(value: object) -> str:
    """Quote one word for a POSIX shell."""
    return shlex.quote(str(value))


def render(argv: Iterable[object]) -> str:
    """argv -> one shell-safe command line."""
    return " ".join(q(a) for a in argv)


def mark(key: str, value: str = "") -> str:
    """A shell line printing a marker; `value` is shell text (may hold "$VARS")."""
    return f'echo "{MARK} {key}{(" " + value) if value else ""}"'


def mark_literal(key: str, value: str = "") -> str:
    """A shell line printing a marker with a fixed value."""
    return f"printf '%s\\n' {q(f'{MARK} {key} {value}'.rstrip())}"


def exports(env: Mapping[str, str]) -> list[str]:
    """`export K='v'` lines (never for secrets: they would sit in the script text)."""
    return [f"export {k}={q(v)}" for k, v in env.items()]


def script(lines: Iterable[str], *, strict: bool = True) -> str:
    """Join lines into one script; strict scripts stop at the first failing command."""
    head = ["set -eu"] if strict else ["set -u"]
    return "\n".join([*head, *lines]) + "\n"


def as_sh_command(body: str) -> str:
    """The exec string that runs `body` under POSIX sh whatever the login shell is."""
    return f"sh -c {q(body)}"


@dataclass(frozen=True)
class Marker:
    key: str
    value: str


def parse_markers(stdout: str) -> list[Marker]:
    """Marker lines of a script's stdout, in order; other lines are ignored."""
    found = []
    for line in stdout.splitlines():
        if line.startswith(MARK + " "):
            _, _, rest = line.partition(" ")
            key, _, value = rest.partition(" ")
            found.append(Marker(key, value))
    return found


def last_step(markers: list[Marker]) -> str:
    """The name of the last step a script announced (where it failed, if it failed)."""
    steps = [m.value for m in markers if m.key == "step"]
    return steps[-1] if steps else "start"

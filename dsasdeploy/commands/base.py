"""Helpers for pure command builders: quoting, scripts, and the marker protocol.

Every remote phase is ONE POSIX sh script. It reports progress as marker lines on
stdout, `DSAS <key> <value...>`; everything else it runs writes to stderr, so
markers cannot be forged by a restart command's chatter.
A marker may also head raw text printed after it (a file, a tool's answer), up to the
next marker line: `marked_text` and `split_at_marker` cut stdout there.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

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
    """One marker line, `DSAS <key> <value...>`, as a script printed it."""

    key: str
    value: str = ""

    @property
    def line(self) -> str:
        """The stdout line that is this marker."""
        return f"{MARK} {self.key}" + (f" {self.value}" if self.value else "")


def marker_in(line: str) -> Optional[Marker]:
    """The marker a line of stdout is (None: an ordinary line). The one reader of the syntax."""
    if not line.startswith(MARK + " "):
        return None
    _, _, rest = line.partition(" ")
    key, _, value = rest.partition(" ")
    return Marker(key, value)


def parse_markers(stdout: str) -> list[Marker]:
    """Marker lines of a script's stdout, in order; other lines are ignored."""
    return [marker for marker, _ in _read_lines(stdout) if marker is not None]


def split_at_marker(stdout: str, marker: Marker) -> list[str]:
    """`stdout` cut at each line that is `marker`, like str.split: the texts around those
    lines, line ends kept (other marker lines stay in the texts)."""
    pieces: list[str] = []
    current: list[str] = []
    for found, line in _read_lines(stdout):
        if found == marker:
            pieces.append("".join(current))
            current = []
        else:
            current.append(line)
    pieces.append("".join(current))
    return pieces


def text_before_marker(text: str) -> str:
    """The lines of `text` before its first marker line (all of it if it has none)."""
    head = []
    for found, line in _read_lines(text):
        if found is not None:
            break
        head.append(line)
    return "".join(head)


def marked_text(stdout: str, marker: Marker) -> Optional[str]:
    """What a script printed between the first `marker` line and the next marker line
    (e.g. a file it cat'ed); None when `marker` is not there."""
    pieces = split_at_marker(stdout, marker)
    return text_before_marker(pieces[1]) if len(pieces) > 1 else None


def last_step(markers: list[Marker]) -> str:
    """The name of the last step a script announced (where it failed, if it failed)."""
    steps = [m.value for m in markers if m.key == "step"]
    return steps[-1] if steps else "start"


def _read_lines(text: str) -> Iterator[tuple[Optional[Marker], str]]:
    """Each line of `text` with its line end, and the marker it is (None: an ordinary line)."""
    return zip(map(marker_in, text.splitlines()), text.splitlines(keepends=True))

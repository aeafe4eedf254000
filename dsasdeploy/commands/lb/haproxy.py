"""HAProxy through its runtime API (stats socket, level admin): builders and parsers.

Drain = `set server BACKEND/SERVER state drain` (no new sessions, existing ones
finish), drained when `scur` and `qcur` read 0 in `show stat`; restore = `state ready`.
`show stat` is CSV; fields are read by header name, never by position.
"""

from __future__ import annotations

import csv
import io

from ..base import q


def api_script(socket_path: str, commands: list[str]) -> list[str]:
    """Send runtime API commands (joined with ';') through socat; print the answer."""
    return [
        "command -v socat >/dev/null 2>&1 || { echo 'socat is not installed' >&2; exit 3; }",
        f"printf '%s\\n' {q('; '.join(commands))} | socat stdio UNIX-CONNECT:{q(socket_path)}",
    ]


def set_state(backend: str, server: str, state: str) -> str:
    if state not in ("ready", "drain", "maint"):
        raise ValueError(f"unknown HAProxy server state {state!r}")
    return f"set server {backend}/{server} state {state}"


def parse_show_stat(text: str) -> list[dict[str, str]]:
    """Rows of `show stat` as dicts keyed by the header names (`# pxname,svname,...`)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        return []
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:]] + lines[1:])))
    return [dict(row) for row in reader]


def server_rows(rows: list[dict[str, str]], backend: str) -> dict[str, dict[str, str]]:
    """The server rows of one backend, by server name (BACKEND/FRONTEND rows left out)."""
    return {r["svname"]: r for r in rows if r.get("pxname") == backend and r.get("svname") not in ("BACKEND", "FRONTEND")}


def sessions(row: dict[str, str]) -> int:
    return int(row.get("scur") or 0) + int(row.get("qcur") or 0)


def taken_out(rows: dict[str, dict[str, str]], names: list[str]) -> dict[str, str]:
    """Servers among `names` an operator (or an interrupted run) put in MAINT or DRAIN:
    name -> status. dsas must not drain these, or its restore (`ready`) would bring them back."""
    return {name: rows[name].get("status", "") for name in names
            if name in rows and rows[name].get("status", "").startswith(("MAINT", "DRAIN"))}


def in_service(row: dict[str, str]) -> bool:
    """UP (or "no check": a server without health checks is in service unless drained)."""
    status = row.get("status", "")
    return status.split(" ")[0] == "UP" or status == "no check"

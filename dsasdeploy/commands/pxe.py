"""Scripts for the boot server (the host with role pxe): pure builders and parsers.

Files are shipped base64-encoded inside the script (no quoting of their content), written to a
temporary name in the target directory and renamed, so dnsmasq, TFTP and HTTP never see half
a file; each is read back as a sha256 the caller compares with what it rendered.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from dataclasses import dataclass
from typing import Sequence

from .base import Marker, mark, mark_literal, q


@dataclass(frozen=True)
class BootServerState:
    """What the boot-server probe found."""

    missing: tuple[str, ...]  # "tftp_root /srv/tftp" ...
    dhcp_entries: tuple[tuple[str, str], ...]  # (file, line) of every dhcp-hostsdir entry
    existing: tuple[str, ...]  # paths of our files that already exist


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def probe_script(directories: Sequence[tuple[str, str]], required_files: Sequence[str],
                 dhcp_hostsdir: str, our_files: Sequence[str]) -> list[str]:
    """Check the boot server's directories and files; list the DHCP reservations there."""
    lines = []
    for key, path in directories:
        lines.append(f"[ -d {q(path)} ] && [ -w {q(path)} ] || " + mark_literal("missing", f"{key} {path}"))
    for path in required_files:
        lines.append(f"[ -f {q(path)} ] || " + mark_literal("missing", f"file {path}"))
    lines += [
        f"for f in {q(dhcp_hostsdir)}/*; do",
        "  [ -f \"$f\" ] || continue",
        "  while IFS= read -r l || [ -n \"$l\" ]; do " + mark("dhcp", "$f $l") + "; done < \"$f\"",
        "done",
    ]
    for path in our_files:
        lines.append(f"[ ! -e {q(path)} ] || " + mark_literal("exists", path))
    return lines


def parse_probe(markers: Sequence[Marker]) -> BootServerState:
    dhcp = []
    for m in markers:
        if m.key == "dhcp":
            path, _, line = m.value.partition(" ")
            if line.strip() and not line.lstrip().startswith("#"):
                dhcp.append((path, line.strip()))
    return BootServerState(missing=tuple(m.value for m in markers if m.key == "missing"),
                           dhcp_entries=tuple(dhcp),
                           existing=tuple(m.value for m in markers if m.key == "exists"))


def dhcp_conflicts(entries: Sequence[tuple[str, str]], mac: str, ip: str, own_file: str) -> list[str]:
    """Reservations elsewhere that already bind this MAC or this IP."""
    problems = []
    for path, line in entries:
        if path == own_file:
            continue
        fields = [f.strip().lower() for f in line.split(",")]
        if mac in fields:
            problems.append(f"the boot server already reserves MAC {mac} in {path}: {line}")
        elif ip in fields:
            problems.append(f"the boot server already reserves IP {ip} in {path}: {line}")
    return problems


def install_files_script(files: Sequence[tuple[str, str, str]]) -> list[str]:
    """Write (path, content, mode) atomically, in order; report each file's sha256."""
    lines = []
    for path, content, mode in files:
        directory = posixpath.dirname(path)
        tmp = posixpath.join(directory, "." + posixpath.basename(path) + ".dsas-tmp")
        encoded = base64.b64encode(content.encode()).decode()
        lines += [
            mark_literal("step", f"write {path}"),
            f"mkdir -p {q(directory)}",
            f"printf '%s' {q(encoded)} | base64 -d > {q(tmp)}",
            f"chmod {mode} {q(tmp)}",
            f"mv -f {q(tmp)} {q(path)}",
            mark("sum", f"{path} $(sha256sum {q(path)} | cut -d' ' -f1)"),
        ]
    return lines


def verify_sums(markers: Sequence[Marker], files: Sequence[tuple[str, str, str]]) -> list[str]:
    """Files whose read-back sha256 is not what was rendered."""
    sums = dict(m.value.rsplit(" ", 1) for m in markers if m.key == "sum" and " " in m.value)
    return [path for path, content, _ in files if sums.get(path) != sha256(content)]


def remove_files_script(paths: Sequence[str]) -> list[str]:
    """Remove files (missing is fine) and prove they are gone."""
    lines = []
    for path in paths:
        lines += [f"rm -f {q(path)}", f"[ ! -e {q(path)} ] && " + mark_literal("gone", path)]
    return lines


def gone(markers: Sequence[Marker], paths: Sequence[str]) -> list[str]:
    """Paths NOT proven removed."""
    removed = {m.value for m in markers if m.key == "gone"}
    return [p for p in paths if p not in removed]


def read_callback_script(path: str) -> list[str]:
    """The callback file, base64 in one marker (its content is untrusted text)."""
    return [f"if [ -f {q(path)} ]; then " + mark("callback", f"$(head -c 8192 {q(path)} | base64 | tr -d '\\n')")
            + "; else " + mark_literal("no_callback") + "; fi"]


def parse_callback_marker(markers: Sequence[Marker]) -> str | None:
    for m in markers:
        if m.key == "callback":
            return base64.b64decode(m.value.encode()).decode("utf-8", "replace")
    return None

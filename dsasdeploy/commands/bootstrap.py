"""The first script a freshly installed host runs (add-server's bootstrap step). Pure builder."""

from __future__ import annotations

import base64
from typing import Mapping, Sequence

from ..paths import ReleasePaths
from .base import Marker, mark, q
from .pxe import install_files_script


def bootstrap_script(hostname: str, deploy_user: str, deploy_to: str, dirs: Sequence[str],
                     shared_files: Mapping[str, tuple[str, str]]) -> list[str]:
    """Check it is the machine we installed and healthy, then the release layout, the deploy
    user (when it is not root: created, given root's authorized key, owner of deploy_to) and
    the shared files (path -> (content, mode)). Runs as root."""
    lines = [
        f"[ \"$(hostname -s 2>/dev/null || hostname)\" = {q(hostname)} ] || "
        f"{{ echo \"dsas: this host says it is $(hostname), expected {hostname}\" >&2; exit 3; }}",
        mark("hostname", "$(hostname)"),
        "if [ -r /proc/mdstat ] && grep -q '\\[U*_[U_]*\\]' /proc/mdstat; then "
        "echo 'dsas: a RAID array is degraded (see /proc/mdstat); not putting this host into service' >&2; exit 3; fi",
    ]
    if deploy_user != "root":
        u = q(deploy_user)
        lines += [
            f"id -u {u} >/dev/null 2>&1 || useradd -m -s /bin/sh {u} 2>/dev/null || adduser -D -s /bin/sh {u}",
            f"h=$(awk -F: -v u={u} '$1 == u {{ print $6 }}' /etc/passwd)",
            "[ -n \"$h\" ] || { echo \"dsas: no home directory for the deploy user\" >&2; exit 3; }",
            "mkdir -p \"$h/.ssh\" && chmod 700 \"$h/.ssh\"",
            "cp /root/.ssh/authorized_keys \"$h/.ssh/authorized_keys\" && chmod 600 \"$h/.ssh/authorized_keys\"",
            f"chown -R {u} \"$h/.ssh\"",
            mark("deploy_user", deploy_user),
        ]
    lines.append(f"mkdir -p {' '.join(q(d) for d in dirs)}")
    lines += install_files_script([(path, content, mode) for path, (content, mode) in shared_files.items()])
    if deploy_user != "root":
        lines.append(f"chown -R {q(deploy_user)} {q(deploy_to)}")
    return lines


def read_shared_files_script(paths: ReleasePaths, names: Sequence[str]) -> list[str]:
    """On a peer: one `file` marker per shared file that exists: its name, mode and content (base64)."""
    lines = []
    for name in names:
        path = q(paths.shared_path(name))
        lines.append(f"[ -f {path} ] && " + mark("file", f"{name} $(stat -c %a {path}) $(base64 < {path} | tr -d '\\n')"))
    return lines


def parse_shared_files(markers: Sequence[Marker]) -> dict[str, tuple[str, str]]:
    """name -> (content, mode) from the `file` markers of read_shared_files_script (mode 640 if unreadable)."""
    found = {}
    for marker in markers:
        if marker.key == "file":
            name, mode, data = (marker.value.split(" ", 2) + ["", ""])[:3]
            mode = mode if mode.isdigit() and len(mode) in (3, 4) else "640"
            found[name] = (base64.b64decode(data).decode(), mode)
    return found

"""Edit a stage file in place, keeping its comments, order and layout (ruamel.yaml round trip)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from ..errors import ConfigError


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def with_host(text: str, entry: dict, label: str) -> str:
    """`text` with `entry` added to `hosts:`, after the last host sharing its first role
    (else at the end). Comments and the other hosts' layout are kept."""
    yaml = _yaml()
    data = yaml.load(text)
    hosts = data.get("hosts") if isinstance(data, CommentedMap) else None
    if not isinstance(hosts, CommentedSeq):
        raise ConfigError(f"{label}: no 'hosts:' list to add to")
    if any(isinstance(h, dict) and h.get("name") == entry["name"] for h in hosts):
        raise ConfigError(f"{label}: already has a host named {entry['name']}")
    item = CommentedMap()
    for key, value in entry.items():
        if isinstance(value, list):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            item[key] = seq
        elif isinstance(value, str) and ":" in value:
            # quoted: YAML 1.1 (PyYAML) reads 52:54:00:12:34:56 as a base-60 integer
            item[key] = DoubleQuotedScalarString(value)
        else:
            item[key] = value
    position = len(hosts)
    first_role = entry["roles"][0]
    for index, host in enumerate(hosts):
        if isinstance(host, dict) and first_role in (host.get("roles") or []):
            position = index + 1
    hosts.insert(position, item)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def replace_atomically(path: Path, text: str) -> None:
    """Write next to `path`, fsync, rename over it (the mode of the old file is kept)."""
    tmp = path.with_name(f".{path.name}.dsas-tmp")
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)

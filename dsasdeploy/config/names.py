"""What a name, an address or a path in the configuration may look like. Pure.

Names end up in file names (the release archive, the journal), in paths on hosts and
in remote commands, so they are names and never paths: a character set and a length.
Each check returns None when the value is fine, else the message after `key: `.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

NAME_MAX = 64
USER_MAX = 32
PATH_MAX = 1024

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*\$?")
DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shown(value: str, limit: int = 40) -> str:
    """A value as a message quotes it: control characters escaped, long values cut."""
    text = value.encode("unicode_escape").decode("ascii")
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _check_word(value: str, pattern: re.Pattern, limit: int, what: str, charset: str) -> Optional[str]:
    if len(value) > limit:
        return f"expected {what} of at most {limit} characters, got {len(value)}"
    if not pattern.fullmatch(value):
        return f"expected {what} of {charset}, got {shown(value)}"
    return None


def check_name(value: str) -> Optional[str]:
    """application, stage and host names: letters, digits, '.', '_', '-', up to 64."""
    return _check_word(value, NAME, NAME_MAX, "a name",
                       "letters, digits, '.', '_' and '-' starting with a letter or digit (a name, never a path)")


def check_user(value: str) -> Optional[str]:
    """A login name: what useradd accepts portably, up to 32 characters."""
    return _check_word(value, USER, USER_MAX, "a user name",
                       "letters, digits, '.', '_' and '-', not starting with a digit or '-'")


def check_deploy_to(value: str) -> Optional[str]:
    """An absolute directory below / with no '.' or '..' components and no control characters."""
    if CONTROL.search(value):
        return f"must not contain control characters, got {shown(value)}"
    if not value.startswith("/"):
        return f"must be an absolute path, got {shown(value)}"
    if len(value) > PATH_MAX:
        return f"is at most {PATH_MAX} characters, got {len(value)}"
    parts = [p for p in value.split("/") if p]
    if not parts:
        return "must not be / (releases, shared and pruning would happen in the root directory)"
    if any(p in (".", "..") for p in parts):
        return f"must not contain '.' or '..' components, got {shown(value)}"
    return None


def check_address(value: str) -> Optional[str]:
    """An IPv4 or IPv6 address, or a DNS host name."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if len(value) <= 253 and all(DNS_LABEL.fullmatch(label) for label in labels):
        return None
    return f"expected an IP address or a host name, got {shown(value)}"


def check_port(text: str) -> Optional[str]:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return f"port must be 1-65535, got {shown(text)}"
    return None


def split_host_port(value: str) -> tuple[str, str]:
    """'host:port', '[v6]:port', 'host' -> (host, port or '')."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else rest
    if value.count(":") > 1:  # a bare IPv6 address, no port
        return value, ""
    host, _, port = value.partition(":")
    return host, port


def parse_gateway(value: str) -> tuple[Optional[str], str, int]:
    """'[user@]host[:port]' -> (user or None, host, port); ValueError with the reason."""
    user, _, rest = value.rpartition("@")
    host, port = split_host_port(rest)
    problem = (check_user(user) if user else None) or check_address(host) or (check_port(port) if port else None)
    if problem:
        raise ValueError(f"expected [user@]host[:port]: {problem}")
    return user or None, host, int(port or 22)


def check_endpoint(value: str) -> Optional[str]:
    """'host[:port]' with a valid host and port (memcached endpoints)."""
    host, port = split_host_port(value)
    problem = check_address(host) or (check_port(port) if port else None)
    return f"expected host[:port]: {problem}" if problem else None


def check_url_path(value: str) -> Optional[str]:
    """An HTTP request path: starts with '/', no spaces or control characters."""
    if not value.startswith("/") or re.search(r"[\s\x00-\x1f\x7f]", value):
        return f"expected a path starting with '/' without spaces, got {shown(value)}"
    return None

"""Host key verification that Fabric does not do by default.

Fabric's Connection accepts ANY host key (AutoAddPolicy, no known_hosts loaded).
dsas loads known_hosts ONCE per run into a shared HostKeys and installs a policy
that every connection consults: a matching key passes, a changed key is refused
(always), an unknown key is refused unless accepting new keys was asked for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import paramiko

from ..errors import HostKeyError, UsageError


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint: 'SHA256:base64-without-padding'."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass
class KnownHosts:
    """A parsed known_hosts: pinned keys, @revoked keys (refused for every host) and warnings."""

    keys: paramiko.HostKeys = field(default_factory=paramiko.HostKeys)
    revoked: dict[str, str] = field(default_factory=dict)  # fingerprint -> 'label:line'
    warnings: list[str] = field(default_factory=list)


def parse_known_hosts(text: str, label: str) -> KnownHosts:
    """Parse known_hosts text (OpenSSH format, hashed names too); a bad line is a UsageError
    naming `label:line`. `@revoked` keys are kept to be refused; `@cert-authority` lines are
    skipped with a warning (dsas pins host keys, it does not verify host certificates)."""
    parsed = KnownHosts()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{label}:{number}"
        marker = None
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
            if marker == "@cert-authority":
                parsed.warnings.append(f"{where}: @cert-authority line skipped: dsas verifies pinned host keys, "
                                       f"not host certificates; pin the hosts' own keys")
                continue
            if marker != "@revoked":
                raise UsageError(f"{where}: unknown known_hosts marker {marker[:40]!r} (expected @revoked or "
                                 f"@cert-authority)")
        fields = line.split()
        if len(fields) < 3:
            raise UsageError(f"{where}: not a known_hosts line (expected: host key-type base64-key)")
        try:
            key_bytes = base64.b64decode(fields[2], validate=True)
        except (binascii.Error, ValueError):
            raise UsageError(f"{where}: the key of {fields[0][:60]} is not valid base64") from None
        try:
            key = paramiko.PKey.from_type_string(fields[1], key_bytes)
        except paramiko.ssh_exception.UnknownKeyType:
            parsed.warnings.append(f"{where}: key type {fields[1][:40]} not supported by dsas; line skipped")
            continue
        except Exception as exc:  # noqa: BLE001 - paramiko raises several kinds for a malformed key blob
            raise UsageError(f"{where}: the {fields[1][:40]} key of {fields[0][:60]} is malformed "
                             f"({type(exc).__name__})") from None
        if marker == "@revoked":
            parsed.revoked[fingerprint(key)] = where
            continue
        for name in fields[0].split(","):
            parsed.keys.add(name, key.get_name(), key)
    return parsed


def read_known_hosts(path: Path, source: str) -> KnownHosts:
    """The known_hosts file at `path`; it must exist (a mistyped path is an error, never a new file).
    `source` names where the path came from (a key, an environment variable, the default)."""
    if not path.is_file():
        raise UsageError(f"{source}: {path} does not exist (create it, even empty, to record keys with "
                         f"--accept-new-host-keys)")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"{source}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{source}: {path} is not a text file") from None
    return parse_known_hosts(text, str(path))


class PinnedHostKeys(paramiko.MissingHostKeyPolicy):
    """A MissingHostKeyPolicy backed by one shared known_hosts (parsed once)."""

    def __init__(self, known_hosts: Path, parsed: KnownHosts, accept_new: bool = False, persist: bool = True):
        self.path = known_hosts
        self.accept_new = accept_new
        self.keys = parsed.keys
        self.revoked = parsed.revoked
        self.warnings = list(parsed.warnings)
        self.accepted: list[tuple[str, str]] = []  # (name, fingerprint) added this run
        self.persist = persist
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path, source: str, accept_new: bool = False) -> "PinnedHostKeys":
        """Keys pinned in the file at `path` (named `source` in errors); accepted keys are appended."""
        return cls(path, read_known_hosts(path, source), accept_new=accept_new)

    @classmethod
    def from_text(cls, text: str, label: str, accept_new: bool = False) -> "PinnedHostKeys":
        """known_hosts lines given as text (e.g. a CI secret); accepted keys are not saved."""
        parsed = parse_known_hosts(text.replace("\\n", "\n"), f"${label}")
        return cls(Path(f"${label}"), parsed, accept_new=accept_new, persist=False)

    def known(self, name: str) -> Optional[dict]:
        with self._lock:
            return self.keys.lookup(name)

    def missing_host_key(self, client, hostname: str, key: paramiko.PKey) -> None:
        """Called by paramiko for every connection (the clients' own stores stay empty)."""
        offered = f"{key.get_name()} {fingerprint(key)}"
        revoked_at = self.revoked.get(fingerprint(key))
        if revoked_at is not None:
            raise HostKeyError(f"{hostname}: host key {offered} is REVOKED ({revoked_at}); refusing to connect")
        with self._lock:
            entry = self.keys.lookup(hostname)
            if entry is not None:
                pinned = entry.get(key.get_name())
                if pinned is not None and pinned == key:
                    return
                known = ", ".join(f"{k} {fingerprint(v)}" for k, v in entry.items())
                raise HostKeyError(
                    f"{hostname}: HOST KEY CHANGED: {self.path} pins {known}, the host offers {offered}; "
                    f"refusing to connect (possible man-in-the-middle; if the host was reinstalled, "
                    f"remove its old line from {self.path})"
                )
            if not self.accept_new:
                raise HostKeyError(
                    f"{hostname}: unknown host key {offered} (not in {self.path}); verify it out of band, "
                    f"then add it to that file or rerun with --accept-new-host-keys"
                )
            self.keys.add(hostname, key.get_name(), key)
            self.accepted.append((hostname, offered))
            if not self.persist:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with os.fdopen(fd, "a") as out:
                out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def key_from_line(key_line: str, name: str = "host") -> paramiko.PKey:
    """"ssh-ed25519 AAAA..." -> the public key; HostKeyError naming `name` if it is not one."""
    entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{name} {key_line}")
    if entry is None:
        raise HostKeyError(f"{name}: not an SSH public key: {key_line[:40]!r}")
    return entry.key


def pin_host_key(policy: PinnedHostKeys, name: str, key_line: str) -> Optional[str]:
    """Pin `key_line` ("ssh-ed25519 AAAA...") for `name`, replacing any older key of that name.

    Used when dsas itself installed the host and got its key over the install callback.
    Returns the fingerprint of a replaced (different) key, if there was one."""
    key = key_from_line(key_line, name)
    replaced = None
    with policy._lock:  # noqa: SLF001 - the policy's own lock
        old = policy.keys.lookup(name)
        if old is not None:
            different = [fingerprint(k) for k in old.values() if k != key]
            replaced = ", ".join(different) or None
            # paramiko keeps entries in a list; hashed (|1|...) names only match through hash_host
            policy.keys._entries = [e for e in policy.keys._entries  # noqa: SLF001
                                    if not any(_names_match(h, name) for h in e.hostnames)]
        policy.keys.add(name, key.get_name(), key)
        if not policy.persist:
            return replaced
        lines = policy.path.read_text().splitlines(keepends=True) if policy.path.is_file() else []
        kept = [line if line.endswith("\n") else line + "\n" for line in lines
                if not (line.split() and any(_names_match(h, name) for h in line.split()[0].split(",")))]
        kept.append(f"{name} {key.get_name()} {key.get_base64()}\n")
        policy.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = policy.path.with_name(policy.path.name + ".dsas-tmp")
        tmp.write_text("".join(kept))
        if policy.path.exists():
            os.chmod(tmp, policy.path.stat().st_mode & 0o777)
        os.replace(tmp, policy.path)
    return replaced


def _names_match(entry_name: str, name: str) -> bool:
    """A known_hosts host field (plain or |1|salt|hash) names `name`."""
    if entry_name.startswith("|1|"):
        salt = entry_name.split("|")[2]
        return paramiko.HostKeys.hash_host(name, salt) == entry_name
    return entry_name == name

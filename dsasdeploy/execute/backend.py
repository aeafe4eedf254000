"""Run one script per host per phase over SSH; optionally stream a file to its stdin.

The only module (with session.py) that touches SSH. Each `run` is one exec channel,
i.e. one round trip; the count per host is kept for the summary and the benchmark.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from fabric import Connection

from ..commands.base import Marker, as_sh_command, parse_markers, script
from ..errors import RemoteError
from ..inventory import Host
from .hostkeys import pin_host_key
from .session import SessionFactory

Opener = Callable[[str, int, float], object]  # (address, port, timeout) -> a socket-like stream

STREAM_CHUNK = 256 * 1024


@dataclass(frozen=True)
class ExecResult:
    """What one remote script did."""

    host: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def markers(self) -> list[Marker]:
        return parse_markers(self.stdout)

    def stderr_tail(self, lines: int = 3) -> str:
        tail = [line.strip() for line in self.stderr.strip().splitlines() if line.strip()]
        return " | ".join(tail[-lines:])


class Backend(Protocol):
    """What the release flow needs from a transport."""

    exec_counts: Counter  # phase scripts per host name (the "round_trips" figure)
    beat_counts: Counter  # lock heartbeats per host name, counted apart (they depend on wall time)

    def connect(self, host: Host) -> None: ...

    def run(self, host: Host, lines: list[str], *, stdin: Optional[Path] = None,
            strict: bool = True, timeout: Optional[float] = None, heartbeat: bool = False) -> ExecResult: ...

    def tcp_opener(self, host: Host) -> "Opener": ...

    def pin_host_key(self, known_hosts_name: str, line: str) -> Optional[str]: ...

    def public_key_line(self) -> str: ...

    @property
    def warnings(self) -> list[str]: ...

    def close(self) -> None: ...


@dataclass
class SshBackend:
    """Backend over Fabric Connections, kept open for the whole run."""

    factory: SessionFactory
    exec_counts: Counter = field(default_factory=Counter)
    beat_counts: Counter = field(default_factory=Counter)
    _connections: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self, host: Host) -> None:
        """Open (and verify the host key of) the host's connection, once."""
        with self._lock:
            if host.name in self._connections:
                return
        cxn = self.factory.connect(host)
        with self._lock:
            self._connections[host.name] = cxn

    def _connection(self, host: Host) -> Connection:
        self.connect(host)
        return self._connections[host.name]

    def run(self, host: Host, lines: list[str], *, stdin: Optional[Path] = None,
            strict: bool = True, timeout: Optional[float] = None, heartbeat: bool = False) -> ExecResult:
        """Run `lines` as one POSIX sh script on `host`; non-zero exit is returned, not raised.

        A `heartbeat` exec is tallied in `beat_counts`, every other one in `exec_counts`."""
        cxn = self._connection(host)
        with self._lock:
            (self.beat_counts if heartbeat else self.exec_counts)[host.name] += 1
        command = as_sh_command(script(lines, strict=strict))
        return exec_channel(cxn, host.name, command, stdin, timeout or self.factory.ssh.command_timeout)

    def tcp_opener(self, host: Host) -> Opener:
        """Opens TCP streams from `host`'s side of its SSH connection (health checks via ssh)."""
        return ssh_opener(self._connection(host))

    def pin_host_key(self, known_hosts_name: str, line: str) -> Optional[str]:
        """Trust `line` as the key of `known_hosts_name` from now on; returns the key it replaced."""
        return pin_host_key(self.factory.policy, known_hosts_name, line)

    def public_key_line(self) -> str:
        """The OpenSSH public key line of the identity this run logs in with."""
        return self.factory.public_key_line()

    @property
    def warnings(self) -> list[str]:
        """What loading the host keys found worth telling (skipped known_hosts lines, ...)."""
        return list(self.factory.policy.warnings)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for cxn in connections:
            cxn.close()
        self.factory.close()


def ssh_opener(connection: Connection) -> Opener:
    """Open TCP streams from the host's side of its SSH connection."""
    def open_stream(address: str, port: int, timeout: float):
        transport = connection.client.get_transport()
        channel = transport.open_channel("direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=timeout)
        channel.settimeout(timeout)
        return channel
    return open_stream


def exec_channel(cxn: Connection, label: str, command: str, stdin: Optional[Path],
                 timeout: float) -> ExecResult:
    """One exec on an open connection: stream stdin, collect output, honour a deadline."""
    started = time.monotonic()
    transport = cxn.client.get_transport()
    if transport is None or not transport.is_active():
        raise RemoteError(f"{label}: SSH connection lost")
    try:
        channel = transport.open_session(timeout=min(cxn.connect_timeout or 30, timeout))
        channel.exec_command(command)
    except Exception as exc:  # paramiko raises SSHException, EOFError, OSError here
        raise RemoteError(f"{label}: could not start the remote script: {exc or type(exc).__name__}") from None
    stdout, stderr = bytearray(), bytearray()
    readers = [
        threading.Thread(target=_drain, args=(channel.recv, stdout), daemon=True),
        threading.Thread(target=_drain, args=(channel.recv_stderr, stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        if stdin is not None:
            with open(stdin, "rb") as source:
                while chunk := source.read(STREAM_CHUNK):
                    channel.sendall(chunk)
        channel.shutdown_write()
    except OSError:
        pass  # the remote side stopped reading (it failed); its exit status says why
    deadline = started + timeout
    while not channel.status_event.wait(0.2):
        if not transport.is_active():
            channel.close()
            raise RemoteError(f"{label}: SSH connection lost while the remote script ran")
        if time.monotonic() > deadline:
            channel.close()
            raise RemoteError(f"{label}: remote script timed out after {timeout:g}s")
    for reader in readers:
        reader.join(timeout=5)
    code = channel.recv_exit_status()
    channel.close()
    return ExecResult(label, code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"),
                      time.monotonic() - started)


def _drain(receive, buffer: bytearray) -> None:
    try:
        while data := receive(65536):
            buffer.extend(data)
    except OSError:
        pass

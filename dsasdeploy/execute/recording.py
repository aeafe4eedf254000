"""A Backend that records every call and runs each script on this machine, against a fake host.

For tests of the orchestration without SSH or root: each host of the stage is a directory
(`host_dir(host)`, its deploy_to somewhere inside), every script runs under /bin/sh with
`bin_dirs` first on PATH (fake ipvsadm, drbdadm, ... that keep their state in the host's
directory) and these variables set:

    FAKE_HOST       the host's name
    FAKE_HOST_DIR   its directory (also $HOME and the working directory)
    FAKE_WORLD      the directory holding every host's (shared state, e.g. a DRBD pair's)

Canned answers (`Answer`) stand in for the script where a test wants a failure: an exit code
and output, an exception (RemoteError, KeyboardInterrupt, a crash), a hang until the timeout.
`tcp_opener(host)` connects to a local port per host (a health check `via: ssh` reaches a
small HTTP server the test runs for that host).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..commands.base import script as sh_script
from ..errors import RemoteError
from ..inventory import Host
from .backend import ExecResult, Opener

FAKE_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake dsas@recording"

# What a script is, from the markers and commands the builders put in it (a best guess, for
# reading a recording; the backend protocol does not tell the phase). First match wins.
PHASE_SIGNS: tuple[tuple[str, str], ...] = (
    ("prepare", r"DSAS prepared"),
    ("publish", r"DSAS published"),
    ("revert", r"DSAS reverted"),
    ("discard", r"DSAS discarded"),
    ("migrate", r"DSAS migrated"),
    ("finish", r"DSAS step log"),
    ("lb_edit", r"ipvsadm -e "),
    ("lb_membership", r"ipvsadm -[ad] "),
    ("lb_read", r"ipvsadm -Sn"),
    ("drbd_status", r"DSAS section proc"),
    ("drbd_step", r"drbdadm (primary|secondary)|umount |mount -t |ip addr (add|del)|DSAS step (stop|start) "),
    ("probe", r"DSAS disk_free_kb|df -Pk"),
    ("lock", r"DSAS lock"),
)


def guess_phase(text: str) -> str:
    """The kind of script `text` is ('prepare', 'publish', 'lb_edit', ...; 'other' if unknown)."""
    for name, sign in PHASE_SIGNS:
        if re.search(sign, text):
            return name
    return "other"


@dataclass
class Call:
    """One `run` as the backend saw it, and what came of it."""

    index: int  # position among every call of this backend
    host: str
    nth: int  # 1-based: this host's nth script (heartbeats not counted)
    script: str  # the whole /bin/sh script, as SSH would have run it
    phase: str  # the caller's, if it said; else guess_phase(script)
    stdin_path: Optional[str] = None
    stdin_bytes: Optional[int] = None
    heartbeat: bool = False
    strict: bool = True
    timeout: Optional[float] = None
    canned: bool = False  # an Answer decided the outcome
    result: Optional[ExecResult] = None
    error: Optional[str] = None  # the exception raised instead of a result, as text


AnswerValue = Union[ExecResult, BaseException, Callable[[Call], Optional[ExecResult]], None]


@dataclass
class Answer:
    """A canned answer to the scripts it matches (heartbeats never match).

    Matches a script of `host` (None: any host) whose text `pattern` searches (regex), whose
    guessed `phase` is this one, and, with `nth`, only the nth script of that host that matches
    the rest; it applies `times` times (None: always). `value`: an ExecResult to return, an
    exception to raise, a callable (Call -> ExecResult, or None to run the script after all),
    or None with `hang`: the script "hangs" until its timeout. `run_first`: the script runs for
    real first (its changes happen), then the answer replaces its outcome.
    """

    value: AnswerValue = None
    host: Optional[str] = None
    pattern: Optional[str] = None
    phase: Optional[str] = None
    nth: Optional[int] = None
    times: Optional[int] = 1
    run_first: bool = False
    hang: bool = False
    matched: int = 0  # scripts matched so far (for nth)
    used: int = 0

    def matches(self, call: Call) -> bool:
        if self.host is not None and call.host != self.host:
            return False
        if self.phase is not None and call.phase != self.phase:
            return False
        return self.pattern is None or re.search(self.pattern, call.script) is not None


def fail(host: Optional[str] = None, *, pattern: Optional[str] = None, phase: Optional[str] = None,
         nth: Optional[int] = None, exit_code: int = 1, stderr: str = "canned failure",
         stdout: str = "", run_first: bool = False, times: Optional[int] = 1) -> Answer:
    """The matching script exits `exit_code` with `stderr` (e.g. fail web2's 3rd script: nth=3)."""
    result = ExecResult(host or "?", exit_code, stdout, stderr + "\n", 0.0)
    return Answer(result, host=host, pattern=pattern, phase=phase, nth=nth, times=times, run_first=run_first)


def raise_error(error: BaseException, host: Optional[str] = None, *, pattern: Optional[str] = None,
                phase: Optional[str] = None, nth: Optional[int] = None, run_first: bool = False,
                times: Optional[int] = 1) -> Answer:
    """The matching script raises `error` (RemoteError: the connection died; KeyboardInterrupt...)."""
    return Answer(error, host=host, pattern=pattern, phase=phase, nth=nth, times=times, run_first=run_first)


def hang(host: Optional[str] = None, *, pattern: Optional[str] = None, phase: Optional[str] = None,
         nth: Optional[int] = None, times: Optional[int] = None) -> Answer:
    """The matching script never answers: RemoteError 'timed out' once its timeout has passed."""
    return Answer(None, host=host, pattern=pattern, phase=phase, nth=nth, times=times, hang=True)


@dataclass
class RecordingBackend:
    """The Backend protocol over local /bin/sh, recording every call (see the module doc)."""

    host_dir: Callable[[Host], Path]
    world: Path
    bin_dirs: Sequence[Path] = ()
    answers: list[Answer] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # host name -> local port tcp_opener reaches
    env: dict[str, str] = field(default_factory=dict)  # more variables for every script
    unreachable: set[str] = field(default_factory=set)  # host names whose connect fails
    default_timeout: float = 60.0
    host_warnings: list[str] = field(default_factory=list)
    exec_counts: Counter = field(default_factory=Counter)
    beat_counts: Counter = field(default_factory=Counter)
    calls: list[Call] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)
    tcp_opens: list[str] = field(default_factory=list)
    pinned: list[tuple[str, str]] = field(default_factory=list)
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- the Backend protocol ------------------------------------------------------------

    def connect(self, host: Host) -> None:
        """Record it; a host in `unreachable` fails as an SSH connect would."""
        with self._lock:
            self.connects.append(host.name)
        if host.name in self.unreachable:
            raise RemoteError(f"{host.name}: unreachable ({host.address}:{host.port}): connection refused "
                              f"(recording backend)")
        self.host_dir(host).mkdir(parents=True, exist_ok=True)

    def run(self, host: Host, lines: list[str], *, stdin: Optional[Path] = None, strict: bool = True,
            timeout: Optional[float] = None, heartbeat: bool = False, phase: Optional[str] = None) -> ExecResult:
        """Record the script, then answer it: a canned Answer if one matches, else /bin/sh here."""
        text = sh_script(lines, strict=strict)
        with self._lock:
            (self.beat_counts if heartbeat else self.exec_counts)[host.name] += 1
            call = Call(index=len(self.calls), host=host.name, nth=self.exec_counts[host.name], script=text,
                        phase="heartbeat" if heartbeat else (phase or guess_phase(text)),
                        stdin_path=str(stdin) if stdin is not None else None,
                        stdin_bytes=stdin.stat().st_size if stdin is not None else None,
                        heartbeat=heartbeat, strict=strict, timeout=timeout)
            self.calls.append(call)
            answer = None if heartbeat else self._take_answer(call)
        call.canned = answer is not None
        limit = timeout or self.default_timeout
        try:
            result = self._answer(call, answer, host, stdin, limit)
        except BaseException as exc:
            call.error = f"{type(exc).__name__}: {exc}"
            raise
        call.result = result
        return result

    def tcp_opener(self, host: Host) -> Opener:
        """Streams to 127.0.0.1:<ports[host]> whatever address and port are asked for."""
        def open_stream(address: str, port: int, timeout: float):
            with self._lock:
                self.tcp_opens.append(host.name)
            local = self.ports.get(host.name)
            if local is None:
                raise ConnectionRefusedError(f"{host.name}: nothing listens on {address}:{port} (recording backend)")
            return socket.create_connection(("127.0.0.1", local), timeout=timeout)
        return open_stream

    def pin_host_key(self, known_hosts_name: str, line: str) -> Optional[str]:
        """Record the key; nothing was pinned before."""
        self.pinned.append((known_hosts_name, line))
        return None

    def public_key_line(self) -> str:
        """A fixed, well-formed public key line (add-server writes it to the new host)."""
        return FAKE_PUBLIC_KEY

    @property
    def warnings(self) -> list[str]:
        """What the test says loading host keys found (`host_warnings`)."""
        return list(self.host_warnings)

    def close(self) -> None:
        """Nothing stays open between scripts; remembered for the tests."""
        self.closed = True

    # ---- reading the recording -------------------------------------------------------------

    def scripts(self, host: Optional[str] = None, phase: Optional[str] = None) -> list[Call]:
        """The recorded calls (not heartbeats) of `host` and/or of `phase`, in order."""
        return [c for c in self.calls if not c.heartbeat and (host is None or c.host == host)
                and (phase is None or c.phase == phase)]

    # ---- answering ---------------------------------------------------------------------

    def _take_answer(self, call: Call) -> Optional[Answer]:
        for answer in self.answers:
            if answer.times is not None and answer.used >= answer.times:
                continue
            if not answer.matches(call):
                continue
            answer.matched += 1
            if answer.nth is not None and answer.matched != answer.nth:
                continue
            answer.used += 1
            return answer
        return None

    def _answer(self, call: Call, answer: Optional[Answer], host: Host, stdin: Optional[Path],
                limit: float) -> ExecResult:
        if answer is None or answer.run_first:
            result = self._run_sh(call, host, stdin, limit)
            if answer is None:
                return result
        if answer.hang:
            time.sleep(limit)
            raise RemoteError(f"{host.name}: remote script timed out after {limit:g}s")
        value = answer.value
        if isinstance(value, BaseException):
            raise value
        if callable(value):
            made = value(call)
            return made if made is not None else self._run_sh(call, host, stdin, limit)
        return ExecResult(host.name, value.exit_code, value.stdout, value.stderr, value.seconds)

    def _run_sh(self, call: Call, host: Host, stdin: Optional[Path], limit: float) -> ExecResult:
        """The script under /bin/sh in the host's directory; killed (with its children) at `limit`."""
        home = self.host_dir(host)
        home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.pathsep.join([*(str(d) for d in self.bin_dirs), os.environ.get("PATH", "/usr/bin:/bin")]),
               "HOME": str(home), "LANG": "C", "LC_ALL": "C", "FAKE_HOST": host.name, "FAKE_HOST_DIR": str(home),
               "FAKE_WORLD": str(self.world), **self.env}
        started = time.monotonic()
        source = open(stdin, "rb") if stdin is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", call.script], stdin=source, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=home, env=env, start_new_session=True)
            try:
                out, err = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise RemoteError(f"{host.name}: remote script timed out after {limit:g}s") from None
            except BaseException:  # interrupted: the "remote" script must not outlive the run
                _kill_group(proc.pid)
                proc.communicate()
                raise
        finally:
            if stdin is not None:
                source.close()
        return ExecResult(host.name, proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                          time.monotonic() - started)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

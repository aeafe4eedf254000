"""Commands to load balancers (LVS directors, HAProxy hosts) with a deadline of seconds.

A director command (read the table, set weights and read them back) takes milliseconds. One that
has not answered within `lb.command_timeout` belongs to a director that went silent (frozen,
half-dead, its link cut): it is reported as such and is not tried again in this run, so the way
back (restoring the other directors and the hosts) never waits on it again, and Ctrl-C answers
at once. The drained state it may keep is what `dsas recover` repairs once it answers again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..errors import RemoteError
from ..inventory import Host
from .backend import Backend, ExecResult

INTERRUPT_GRACE = 1.0  # seconds an interrupted parallel director call is waited for
_SILENCE = ("timed out", "connection lost", "could not start", "unreachable")


@dataclass
class DirectorCalls:
    """backend.run for directors, with a short deadline and memory of who went silent."""

    backend: Backend
    timeout: float
    silent: dict[str, str] = field(default_factory=dict)  # director name -> why
    _pending: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, director: Host, lines: list[str]) -> ExecResult:
        name = director.name
        with self._lock:
            if name in self._pending:  # an abandoned (interrupted) command has not come back
                self.silent.setdefault(name, "an earlier command to it never came back")
            if name in self.silent:
                raise RemoteError(f"{name} is silent ({self.silent[name]}): not tried again in this run")
            self._pending.add(name)
        try:
            return self.backend.run(director, lines, timeout=self.timeout)
        except RemoteError as exc:
            if any(word in str(exc) for word in _SILENCE):
                with self._lock:
                    self.silent[name] = f"no answer within {self.timeout:g}s"
                raise RemoteError(f"{name} did not answer within {self.timeout:g}s (lb.command_timeout): "
                                  f"the director is silent") from None
            raise
        finally:
            with self._lock:
                self._pending.discard(name)

    def report(self) -> str:
        """One line naming the silent directors, or ''."""
        if not self.silent:
            return ""
        return "silent directors: " + ", ".join(f"{n} ({why})" for n, why in sorted(self.silent.items()))

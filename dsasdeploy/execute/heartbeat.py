"""Keeps this run's stage locks visibly alive: a heartbeat on every host it holds the lock on.

Every phase script sent to a locked host refreshes the heartbeat first (RunContext.phase),
so a fast run costs no extra round trip; this thread beats only the hosts that have had
no script for HEARTBEAT_EVERY seconds (rolling waits, long restarts elsewhere). Another
controller reads the heartbeat's age to tell a live run (wait for it) from a dead one.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, MutableMapping

from ..commands import lock as lockcmd
from ..inventory import Host
from .pool import run_parallel

BEAT_TIMEOUT = 10.0  # one heartbeat exec; a host that does not answer is tried again next time


class Heartbeat:
    """A daemon thread beating `locked()` hosts whose last beat in `beats` is too old."""

    def __init__(self, backend, locked: Callable[[], Iterable[Host]], token: Callable[[], str],
                 beats: MutableMapping[str, float], every: float = lockcmd.HEARTBEAT_EVERY,
                 limit: int = 10, tick: float = 1.0):
        self.backend, self.locked, self.token, self.beats = backend, locked, token, beats
        self.every, self.limit, self.tick = every, limit, tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dsas-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating; never waits long (a beat in flight to a dead host is abandoned)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def due(self, now: float) -> list[Host]:
        """The locked hosts not beaten for `every` seconds."""
        return [h for h in self.locked() if now - self.beats.get(h.name, 0.0) >= self.every]

    def beat_once(self) -> None:
        hosts = self.due(time.monotonic())
        for host in hosts:
            self.beats[host.name] = time.monotonic()
        token = self.token()
        run_parallel(hosts, lambda h: self.backend.run(h, lockcmd.heartbeat_lines(h.paths, token),
                                                       timeout=BEAT_TIMEOUT, heartbeat=True), self.limit)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.beat_once()
            except Exception:  # noqa: BLE001 - a missed beat is retried; it never fails the run
                continue

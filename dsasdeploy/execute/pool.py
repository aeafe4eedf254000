"""Bounded parallel map over hosts: results in stage order, exceptions kept per host."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Optional, Sequence, TypeVar

from ..inventory import Host

T = TypeVar("T")


@dataclass(frozen=True)
class HostOutcome(Generic[T]):
    host: Host
    value: Optional[T] = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def error_text(self) -> str:
        """The error as one line that names the host once ("web2: ..."), whatever raised it."""
        return f"{self.host.name}: {self.reason()}"

    def reason(self) -> str:
        """Why this host failed, in one line without its name: the error's first line, or a
        remote script's exit code and stderr tail (its value has `exit_code` and `stderr_tail`)."""
        if self.error is not None:
            return without_host(self.host.name, one_line(self.error))
        tail = self.value.stderr_tail()
        return f"exit {self.value.exit_code}" + (f": {tail}" if tail else "")


def one_line(exc: BaseException) -> str:
    """The first line of an error's text; never empty, never a dangling 'label:'."""
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else ""
    if not line:
        return type(exc).__name__
    if line.endswith(":"):  # a library error without a text (paramiko's EOFError, ...)
        return f"{line} no reason given ({type(exc).__name__}); the SSH connection was probably closed"
    return line


def without_host(name: str, text: str) -> str:
    """`text` without a leading 'NAME: ' (the caller names the host itself: never 'web2: web2: ...')."""
    prefix = f"{name}: "
    while text.startswith(prefix):
        text = text[len(prefix):]
    return text


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _interrupt_handler(handler) -> Iterator[None]:
    """Install `handler` for Ctrl-C and SIGTERM for the block (main thread only)."""
    try:
        previous = {s: signal.signal(s, handler) for s in INTERRUPTS}
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def signals_deferred():
    """Ctrl-C and SIGTERM are ignored inside: used while undoing, and while remote scripts
    that were already started finish (a second interrupt must not race them)."""
    return _interrupt_handler(signal.SIG_IGN)


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C/SIGTERM wait until the block is done, then interrupt (a remote step is never
    abandoned half-way and raced by its own undo)."""
    received: list[int] = []
    with _interrupt_handler(lambda signum, frame: received.append(signum)):
        yield
    if received:
        raise KeyboardInterrupt


def run_parallel(hosts: Sequence[Host], work: Callable[[Host], T], limit: int,
                 cancel: Optional["threading.Event"] = None,
                 grace: Optional[float] = None) -> list[HostOutcome[T]]:
    """Run `work(host)` for every host, at most `limit` at once; never raises per-host errors.

    A KeyboardInterrupt in the caller lets the running calls finish (a half-run
    remote script is worse than a finished one) and re-raises after they do; with `grace`,
    it waits at most that long (director commands: short, idempotent, bounded by their own
    timeout) so that Ctrl-C answers at once even when a director hangs.
    """
    if not hosts:
        return []
    executor = ThreadPoolExecutor(max_workers=max(1, min(limit, len(hosts))), thread_name_prefix="dsas")
    futures = [executor.submit(work, host) for host in hosts]
    try:
        outcomes = []
        for host, future in zip(hosts, futures):
            try:
                outcomes.append(HostOutcome(host, value=future.result()))
            except Exception as exc:  # noqa: BLE001 - kept per host, reported by the caller
                outcomes.append(HostOutcome(host, error=exc))
        return outcomes
    except BaseException:
        for future in futures:
            future.cancel()
        if cancel is not None:
            cancel.set()  # waiting loops (health gates, drains) stop early instead of running on
        with signals_deferred():
            if grace is None:
                executor.shutdown(wait=True)
            else:
                wait(futures, timeout=grace)
        raise
    finally:
        executor.shutdown(wait=False)

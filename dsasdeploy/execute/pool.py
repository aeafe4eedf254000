"""Bounded parallel map over hosts: results in stage order, exceptions kept per host."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Optional, Sequence, TypeVar

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


def run_parallel(hosts: Sequence[Host], work: Callable[[Host], T], limit: int) -> list[HostOutcome[T]]:
    """Run `work(host)` for every host, at most `limit` at once; never raises per-host errors.

    A KeyboardInterrupt in the caller lets the running calls finish (a half-run
    remote script is worse than a finished one) and re-raises after they do.
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
        executor.shutdown(wait=True)
        raise
    finally:
        executor.shutdown(wait=False)

"""Health and warm gates: HTTP to the host itself (not the VIP), memcached `stats`.

Requests go straight from the controller to the host, or through the host's SSH
connection (a direct-tcpip channel) where the controller cannot reach the app port.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from ..commands.health import final_statuses, judge_response, parse_stats, warm_figures
from ..config.schema import HealthCheck, WarmGate
from ..errors import RemoteError

Opener = Callable[[str, int, float], socket.socket]


def direct_opener(address: str, port: int, timeout: float):
    return socket.create_connection((address, port), timeout=timeout)


class _Connection(http.client.HTTPConnection):
    def __init__(self, address: str, port: int, timeout: float, opener: Opener):
        super().__init__(address, port, timeout=timeout)
        self._opener = opener

    def connect(self) -> None:
        self.sock = self._opener(self.host, self.port, self.timeout)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict
    body: str


def http_get(address: str, port: int, path: str, timeout: float, opener: Opener = direct_opener,
             host_header: Optional[str] = None) -> Response:
    """One GET; raises OSError/HTTPException on transport problems."""
    connection = _Connection(address, port, timeout, opener)
    try:
        headers = {"Connection": "close", "User-Agent": "dsas-gate"}
        if host_header:
            headers["Host"] = host_header
        connection.request("GET", path, headers=headers)
        reply = connection.getresponse()
        body = reply.read(65536).decode("utf-8", "replace")
        return Response(reply.status, dict(reply.getheaders()), body)
    finally:
        connection.close()


@dataclass
class GateResult:
    ok: bool
    seconds: float
    attempts: int
    reason: str = ""
    figures: Optional[dict] = None


def health_gate(address: str, spec: HealthCheck, port: int, release_id: Optional[str],
                opener: Opener = direct_opener, clock=time.monotonic, sleep=time.sleep,
                stop: Optional[threading.Event] = None) -> GateResult:
    """`rise` consecutive passing responses within `deadline` seconds (`stop`: give up now)."""
    started = clock()
    streak, attempts, reason = 0, 0, "no attempt"
    final = final_statuses(spec)
    while True:
        if stop is not None and stop.is_set():
            return GateResult(False, clock() - started, attempts, "interrupted")
        attempts += 1
        try:
            response = http_get(address, port, spec.path, spec.timeout, opener, spec.host_header)
            reason = judge_response(spec, response.status, response.headers, response.body, release_id) or ""
            if reason and response.status in final:  # the app answered that it is broken: no use waiting
                return GateResult(False, clock() - started, attempts, f"{reason}, final (health.fail_fast)")
        except (OSError, http.client.HTTPException, Exception) as exc:  # paramiko raises its own types
            reason = f"{type(exc).__name__}: {exc}".strip(": ")
        streak = 0 if reason else streak + 1
        if streak >= spec.rise:
            return GateResult(True, clock() - started, attempts)
        if clock() - started + spec.interval > spec.deadline:
            return GateResult(False, clock() - started, attempts, f"not healthy within {spec.deadline:g}s: {reason}")
        sleep(spec.interval)


def memcached_stats(address: str, port: int, timeout: float = 3.0) -> dict[str, float]:
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return parse_stats(data.decode("ascii", "replace"))


def warm_gate(address: str, port: int, spec: WarmGate, servers: list[tuple[str, int]],
              opener: Opener = direct_opener) -> GateResult:
    """Request the warm-up URLs against the host, then judge memcached's stats window."""
    started = time.monotonic()
    try:
        before = {f"{a}:{p}": memcached_stats(a, p) for a, p in servers}
    except OSError as exc:
        return GateResult(False, time.monotonic() - started, 0, f"memcached unreachable: {exc}")
    paths = [spec.urls[i % len(spec.urls)] for i in range(spec.count)] if spec.urls else []
    errors: list[str] = []

    def fetch(path: str) -> None:
        try:
            response = http_get(address, port, path, 5.0, opener)
            if response.status >= 500:
                errors.append(f"{path}: HTTP {response.status}")
        except Exception as exc:  # noqa: BLE001 - reported as a warm failure
            errors.append(f"{path}: {exc}")

    with ThreadPoolExecutor(max_workers=spec.concurrency) as pool:
        list(pool.map(fetch, paths))
    try:
        after = {f"{a}:{p}": memcached_stats(a, p) for a, p in servers}
    except OSError as exc:
        return GateResult(False, time.monotonic() - started, len(paths), f"memcached unreachable: {exc}")
    totals_before = {k: sum(s.get(k, 0) for s in before.values()) for k in ("get_hits", "get_misses", "curr_items", "evictions")}
    totals_after = {k: sum(s.get(k, 0) for s in after.values()) for k in ("get_hits", "get_misses", "curr_items", "evictions")}
    figures = {**warm_figures(totals_before, totals_after), "requests": len(paths), "errors": len(errors)}
    reason = ""
    if errors:
        reason = f"{len(errors)} warm-up request(s) failed, e.g. {errors[0]}"
    elif spec.min_hit_ratio is not None and figures["hit_ratio"] < spec.min_hit_ratio:
        reason = f"memcached hit ratio {figures['hit_ratio']:.2f} < {spec.min_hit_ratio:.2f}"
    elif figures["new_items"] < spec.min_new_items:
        reason = f"only {figures['new_items']:g} new memcached items (< {spec.min_new_items})"
    return GateResult(not reason, time.monotonic() - started, len(paths), reason, figures)


def raise_unless(result: GateResult, what: str) -> None:
    if not result.ok:
        raise RemoteError(f"{what}: {result.reason}")

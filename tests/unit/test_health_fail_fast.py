"""health.fail_fast: a canary whose app answers that it is broken fails its gate at once."""

from __future__ import annotations

import http.server
import threading

import pytest

from dsasdeploy.commands.health import final_statuses
from dsasdeploy.config.schema import HealthCheck
from dsasdeploy.execute.gates import health_gate


def test_final_statuses():
    assert final_statuses(HealthCheck()) == frozenset()
    every = final_statuses(HealthCheck(fail_fast=True))
    assert 500 in every and 599 in every and not every & {502, 503, 504, 200, 404}
    assert final_statuses(HealthCheck(fail_fast=[500, 404, 200])) == {500, 404}  # never an expected one


@pytest.fixture
def answering():
    """A real HTTP server on loopback answering `status` (set by the test), counting requests."""
    state = {"status": 500, "calls": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["calls"] += 1
            self.send_response(state["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, server.server_address[1]
    server.shutdown()


class FakeTime:
    """A clock that advances only when the gate sleeps: the deadline costs no real time."""

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_fail_fast_ends_the_gate_at_the_first_final_answer(answering):
    state, port = answering
    time = FakeTime()
    result = health_gate("127.0.0.1", HealthCheck(fail_fast=True, deadline=60), port, None,
                         clock=time.clock, sleep=time.sleep)
    assert not result.ok and result.attempts == 1 and state["calls"] == 1
    assert "HTTP 500" in result.reason and "fail_fast" in result.reason and time.now < 1


def test_without_fail_fast_or_for_a_not_ready_answer_the_gate_waits_for_its_deadline(answering):
    state, port = answering
    time = FakeTime()
    result = health_gate("127.0.0.1", HealthCheck(deadline=60), port, None, clock=time.clock, sleep=time.sleep)
    assert not result.ok and result.attempts > 100 and "within 60s" in result.reason
    state["status"] = 503  # an app not ready yet: retried even with fail_fast
    time = FakeTime()
    result = health_gate("127.0.0.1", HealthCheck(fail_fast=True, deadline=5), port, None,
                         clock=time.clock, sleep=time.sleep)
    assert not result.ok and result.attempts > 1 and "within 5s" in result.reason

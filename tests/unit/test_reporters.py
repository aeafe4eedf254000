"""Reporters render events; they decide nothing. Plain lines, JSON lines, the Rich table."""

from __future__ import annotations

import io
import json

import jsonschema

from dsasdeploy.report.console import JsonReporter, PlainReporter, RichReporter
from dsasdeploy.report.event_types import EVENTS_SCHEMA_PATH
from dsasdeploy.report.events import EventBus


def run(reporter) -> None:
    bus = EventBus("lab", reporter)
    bus.emit("run_started", command="deploy", hosts=["web1", "web2"], revision="a" * 40, ref="main")
    bus.emit("batch", status="started", name="canary", hosts=["web1"])
    bus.emit("lb", host="web1", status="drained", directors=["lb1"])
    bus.emit("host_phase", host="web1", phase="publish", status="failed", step="restart web", seconds=0.2,
             message="exit 1: boom")
    bus.emit("gate", host="web1", name="warm", status="ok", seconds=0.1, figures={"hit_ratio": 0.9, "hits": 9})
    bus.emit("summary", status="failed", message="web1: publish failed", command="deploy", exit_code=1,
             hosts={"web1": {}}, round_trips={"web1": 4, "lb1": 9})
    bus.close()


def test_plain_lines_are_timestamped_one_per_event():
    out = io.StringIO()
    run(PlainReporter(out))
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("deploy lab revision aaaaaaaaaaaa (main) on 2 host(s): web1, web2")
    assert "web1: publish failed at restart web (0.20s): exit 1: boom" in lines[3]
    assert "warm gate ok (hit_ratio 0.9, hits 9)" in lines[4]
    assert lines[-1].endswith("FAILED: web1: publish failed [ssh round trips per released host: max 4]")
    assert all(line[:4] == "2026" or line[:2] == "20" for line in lines)


def test_json_lines_parse_back():
    out = io.StringIO()
    run(JsonReporter(out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["type"] for e in events] == ["run_started", "batch", "lb", "host_phase", "gate", "summary"]
    assert all(e["schema"] == 1 and e["stage"] == "lab" for e in events)
    schema = json.loads(EVENTS_SCHEMA_PATH.read_text())
    for event in events:
        jsonschema.validate(event, schema)


def test_rich_table_shows_batch_pool_gates():
    out = io.StringIO()
    reporter = RichReporter(out)
    reporter.console.width = 160
    run(reporter)
    text = out.getvalue()
    for cell in ("canary", "drained", "failed at restart web", "ok hit 90%"):
        assert cell in text

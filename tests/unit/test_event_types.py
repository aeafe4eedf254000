"""Event types are declared once (report/event_types.py): the bus checks events against them in strict
mode, and the schemas and the docs table are generated from them."""

from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

import jsonschema
import pytest

from dsasdeploy.report import event_types
from dsasdeploy.report.console import JsonReporter
from dsasdeploy.report.events import EventBus

ROOT = Path(__file__).resolve().parents[2]
EVENTS_SCHEMA = json.loads(event_types.EVENTS_SCHEMA_PATH.read_text())


def emitted(monkeypatch, strict: bool, type: str, **fields) -> dict:
    """The JSON line of one event emitted with strict mode on or off."""
    monkeypatch.setenv("DSAS_STRICT_EVENTS", "1" if strict else "0")
    out = io.StringIO()
    EventBus("lab", JsonReporter(out)).emit(type, **fields)
    return json.loads(out.getvalue())


@pytest.mark.parametrize("type, fields, problem", [
    ("host_connected", {"host": "web1", "seconds": 0.1, "colour": "red"}, "unknown field 'colour'"),
    ("host_connected", {"host": "web1"}, "missing field 'seconds'"),
    ("batch", {"status": "started", "name": "canary", "hosts": [], "index": None}, "'index' is None"),
    ("summary", {"status": "ok", "message": None, "command": "deploy", "exit_code": 0}, "'message' is None"),
    ("teleported", {"host": "web1"}, "unknown event type 'teleported'"),
])
def test_strict_mode_rejects_what_the_class_does_not_declare(monkeypatch, type, fields, problem):
    with pytest.raises(TypeError, match=re.escape(problem)):
        emitted(monkeypatch, True, type, **fields)


def test_strict_mode_accepts_none_where_it_leaves_a_field_out_or_may_be_null(monkeypatch):
    script = emitted(monkeypatch, True, "script", host="web1", phase="publish", script="true\n", stdin=None)
    assert script["stdin"] is None
    phase = emitted(monkeypatch, True, "host_phase", host="web1", phase="publish", status="ok", seconds=0.1,
                    message=None)
    assert "message" not in phase


def test_without_strict_mode_an_undeclared_event_goes_out_as_given(monkeypatch):
    line = emitted(monkeypatch, False, "host_connected", host="web1", seconds=0.1, colour="red")
    assert line["colour"] == "red"
    assert emitted(monkeypatch, False, "teleported", host="web1", to="mars")["to"] == "mars"
    assert "seconds" not in emitted(monkeypatch, False, "host_connected", host="web1")


def test_json_line_keeps_its_form(monkeypatch):
    """Envelope first, then host/phase/status/message (left out when None), then the other fields in
    the order given (kept when None: they are sent as null)."""
    line = emitted(monkeypatch, True, "gate", host="web1", name="health", status="ok", release=None,
                   seconds=0.5, attempts=2, message=None)
    assert list(line) == ["schema", "type", "time", "stage", "host", "status", "name", "release", "seconds",
                          "attempts"]
    assert line["schema"] == 1 and line["stage"] == "lab" and line["release"] is None
    jsonschema.validate(line, EVENTS_SCHEMA)


def emit_call_sites() -> list[tuple[str, str, list[str]]]:
    """(where, event type, keyword names) of every bus.emit("type", ...) in dsas and the recipes."""
    sites = []
    for path in sorted([*(ROOT / "dsasdeploy").rglob("*.py"), *(ROOT / "recipes").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names = [k.arg for k in node.keywords if k.arg is not None]  # **data is checked at run time
                sites.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.args[0].value, names))
    return sites


def test_every_emit_call_site_passes_declared_fields_only():
    sites = emit_call_sites()
    assert len(sites) > 50  # the scan finds the call sites
    wrong = []
    for where, type, names in sites:
        if type not in event_types.EVENT_CLASSES:
            wrong.append(f"{where}: unknown type {type}")
            continue
        rules = event_types.field_rules(event_types.EVENT_CLASSES[type])
        wrong += [f"{where}: {type}.{name}" for name in names if name not in rules]
    assert wrong == []


def test_generated_files_are_committed_as_generated():
    stale = [str(path) for path, text in event_types.generated_files().items() if path.read_text() != text]
    assert stale == [], "run: python -m dsasdeploy.report.event_types --write"


def test_docs_examples_validate_against_the_schema():
    doc = (ROOT / "docs" / "events.md").read_text()
    examples = [json.loads(line) for block in re.findall(r"```json\n(.*?)```", doc, re.S)
                for line in block.splitlines() if line.strip()]
    assert examples
    for example in examples:
        jsonschema.validate(example, EVENTS_SCHEMA)


def test_report_schema_is_the_summary_event_with_schema_and_stage():
    report = json.loads(event_types.REPORT_SCHEMA_PATH.read_text())
    summary = next(rule["then"] for rule in EVENTS_SCHEMA["allOf"]
                   if rule["if"]["properties"]["type"]["const"] == "summary")
    assert report["required"] == ["schema", "stage", *summary["required"]]
    assert {k: v for k, v in report["properties"].items() if k not in ("schema", "stage")} == summary["properties"]

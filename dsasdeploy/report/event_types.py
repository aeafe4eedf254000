"""The event types of the --json stream: one frozen dataclass each, the only place they are declared.

A class's docstring is its one-line meaning, its fields are the event's fields: no default means
required; `Optional[X] = None` means the field may be absent; `Nullable[X]` means the field may be
sent as JSON null. `events.schema.json`, `report.schema.json` and the table in docs/events.md are
generated from these classes:

    python -m dsasdeploy.report.event_types --write   # rewrite them
    python -m dsasdeploy.report.event_types           # only say which are out of date (exit 1)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Optional, TypedDict, TypeVar

SCHEMA_VERSION = 1

# Fields every event may carry at the top level; they are left out of the JSON line when None.
ENVELOPE_FIELDS = ("host", "phase", "status", "message")

NULL = "null"  # Annotated mark: the field may be sent as JSON null
T = TypeVar("T")
Nullable = Annotated[Optional[T], NULL]


@dataclass(frozen=True)
class Minimum:
    """Annotated mark: the number is at least `value`."""

    value: float


Seconds = Annotated[float, Minimum(0)]
OkOrFailed = Literal["ok", "failed"]


class ReleaseRow(TypedDict):
    """One release in `host_state.releases`."""

    id: str
    revision: str
    current: bool
    failed: bool


class HostOutcome(TypedDict, total=False):
    """One host in `summary.hosts` (the run's HostRecord, its empty values left out)."""

    outcome: str
    release: str
    previous: str
    error: str
    seconds: dict[str, Seconds]
    shipped: str  # what prepare sent: "full", or "delta from <release>"
    bytes_sent: int  # the size of what prepare sent on stdin


EVENT_CLASSES: dict[str, type[EventFields]] = {}


class EventFields:
    """Base of the event classes; a subclass names its `type` and is registered under it."""

    type: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        EVENT_CLASSES[cls.type] = cls


@dataclass(frozen=True, kw_only=True)
class RunStarted(EventFields):
    """A command started on these hosts."""

    type: ClassVar[str] = "run_started"
    command: str
    hosts: list[str]
    revision: Optional[str] = None
    ref: Optional[str] = None
    dry_run: Optional[bool] = None
    archive_bytes: Optional[int] = None
    to: Nullable[str] = None
    forward: Optional[bool] = None


@dataclass(frozen=True, kw_only=True)
class HostConnected(EventFields):
    """SSH connection open, host key verified."""

    type: ClassVar[str] = "host_connected"
    host: str
    seconds: Seconds


@dataclass(frozen=True, kw_only=True)
class Lock(EventFields):
    """Deploy lock state on a host; message names the holder."""

    type: ClassVar[str] = "lock"
    host: str
    status: Literal["acquired", "held", "waiting", "released", "broken", "free"]
    message: Optional[str] = None
    stale: Optional[bool] = None
    seconds_left: Optional[Seconds] = None


@dataclass(frozen=True, kw_only=True)
class PhaseStarted(EventFields):
    """A phase (prepare, publish, finish, revert, discard, ...) started."""

    type: ClassVar[str] = "phase_started"
    phase: str
    hosts: list[str]


@dataclass(frozen=True, kw_only=True)
class HostPhase(EventFields):
    """One host's script for a phase finished; step is where it stopped."""

    type: ClassVar[str] = "host_phase"
    host: str
    phase: str
    status: OkOrFailed
    seconds: Seconds
    step: Optional[str] = None
    message: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class PhaseFinished(EventFields):
    """A phase finished on every host."""

    type: ClassVar[str] = "phase_finished"
    phase: str
    status: OkOrFailed
    seconds: Seconds
    failed: list[str]


@dataclass(frozen=True, kw_only=True)
class Hook(EventFields):
    """A local hook ran."""

    type: ClassVar[str] = "hook"
    phase: str
    name: str
    where: Literal["local", "host"]
    status: OkOrFailed
    message: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class Script(EventFields):
    """Dry run: the exact script a phase would run on a host."""

    type: ClassVar[str] = "script"
    host: str
    phase: str
    script: str
    stdin: Nullable[str] = None


@dataclass(frozen=True, kw_only=True)
class HostState(EventFields):
    """`releases` and `check` results for one host."""

    type: ClassVar[str] = "host_state"
    host: str
    status: Optional[OkOrFailed] = None
    releases: Optional[list[ReleaseRow]] = None
    current: Nullable[str] = None
    lock: Optional[str] = None
    checks: Optional[list[tuple[str, bool, str]]] = None


@dataclass(frozen=True, kw_only=True)
class HostOutput(EventFields):
    """What a recipe's command printed on a host."""

    type: ClassVar[str] = "host_output"
    host: str
    message: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class Batch(EventFields):
    """Rolling release: a batch (canary first) started or finished."""

    type: ClassVar[str] = "batch"
    status: Literal["started", "done"]
    name: str
    hosts: list[str]
    index: Optional[int] = None
    of: Optional[int] = None


@dataclass(frozen=True, kw_only=True)
class Lb(EventFields):
    """Load balancer: a host drained (weight 0 on every director), its connections gone, its weights
    restored, (add-server) a new real server `joined` at weight 0 / `left`, or (keepalived) a director
    that went silent mid-rollout `director_lost`: `directors` carry on, `vips` says who holds each VIP."""

    type: ClassVar[str] = "lb"
    status: Literal["drained", "drain_complete", "restored", "joined", "left", "director_lost"]
    host: Optional[str] = None
    directors: Optional[list[str]] = None
    hosts: Optional[list[str]] = None
    weights: Optional[dict[str, int]] = None
    seconds: Optional[Seconds] = None
    reason: Optional[str] = None
    vips: Optional[dict[str, list[str]]] = None


@dataclass(frozen=True, kw_only=True)
class Gate(EventFields):
    """Health or warm-up gate result for a host (warm figures: hits, misses, hit_ratio, new_items,
    evictions, requests, errors)."""

    type: ClassVar[str] = "gate"
    host: str
    name: Literal["health", "warm"]
    status: OkOrFailed
    seconds: Optional[Seconds] = None
    attempts: Optional[int] = None
    release: Nullable[str] = None
    figures: Nullable[dict[str, float]] = None
    message: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class Recover(EventFields):
    """dsas recover: what the journal said was left undone (releases: drained, switched; DRBD: the
    node it serves on)."""

    type: ClassVar[str] = "recover"
    status: str
    release: Nullable[str] = None
    forward: Optional[bool] = None
    drained: Optional[list[str]] = None
    switched: Optional[list[str]] = None
    resource: Optional[str] = None
    primary: Optional[str] = None
    message: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class DrbdState(EventFields):
    """DRBD: one node's view of a resource (message: its state in a line, or `unreachable`)."""

    type: ClassVar[str] = "drbd_state"
    host: str
    message: str
    resource: str
    reachable: bool
    role: Optional[str] = None
    peer_role: Optional[str] = None
    cstate: Optional[str] = None
    disk: Optional[str] = None
    peer_disk: Optional[str] = None
    out_of_sync_kb: Optional[int] = None
    sync_done: Nullable[float] = None
    mounted: Optional[bool] = None
    service_ip: Optional[bool] = None


@dataclass(frozen=True, kw_only=True)
class DrbdVerdict(EventFields):
    """DRBD: whether a switchover is safe now, and why not."""

    type: ClassVar[str] = "drbd_verdict"
    status: Literal["safe", "unsafe"]
    message: str
    resource: str
    primary: Nullable[str]
    reasons: list[str]


@dataclass(frozen=True, kw_only=True)
class DrbdStep(EventFields):
    """DRBD: one step of a switchover (or of `drbd recover`) on a node finished."""

    type: ClassVar[str] = "drbd_step"
    host: str
    phase: str
    status: OkOrFailed
    seconds: Seconds
    message: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class ProvisionStep(EventFields):
    """add-server: a step of installing a new host (host = its name) started, ok, failed, skipped (done by
    an earlier run) or still waiting."""

    type: ClassVar[str] = "provision_step"
    host: str
    phase: Literal["validate", "boot_files", "power_on", "install", "pxe_cleanup", "bootstrap", "deploy",
                   "join_pool", "stage_file"]
    status: Literal["started", "ok", "failed", "skipped", "waiting"]
    seconds: Optional[float] = None
    message: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class WarningEvent(EventFields):  # not `Warning`: that is Python's exception class
    """Something worth a look that did not stop the run."""

    type: ClassVar[str] = "warning"
    message: str
    host: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class Summary(EventFields):
    """Always the last event of a run: outcome, exit code, per-host outcome and timings, SSH round trips
    (phase scripts) per host, and `heartbeats`: lock heartbeats sent to hosts that waited, counted apart."""

    type: ClassVar[str] = "summary"
    status: OkOrFailed
    message: str
    command: str
    exit_code: Literal[0, 1, 2, 3, 4]
    release: Optional[str] = None
    revision: Optional[str] = None
    ref: Optional[str] = None
    hosts: Optional[dict[str, HostOutcome]] = None
    round_trips: Optional[dict[str, int]] = None
    heartbeats: Optional[dict[str, int]] = field(default=None, metadata={
        "description": "Lock heartbeats per host, sent while a host waited (not counted in round_trips)."})


# ---- building an event -------------------------------------------------------------------


def typed_event(type: str, fields: dict[str, Any]) -> EventFields:
    """The event `type` with `fields` as its dataclass; TypeError names what does not fit: an unknown
    type or field, a missing required field, or None where the JSON line would then break the schema."""
    cls = EVENT_CLASSES.get(type)
    if cls is None:
        raise TypeError(f"unknown event type {type!r}: declare it in {__name__}")
    rules = field_rules(cls)
    problems = [f"unknown field {name!r}" for name in fields if name not in rules]
    problems += [f"missing field {name!r}" for name, rule in rules.items() if rule.required and name not in fields]
    problems += [f"{name!r} is None" for name, value in fields.items()
                 if value is None and name in rules and not rules[name].may_be_none]
    if problems:
        raise TypeError(f"event {type!r}: {', '.join(problems)} (fields are declared in {__name__})")
    return cls(**fields)


class FieldRule(NamedTuple):
    required: bool
    may_be_none: bool


@functools.cache
def field_rules(cls: type[EventFields]) -> dict[str, FieldRule]:
    """Each field of an event class: whether it is required, whether an emit may pass None for it."""
    hints = typing.get_type_hints(cls, include_extras=True)
    rules = {}
    for f in dataclasses.fields(cls):
        nullable = typing.get_origin(hints[f.name]) is Annotated and NULL in hints[f.name].__metadata__
        # None for an optional envelope field leaves it out of the line; anywhere else it is sent as null
        rules[f.name] = FieldRule(is_required(f), nullable or (f.name in ENVELOPE_FIELDS and not is_required(f)))
    return rules


def is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# ---- generating the schemas and the docs table ---------------------------------------------

PACKAGE_DIR = Path(__file__).resolve().parent
EVENTS_SCHEMA_PATH = PACKAGE_DIR / "events.schema.json"
REPORT_SCHEMA_PATH = PACKAGE_DIR / "report.schema.json"
DOCS_PATH = PACKAGE_DIR.parents[1] / "docs" / "events.md"
TABLE_BEGIN = "<!-- event table: generated by `python -m dsasdeploy.report.event_types --write`, do not edit -->"
TABLE_END = "<!-- end of the generated event table -->"

PLAIN_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


def schema_of(hint: Any) -> dict[str, Any]:
    """The JSON schema of a field's Python type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        out = schema_of(args[0])
        for mark in hint.__metadata__:
            if mark == NULL:
                out["type"] = [out["type"], "null"]
            elif isinstance(mark, Minimum):
                out["minimum"] = mark.value
        return out
    if origin is typing.Union:  # Optional[X]: None means absent
        (inner,) = [a for a in args if a is not type(None)]
        return schema_of(inner)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": schema_of(args[0])}
    if origin is tuple:
        return {"type": "array", "prefixItems": [schema_of(a) for a in args]}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_of(args[1])}
    if typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        required = [name for name in hints if name in hint.__required_keys__]
        return {"type": "object", **({"required": required} if required else {}),
                "properties": {name: schema_of(value) for name, value in hints.items()}}
    return {"type": PLAIN_TYPES[hint]}


def fields_schema(cls: type[EventFields]) -> dict[str, Any]:
    """`required` and `properties` of an event class."""
    hints = typing.get_type_hints(cls, include_extras=True)
    properties = {}
    for f in dataclasses.fields(cls):
        properties[f.name] = schema_of(hints[f.name])
        if "description" in f.metadata:
            properties[f.name]["description"] = f.metadata["description"]
    return {"required": [f.name for f in dataclasses.fields(cls) if is_required(f)], "properties": properties}


def description(cls: type[EventFields]) -> str:
    return " ".join((cls.__doc__ or "").split())


def events_schema() -> dict[str, Any]:
    """events.schema.json: the envelope, then each type's fields under `if type == ...`."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://dsas.invalid/schemas/events-v{SCHEMA_VERSION}.json",
        "title": f"dsas --json event (schema version {SCHEMA_VERSION})",
        "description": "One JSON object per line on stdout with --json. Fields may be added within a schema "
                       "version; removing or changing one bumps `schema`. Generated from "
                       "dsasdeploy/report/event_types.py.",
        "type": "object",
        "required": ["schema", "type", "time", "stage"],
        "properties": {
            "schema": {"const": SCHEMA_VERSION,
                       "description": "Version of this event schema; bumped on any incompatible change."},
            "type": {"enum": list(EVENT_CLASSES)},
            "time": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$",
                     "description": "UTC, ISO 8601"},
            "stage": {"type": "string"},
            **{name: {"type": "string"} for name in ENVELOPE_FIELDS},
        },
        "allOf": [
            {"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
             "then": {**fields_schema(cls), "description": description(cls)}}
            for name, cls in EVENT_CLASSES.items()
        ],
    }


def report_schema() -> dict[str, Any]:
    """report.schema.json: the --report file is the summary event's fields with `schema` and `stage`."""
    summary = fields_schema(Summary)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://dsas.invalid/schemas/report-v{SCHEMA_VERSION}.json",
        "title": f"dsas --report FILE (version {SCHEMA_VERSION})",
        "description": "The summary event of the run as one JSON object. Generated from "
                       "dsasdeploy/report/event_types.py.",
        "type": "object",
        "required": ["schema", "stage", *summary["required"]],
        "properties": {"schema": {"const": SCHEMA_VERSION}, "stage": {"type": "string"}, **summary["properties"]},
    }


def field_list(cls: type[EventFields], required: bool) -> str:
    """The required (or optional) fields of an event class for the docs table, with their enum values."""
    properties = fields_schema(cls)["properties"]
    names = []
    for name, rule in field_rules(cls).items():
        if rule.required == required:
            values = properties[name].get("enum", ())
            nullable = isinstance(properties[name].get("type"), list)  # [X, "null"]
            names.append(f"`{name}`" + (f" ({', '.join(map(str, values))})" if values else "")
                         + (" (or null)" if nullable else ""))
    return ", ".join(names) or "-"


def docs_table() -> str:
    """The markdown table of docs/events.md: type, required and optional fields, meaning."""
    rows = ["| type | required fields | optional fields | meaning |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {field_list(cls, True)} | {field_list(cls, False)} | {description(cls)} |"
             for name, cls in EVENT_CLASSES.items()]
    return "\n".join(rows) + "\n"


def as_json(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def with_docs_table(doc: str) -> str:
    """`doc` with the text between the table markers replaced by the generated table."""
    head, begin, rest = doc.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise ValueError(f"{DOCS_PATH}: the markers of the generated event table are missing")
    return f"{head}{TABLE_BEGIN}\n{docs_table()}{TABLE_END}{tail}"


def generated_files() -> dict[Path, str]:
    """Every generated file and the text it must have."""
    return {EVENTS_SCHEMA_PATH: as_json(events_schema()), REPORT_SCHEMA_PATH: as_json(report_schema()),
            DOCS_PATH: with_docs_table(DOCS_PATH.read_text())}


def main(argv: list[str]) -> int:
    """--write: rewrite the generated files that are out of date; without it, name them (exit 1)."""
    stale = {path: text for path, text in generated_files().items() if path.read_text() != text}
    for path, text in stale.items():
        if "--write" in argv:
            path.write_text(text)
            print(f"wrote {path}")
        else:
            print(f"out of date: {path} (python -m dsasdeploy.report.event_types --write)")
    return 1 if stale and "--write" not in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

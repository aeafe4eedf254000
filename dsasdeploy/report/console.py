"""Reporters: JSON lines for CI, plain timestamped lines without a TTY, a live Rich
view on a terminal. The only module that imports Rich. Reporters decide nothing."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional, TextIO

from .events import Event


def write_lines(stream: TextIO, text: str) -> bool:
    """Write and flush; False when the reader went away (`dsas deploy --json | head`): the run
    goes on to its own end and exit code, its output from then on goes nowhere."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except BrokenPipeError:
        if stream is sys.stdout:  # later prints (and the flush at exit) must not fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return False


class JsonReporter:
    """One JSON object per line on stdout (--json)."""

    def __init__(self, stream: Optional[TextIO] = None):
        self.stream = stream or sys.stdout

    def emit(self, event: Event) -> None:
        write_lines(self.stream, json.dumps(event.to_dict(), sort_keys=False) + "\n")

    def close(self) -> None:
        self.stream.flush()


def describe(event: Event) -> Optional[str]:
    """The plain one-line text of an event (None: nothing worth a line)."""
    d = event.data
    host = f"{event.host}: " if event.host else ""
    if event.type == "run_started":
        rev = f" revision {d['revision'][:12]} ({d.get('ref')})" if d.get("revision") else ""
        return f"{d.get('command')} {event.stage}{rev} on {len(d.get('hosts', []))} host(s): {', '.join(d.get('hosts', []))}"
    if event.type == "host_connected":
        return f"{host}connected ({d.get('seconds', 0):.2f}s)"
    if event.type == "lock":
        extra = f" by {event.message}" if event.message else ""
        return f"{host}lock {event.status}{extra}"
    if event.type == "phase_started":
        return f"{event.phase}: started on {len(d.get('hosts', []))} host(s)"
    if event.type == "host_phase":
        step = f" at {d['step']}" if event.status == "failed" and d.get("step") else ""
        msg = f": {event.message}" if event.message else ""
        return f"{host}{event.phase} {event.status}{step} ({d.get('seconds', 0):.2f}s){msg}"
    if event.type == "phase_finished":
        return f"{event.phase}: {event.status} ({d.get('seconds', 0):.2f}s)"
    if event.type == "hook":
        msg = f": {event.message}" if event.message else ""
        return f"{host}hook {d.get('name')} ({d.get('where')}) {event.status}{msg}"
    if event.type == "script":
        return f"--- {event.host}: {event.phase} (would run) ---\n{d.get('script', '').rstrip()}"
    if event.type == "host_state":
        return f"{host}{format_state(d)}"
    if event.type == "batch":
        return f"{d.get('name')} {event.status}: {', '.join(d.get('hosts', []))}"
    if event.type == "lb":
        if event.status == "drain_complete":
            return f"drained (no active connections) after {d.get('seconds', 0):.1f}s: {', '.join(d.get('hosts', []))}"
        extra = f" on {', '.join(d['directors'])}" if d.get("directors") else ""
        if d.get("weights"):
            extra = " weights " + ", ".join(f"{k}={v}" for k, v in d["weights"].items())
        return f"{host}{event.status}{extra}"
    if event.type == "gate":
        figures = d.get("figures") or {}
        shown = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in figures.items())
        detail = f" ({shown})" if shown else f" ({d.get('attempts', 0)} attempts, {d.get('seconds', 0):.1f}s)"
        msg = f": {event.message}" if event.message else ""
        return f"{host}{d.get('name')} gate {event.status}{detail}{msg}"
    if event.type == "recover":
        return (f"recovering release {d.get('release')} ({'forward' if d.get('forward') else 'back'}): "
                f"drained {d.get('drained')}, switched {d.get('switched')}")
    if event.type == "drbd_state":
        return f"{host}{d.get('resource')}: {event.message}"
    if event.type == "drbd_verdict":
        return f"{d.get('resource')}: {event.message}"
    if event.type == "drbd_step":
        msg = f": {event.message}" if event.message else ""
        return f"{host}{event.phase} {event.status} ({d.get('seconds', 0):.2f}s){msg}"
    if event.type == "provision_step":
        if event.status == "started":
            return None  # the outcome line follows
        took = f" ({d['seconds']:.1f}s)" if "seconds" in d else ""
        return f"{host}{event.phase} {event.status}{took}" + (f": {event.message}" if event.message else "")
    if event.type == "host_output":
        return f"{host}{event.message or ''}"
    if event.type == "warning":
        return f"{host}WARNING: {event.message}"
    if event.type == "summary":
        line = f"{event.status.upper() if event.status else 'DONE'}: {event.message or ''}".rstrip(": ")
        trips = d.get("round_trips") or {}
        released = [n for n in trips if n in (d.get("hosts") or trips)]
        if released:
            line += f" [ssh round trips per released host: max {max(trips[n] for n in released)}]"
        return line
    return f"{host}{event.type} {event.message or ''}".rstrip()


def format_state(d: dict) -> str:
    """One host's state (releases / check) as text."""
    parts = []
    if "checks" in d:
        parts.append(", ".join(f"{name} {'ok' if ok else 'FAIL'}{(' (' + note + ')') if note else ''}"
                               for name, ok, note in d["checks"]))
    if "releases" in d:
        lines = []
        for rel in d["releases"]:
            flags = [f for f, on in (("current", rel.get("current")), ("failed", rel.get("failed"))) if on]
            lines.append(f"    {rel['id']}  {rel.get('revision', '')[:12]:12}  {' '.join(flags)}".rstrip())
        parts.append("releases:" + ("\n" + "\n".join(lines) if lines else " none"))
    return "; ".join(parts) if "checks" in d else "\n".join(parts)


class PlainReporter:
    """Timestamped lines, for logs and CI without --json."""

    def __init__(self, stream: Optional[TextIO] = None):
        self.stream = stream or sys.stdout

    def emit(self, event: Event) -> None:
        text = describe(event)
        if text is None:
            return
        first, *rest = text.split("\n")
        write_lines(self.stream, f"{event.time} {first}\n" + "".join(f"{line}\n" for line in rest))

    def close(self) -> None:
        self.stream.flush()


class RichReporter:
    """A live table of every host on a terminal: batch, phase, status, release, pool state
    (weight per director, active connections), health and warm figures, time."""

    COLUMNS = ("host", "batch", "phase", "status", "release", "pool", "health", "warm", "time")

    def __init__(self, stream: Optional[TextIO] = None):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream or sys.stdout)
        self.rows: dict[str, dict] = {}
        self.live = Live(self._table(), console=self.console, refresh_per_second=8, transient=False)
        self.started = False

    def _table(self):
        from rich.table import Table

        table = Table(title="dsas", expand=False)
        for column in self.COLUMNS:
            table.add_column(column)
        styles = {"ok": "green", "failed": "bold red", "running": "yellow", "skipped": "dim",
                  "drained": "yellow", "restored": "green"}
        for host, row in self.rows.items():
            cells = []
            for column in self.COLUMNS:
                value = host if column == "host" else str(row.get(column, ""))
                style = styles.get(value.split(" ")[0]) if column in ("status", "pool", "health", "warm") else None
                cells.append(f"[{style}]{value}[/]" if style and value else value)
            table.add_row(*cells)
        return table

    def _row(self, host: str) -> dict:
        return self.rows.setdefault(host, {})

    def emit(self, event: Event) -> None:
        d = event.data
        if event.type == "run_started":
            for host in d.get("hosts", []):
                self._row(host).update(phase="connect", status="running")
            if not self.started:
                self.live.start()
                self.started = True
        elif event.type == "phase_started":
            for host in d.get("hosts", []):
                self._row(host).update(phase=event.phase, status="running", time="")
        elif event.type == "host_phase" and event.host:
            row = self._row(event.host)
            row.update(phase=event.phase, status=event.status, time=f"{d.get('seconds', 0):.2f}s")
            if event.status == "failed" and d.get("step"):
                row["status"] = f"failed at {d['step']}"
        elif event.type == "host_connected" and event.host:
            self._row(event.host).update(phase="connect", status="ok", time=f"{d.get('seconds', 0):.2f}s")
        elif event.type == "batch":
            for host in d.get("hosts", []):
                self._row(host)["batch"] = d.get("name", "")
        elif event.type == "lb":
            if event.status == "drain_complete":
                for host in d.get("hosts", []):
                    self._row(host)["pool"] = "drained, 0 active"
            elif event.host:
                weights = d.get("weights") or {}
                detail = (" " + ",".join(f"{k.split(' ')[0]}={v}" for k, v in weights.items())) if weights else ""
                self._row(event.host)["pool"] = f"{event.status}{detail}"
        elif event.type == "gate" and event.host:
            figures = d.get("figures") or {}
            if d.get("name") == "health":
                self._row(event.host)["health"] = f"{event.status} ({d.get('attempts', 0)} tries)"
                if d.get("release"):
                    self._row(event.host)["release"] = d["release"]
            else:
                ratio = figures.get("hit_ratio")
                self._row(event.host)["warm"] = f"{event.status}" + (f" hit {ratio:.0%}" if ratio is not None else "")
        if event.type in ("summary", "warning", "script", "host_state", "host_output", "hook", "lock",
                          "recover", "drbd_state", "drbd_verdict", "drbd_step", "provision_step"):
            text = describe(event)
            if text and not (event.type == "lock" and event.status in ("acquired", "released")):
                self.console.print(text, markup=False, highlight=False)
        if self.started:
            self.live.update(self._table())

    def close(self) -> None:
        if self.started:
            self.live.update(self._table())
            self.live.stop()
            self.started = False


def make_reporter(json_mode: bool, stream: Optional[TextIO] = None):
    """JSON with --json; Rich on a terminal; plain lines otherwise (CI, pipes)."""
    stream = stream or sys.stdout
    if json_mode:
        return JsonReporter(stream)
    if stream.isatty():
        return RichReporter(stream)
    return PlainReporter(stream)

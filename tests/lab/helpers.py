"""What the lab's deploy tests share: client load on the VIP, dsas as a subprocess, its --json events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from dsasdeploy.lab.topology import VIP, VIP_PORT

ROOT = Path(__file__).resolve().parents[2]
DSAS = [sys.executable, "-m", "dsasdeploy"]

LOAD = r"""
import json, os, socket, sys, threading, time
stop, out, deadline = sys.argv[1], sys.argv[2], time.monotonic() + 120
VIP, PORT = sys.argv[3], int(sys.argv[4])
ok = errors = 0
started = time.monotonic()
releases, hosts, samples, lock = {}, {}, [], threading.Lock()
order = []  # the serving host of each answer, collapsed: a new entry only when it changes

def worker():
    global ok, errors
    while not os.path.exists(stop) and time.monotonic() < deadline and ok + errors < 60000:
        one()

def one():
    global ok, errors
    try:
        s = socket.create_connection((VIP, PORT), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        status = int(head.split()[1]) if head.startswith("HTTP/") else 0
        release = next((l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("x-release")), "?")
        host = next((l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("x-host")), "?")
        with lock:
            if status == 200:
                ok += 1
                releases[release] = releases.get(release, 0) + 1
                hosts[host] = hosts.get(host, 0) + 1
                if not order or order[-1][0] != host:
                    order.append((host, round(time.time(), 3)))
            else:
                errors += 1
                samples.append(f"HTTP {status}")
    except Exception as exc:
        with lock:
            errors += 1
            samples.append(repr(exc))

threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
rate = (ok + errors) / max(time.monotonic() - started, 0.001)
json.dump({"ok": ok, "errors": errors, "releases": releases, "hosts": hosts, "switches": len(order) - 1,
           "order": order[:50], "samples": samples[:5], "rate": rate}, open(out, "w"))
"""


class ClientLoad:
    """HTTP requests to the VIP from the lab's client namespace, counted (bounded in count and time)."""

    def __init__(self, tmp: Path, port: int = VIP_PORT):
        self.stop_file, self.out = tmp / "stop-load", tmp / "load.json"
        self.stop_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", "dsaslab-client", sys.executable, "-c", LOAD,
                                      str(self.stop_file), str(self.out), VIP, str(port)])

    def finish(self) -> dict:
        self.stop_file.touch()
        self.proc.wait(timeout=30)
        return json.loads(self.out.read_text())


def dsas(env, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([*DSAS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


SCHEMA = json.loads((ROOT / "dsasdeploy" / "report" / "events.schema.json").read_text())


def events(stdout: str) -> list[dict]:
    """The --json events of a run, each validated against the published schema."""
    found = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    for event in found:
        jsonschema.validate(event, SCHEMA)
    return found

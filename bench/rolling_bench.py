#!/usr/bin/env python3
"""Benchmark: a rolling deploy through the lab's real LVS, for 3 and 10 web hosts.

Splits the wall time of `dsas deploy lab` (from its own --json events) into
  waiting:  drain (connections to reach 0), health gate, warm gate, weight ramp
  app:      the publish step (switch + the app's own restart command)
  dsas:     everything else: SSH connections, probes, prepare, LB edits and checks,
            journal, finish: the tool's own overhead
and prints the overhead per host (target: at most 150 ms per host).

Needs root and the lab (it brings the lab up with the host count it needs).
Usage: .venv/bin/python bench/rolling_bench.py [--hosts 3,10] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsasdeploy.lab import Lab  # noqa: E402


def when(event: dict) -> float:
    return datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def split(events: list[dict]) -> dict[str, float]:
    """Seconds spent waiting, in the app, and in dsas itself, from one deploy's events."""
    total = when(events[-1]) - when(events[0])
    drain = sum(e.get("seconds", 0) for e in events if e["type"] == "lb" and e["status"] == "drain_complete")
    app = sum(e["seconds"] for e in events if e["type"] == "phase_finished" and e["phase"] == "publish")
    gates, started, last = 0.0, None, None
    for event in events:  # a batch's gates run in parallel: from its publish to its last gate
        if event["type"] == "phase_finished" and event["phase"] == "publish":
            started, last = when(event), None
        elif event["type"] == "gate" and started is not None:
            last = when(event)
        elif event["type"] == "batch" and event["status"] == "done" and started is not None:
            gates += (last - started) if last else 0.0
            started = None
    waiting = drain + gates
    return {"total": total, "waiting": waiting, "app": app, "dsas": total - waiting - app}


def deploy(env: dict, revision: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "dsasdeploy", "deploy", "lab", "--revision", revision, "--json"],
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"deploy failed: {done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="3,10")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("rolling_bench: needs root (it runs the lab)")
    lab = Lab()
    work = Path(tempfile.mkdtemp(prefix="dsas-rolling-bench-"))
    print(f"{'hosts':>5} {'total s':>8} {'waiting s':>10} {'app s':>6} {'dsas s':>7} {'dsas ms/host':>13}")
    try:
        for count in [int(n) for n in args.hosts.split(",")]:
            meta = lab.meta()
            if meta and meta.get("web") != count:
                lab.down()
            lab.up(web=count)
            project = work / f"p{count}"
            (project / "stages").mkdir(parents=True)
            shutil.copy(ROOT / "dsas.yaml", project / "dsas.yaml")
            shutil.copy(lab.stage_file(), project / "stages" / "lab.yaml")
            env = {**os.environ, "DSAS_PROJECT": str(project), "DSAS_STATE_DIR": str(work / "state"),
                   "DSAS_CACHE_DIR": str(work / "cache"), "CI": "true"}
            deploy(env, "v1")
            figures = []
            for run in range(args.runs):
                figures.append(split(deploy(env, "v2" if run % 2 == 0 else "v1")))
            med = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
            print(f"{count:>5} {med['total']:>8.2f} {med['waiting']:>10.2f} {med['app']:>6.2f} "
                  f"{med['dsas']:>7.2f} {1000 * med['dsas'] / count:>13.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

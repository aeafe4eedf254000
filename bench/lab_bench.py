#!/usr/bin/env python3
"""Benchmark: `dsas lab up` / `down` wall time, host memory and a rolling deploy, per guest engine.

Targets (issues 3 and 11): up with 3 web hosts < 10 s on UML and < 20 s on qemu TCG, with 20
web hosts < 30 s on either; down < 5 s; memory of the default lab < 1 GiB (the drop in the
host's MemAvailable, read after a rolling deploy); a rolling `dsas deploy lab` of 3 web hosts on
qemu within 1.5x of the same on UML.
Engines that cannot boot here are reported as such (the probe says why) and skipped.
Needs root. Leaves the lab down if it was down, and brings a 3-host lab back if it was up.
Usage: .venv/bin/python bench/lab_bench.py [--engines uml,qemu] [--hosts 3,20] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsasdeploy.errors import UsageError  # noqa: E402
from dsasdeploy.lab import Lab, engine  # noqa: E402
from dsasdeploy.lab.lab import meminfo  # noqa: E402


def rolling_deploy_seconds(lab: Lab) -> float:
    """Wall time of one `dsas deploy lab` (rolling, through the director) against the running lab."""
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "dsasdeploy", "deploy", "lab", "--json"], cwd=ROOT,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode:
        raise SystemExit(f"lab_bench: dsas deploy lab failed (exit {p.returncode}): {p.stderr.strip()[-400:]}")
    return time.monotonic() - started


def bench_engine(lab: Lab, name: str, counts: list[int], runs: int) -> dict[int, dict]:
    os.environ["DSAS_LAB_ENGINE"] = name
    rows: dict[int, dict] = {}
    for count in counts:
        ups, downs, mems, deploys = [], [], [], []
        for _ in range(runs):
            before = meminfo()["host_available_kib"]
            started = time.monotonic()
            r = lab.up(web=count)
            ups.append(time.monotonic() - started)
            label = r["engine"].label
            if count == 3:
                deploys.append(rolling_deploy_seconds(lab))
            time.sleep(1.0)  # let the guests settle before reading memory
            mems.append((before - meminfo()["host_available_kib"]) / 1024)
            started = time.monotonic()
            lab.down()
            downs.append(time.monotonic() - started)
        rows[count] = {"engine": label, "up": statistics.median(ups), "down": statistics.median(downs),
                       "mem": statistics.median(mems),
                       "deploy": statistics.median(deploys) if deploys else None}
        d = rows[count]
        deploy = f"{d['deploy']:>9.1f}" if d["deploy"] is not None else f"{'-':>9}"
        print(f"{d['engine']:<9} {count:>4} {d['up']:>6.1f} {d['down']:>7.1f} {d['mem']:>11.0f} {deploy}",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="uml,qemu")
    parser.add_argument("--hosts", default="3,20")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("lab_bench: needs root")
    lab = Lab()
    was_up = lab.meta() is not None
    if was_up:
        lab.down()
    counts = [int(n) for n in args.hosts.split(",")]
    print(f"{'engine':<9} {'web':>4} {'up s':>6} {'down s':>7} {'memory MiB':>11} {'deploy s':>9}"
          f"   (median of {args.runs}; deploy: rolling `dsas deploy lab`, 3 web hosts)")
    results = {}
    try:
        for name in args.engines.split(","):
            try:
                engine.choose(lab.uml_root, lab.cache, forced=name)
            except UsageError as e:
                print(f"{name:<9} cannot run here: {e}")
                continue
            results[name] = bench_engine(lab, name, counts, args.runs)
    finally:
        os.environ.pop("DSAS_LAB_ENGINE", None)
        if was_up:
            lab.up(web=3)
    uml, qemu = results.get("uml", {}).get(3), results.get("qemu", {}).get(3)
    if uml and qemu and uml["deploy"] and qemu["deploy"]:
        print(f"rolling deploy of 3 web hosts: qemu/UML = {qemu['deploy'] / uml['deploy']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()

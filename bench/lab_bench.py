#!/usr/bin/env python3
"""Benchmark: `dsas lab up` / `down` wall time and host memory, for 3 and 20 web hosts.

Targets (issue 3): up with 3 web hosts < 10 s, with 20 < 30 s; down < 5 s; memory of
the default lab < 1 GiB (measured as the drop in the host's MemAvailable).
Needs root. Leaves the lab down if it was down, and brings a 3-host lab back if it was up.
Usage: .venv/bin/python bench/lab_bench.py [--hosts 3,20] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsasdeploy.lab import Lab  # noqa: E402
from dsasdeploy.lab.lab import meminfo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="3,20")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("lab_bench: needs root")
    lab = Lab()
    was_up = lab.meta() is not None
    if was_up:
        lab.down()
    print(f"{'web':>4} {'up s':>6} {'down s':>7} {'memory MiB':>11}   (median of {args.runs})")
    try:
        for count in [int(n) for n in args.hosts.split(",")]:
            ups, downs, mems = [], [], []
            for _ in range(args.runs):
                before = meminfo()["host_available_kib"]
                started = time.monotonic()
                lab.up(web=count)
                ups.append(time.monotonic() - started)
                time.sleep(1.0)  # let the guests settle before reading memory
                mems.append((before - meminfo()["host_available_kib"]) / 1024)
                started = time.monotonic()
                lab.down()
                downs.append(time.monotonic() - started)
            print(f"{count:>4} {statistics.median(ups):>6.1f} {statistics.median(downs):>7.1f} "
                  f"{statistics.median(mems):>11.0f}")
    finally:
        if was_up:
            lab.up(web=3)


if __name__ == "__main__":
    main()

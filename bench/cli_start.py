#!/usr/bin/env python3
"""Benchmark: how long `dsas` takes to start, beside the bare interpreter.

Prints the median wall milliseconds of `python -c pass` (the same interpreter as dsas),
`dsas --version`, `dsas --help` (in an empty directory: no project, so no recipes to
mount), `dsas --help` in the repository root (its recipes/uptime.py is mounted: the full
program), and `dsas config lab` (repository root, stages/lab.yaml), each with its ratio to
the bare interpreter. Runs one command at a time, `--runs` times each, interleaved so that
a busy moment of the machine falls on every command alike.

Usage: .venv/bin/python bench/cli_start.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(empty_dir: Path) -> list[tuple[str, list[str], Path]]:
    """(label, argv, cwd) of each command measured; the first is the floor."""
    python = sys.executable
    dsas = str(Path(python).parent / "dsas")
    return [
        ("python -c pass", [python, "-c", "pass"], empty_dir),
        ("dsas --version", [dsas, "--version"], empty_dir),
        ("dsas --help", [dsas, "--help"], empty_dir),
        ("dsas --help (project with recipes)", [dsas, "--help"], ROOT),
        ("dsas config lab", [dsas, "config", "lab"], ROOT),
    ]


def wall_ms(argv: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "DSAS_PROJECT"}
    with tempfile.TemporaryDirectory() as empty:
        measured = commands(Path(empty))
        for _, argv, cwd in measured:  # warm the page cache and the .pyc files
            wall_ms(argv, cwd, env)
        times: dict[str, list[float]] = {label: [] for label, _, _ in measured}
        for _ in range(args.runs):
            for label, argv, cwd in measured:
                times[label].append(wall_ms(argv, cwd, env))
    floor = statistics.median(times[measured[0][0]])
    print(f"median of {args.runs} runs, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:<38} {median:7.1f} ms  {median / floor:5.2f}x  "
              f"(min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark: a one-file change deployed as a delta vs the full archive, at N local sshd hosts.

Per N (default 10, 20, 40; `--hosts 200` for the scale row), on one controller: the first
deploy (full archive everywhere), then per run a commit that changes one file, deployed as a
delta, the same change with `--full`, and a rollback; medians of `--runs`. Prints wall
seconds (the `dsas` CLI as users run it), the per-host cost (wall / N) and the bytes sent to
each host (from the --json summary). Hosts: real sshd on loopback (dsasdeploy.devhosts).

Usage: .venv/bin/python bench/delta_bench.py [--runs 3] [--hosts 10,20,40] [--parallelism 20]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.deploy_bench import dsas_run as timed, make_repo  # noqa: E402
from dsasdeploy.devhosts import DevHosts  # noqa: E402

GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b.invalid"}


def change_one_file(repo: Path, run: int) -> None:
    target = repo / "pkg1" / "mod1" / "module1.py"
    target.write_text(target.read_text() + f"\n# change {run} at {time.time()}\n")
    for args in (["add", "-A"], ["commit", "-q", "-m", f"change {run}"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env={**os.environ, **GIT_ENV})


def bytes_per_host(summary: dict) -> float:
    hosts = summary.get("hosts", {})
    return statistics.median(h.get("bytes_sent", 0) for h in hosts.values()) if hosts else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", default="10,20,40")
    parser.add_argument("--parallelism", type=int, default=20)
    args = parser.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    base = Path(tempfile.mkdtemp(prefix="dsas-delta-bench-"))
    started = time.monotonic()
    hosts = DevHosts(base / "hosts", max(counts)).start()
    print(f"{max(counts)} sshd hosts up in {time.monotonic() - started:.1f} s; {os.cpu_count()} cores; "
          f"parallelism {args.parallelism}; median of {args.runs} runs")
    try:
        size = make_repo(base / "repo")
        project = base / "project"
        (project / "stages").mkdir(parents=True)
        (project / "dsas.yaml").write_text(
            f"application: bench\nrepo: {base / 'repo'}\ndeploy_to: /srv/bench\nkeep_releases: 3\n"
            f"parallelism: {args.parallelism}\nrestart:\n  web: sh bin/restart\n" + hosts.ssh_yaml())
        for host in hosts.hosts:
            host.deploy_to.mkdir(parents=True, exist_ok=True)
        print(f"app: 300 files, {size / 1e6:.1f} MB uncompressed")
        print(f"{'hosts':>5} {'first s':>8} {'1-file delta s':>15} {'per host ms':>12} {'same --full s':>14} "
              f"{'rollback s':>11} {'delta B/host':>13} {'full B/host':>12}")
        cache = base / "cache"
        run_id = 0
        for count in counts:
            (project / "stages" / "bench.yaml").write_text(hosts.stage_yaml(count=count))
            first, _ = timed(project, cache, "deploy", "bench")
            deltas, fulls, rollbacks, delta_bytes, full_bytes = [], [], [], [], []
            for _ in range(args.runs):
                run_id += 1
                change_one_file(base / "repo", run_id)
                time.sleep(1.0)  # release ids are per second
                seconds, summary = timed(project, cache, "deploy", "bench")
                deltas.append(seconds)
                delta_bytes.append(bytes_per_host(summary))
                time.sleep(1.0)
                seconds, _ = timed(project, cache, "rollback", "bench", "--yes")
                rollbacks.append(seconds)
                time.sleep(1.0)
                seconds, summary = timed(project, cache, "deploy", "bench", "--full")
                fulls.append(seconds)
                full_bytes.append(bytes_per_host(summary))
            delta = statistics.median(deltas)
            print(f"{count:>5} {first:>8.2f} {delta:>15.2f} {1000 * delta / count:>12.0f} "
                  f"{statistics.median(fulls):>14.2f} {statistics.median(rollbacks):>11.2f} "
                  f"{statistics.median(delta_bytes):>13.0f} {statistics.median(full_bytes):>12.0f}")
    finally:
        hosts.stop()


if __name__ == "__main__":
    main()

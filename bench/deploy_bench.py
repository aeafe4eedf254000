#!/usr/bin/env python3
"""Benchmark: a whole `dsas deploy` to N = 1, 10, 20 local sshd hosts vs the OpenSSH floor.

Prints, per N: the median wall seconds of a deploy (the `dsas` CLI as users run it,
interpreter start included), the SSH exec round trips per host, and the floor
measured in the same run: the same archive streamed with OpenSSH
(`ssh host 'tar -x -C dir' < archive`) to all N hosts in parallel.

Usage: .venv/bin/python bench/deploy_bench.py [--runs 3] [--hosts 1,10,20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsasdeploy.devhosts import DevHosts  # noqa: E402


def make_repo(path: Path, files: int = 300, seed: int = 7) -> int:
    """A git repo of `files` files, about 3 MB, partly incompressible like real assets."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    total = 0
    for index in range(files):
        sub = path / f"pkg{index % 12}" / f"mod{index % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        if index % 10 == 0:
            data = rng.randbytes(60_000)  # images, fonts: gzip cannot shrink them
            (sub / f"asset{index}.bin").write_bytes(data)
        else:
            words = [rng.choice(["def", "return", "class", "self", "value", "import", "for", "in"])
                     for _ in range(rng.randint(200, 1600))]
            data = " ".join(words).encode()
            (sub / f"module{index}.py").write_bytes(data)
        total += len(data)
    (path / "bin").mkdir()
    (path / "bin" / "restart").write_text("#!/bin/sh\ntrue\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b.invalid"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env)
    return total


def floor_seconds(hosts: DevHosts, count: int, archive: Path, run: int) -> float:
    """The same archive into all hosts at once with OpenSSH: the transport's floor."""
    procs = []
    started = time.monotonic()
    for host in hosts.hosts[:count]:
        target = host.root / "floor" / str(run)
        command = f"mkdir -p {target} && tar -xzf - -C {target}"
        with open(archive, "rb") as source:
            procs.append(subprocess.Popen(
                ["ssh", "-q", "-i", str(hosts.client_key), "-o", f"UserKnownHostsFile={hosts.known_hosts}",
                 "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(host.port),
                 "127.0.0.1", command], stdin=source))
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("floor: ssh failed")
    return time.monotonic() - started


def dsas_run(project: Path, cache: Path, *argv: str) -> tuple[float, dict]:
    """Wall seconds of `dsas ARGV --json` as users run it, and its summary event."""
    env = {**os.environ, "DSAS_PROJECT": str(project), "DSAS_CACHE_DIR": str(cache), "CI": "true"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dsasdeploy", *argv, "--json"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"dsas {' '.join(argv)} failed: {done.stderr}")
    summary = [json.loads(line) for line in done.stdout.splitlines() if '"summary"' in line][-1]
    return seconds, summary


def dsas_deploy(project: Path, cache: Path) -> tuple[float, dict]:
    return dsas_run(project, cache, "deploy", "bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", default="1,10,20")
    args = parser.parse_args()
    counts = [int(n) for n in args.hosts.split(",")]
    base = Path(tempfile.mkdtemp(prefix="dsas-bench-"))
    hosts = DevHosts(base / "hosts", max(counts)).start()
    try:
        size = make_repo(base / "repo")
        project = base / "project"
        (project / "stages").mkdir(parents=True)
        (project / "dsas.yaml").write_text(
            f"application: bench\nrepo: {base / 'repo'}\ndeploy_to: /srv/bench\nkeep_releases: 2\n"
            f"parallelism: 20\nrestart:\n  web: sh bin/restart\n" + hosts.ssh_yaml())
        for host in hosts.hosts:
            host.deploy_to.mkdir(parents=True, exist_ok=True)
        print(f"app: 300 files, {size / 1e6:.1f} MB uncompressed; {os.cpu_count()} cores; "
              f"{args.runs} runs per figure (median)")
        print(f"{'hosts':>5} {'dsas deploy s':>14} {'floor s':>8} {'ratio':>6} {'round trips/host':>17}")
        cache = base / "cache"
        for count in counts:
            (project / "stages" / "bench.yaml").write_text(hosts.stage_yaml(count=count))
            dsas_deploy(project, cache)  # warm-up: builds and caches the archive
            archive = next((cache / "archives").glob("*.tar.gz"))
            runs, floors, trips = [], [], []
            for run in range(args.runs):
                seconds, summary = dsas_deploy(project, cache)
                runs.append(seconds)
                trips.append(max(summary["round_trips"].values()))
                floors.append(floor_seconds(hosts, count, archive, run))
                time.sleep(1.0)  # release ids are per second
            deploy, floor = statistics.median(runs), statistics.median(floors)
            print(f"{count:>5} {deploy:>14.2f} {floor:>8.2f} {deploy / floor:>6.2f} {max(trips):>17}")
        print(f"archive: {archive.stat().st_size / 1e6:.2f} MB compressed")
    finally:
        hosts.stop()


if __name__ == "__main__":
    main()

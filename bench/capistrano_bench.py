#!/usr/bin/env python3
"""Benchmark: dsas and Capistrano 3 side by side, same hosts, same app, same layout.

Per N (default 10, 20, 40) loopback sshd hosts: a full first deploy, a one-file change
(Capistrano: git strategy with its remote cache; dsas: a delta) and a rollback, by each tool,
medians of `--runs`, and the ratio. Each sshd runs in its own mount namespace where the same
deploy_to path is the host's own directory, so Capistrano's one `deploy_to` works for every
host. Both tools restart with `sh bin/restart` in the new release and keep 3 releases.

Needs root and Debian's `capistrano` package (`apt-get install capistrano ruby-ed25519
ruby-bcrypt-pbkdf`). Usage: .venv/bin/python bench/capistrano_bench.py [--runs 3] [--hosts 10,20,40]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dsasdeploy.devhosts as devhosts  # noqa: E402
from bench.deploy_bench import make_repo  # noqa: E402
from bench.deploy_bench import dsas_run as timed  # noqa: E402
from bench.delta_bench import change_one_file  # noqa: E402

CAPFILE = """\
require "capistrano/setup"
require "capistrano/deploy"
require "capistrano/scm/git"
install_plugin Capistrano::SCM::Git
"""

DEPLOY_RB = """\
set :application, "bench"
set :repo_url, "{repo}"
set :branch, "main"
set :deploy_to, "{deploy_to}"
set :keep_releases, 3
set :format, :dot
set :log_level, :error
set :pty, false
set :ssh_options, {{ user: "root", keys: ["{key}"], auth_methods: ["publickey"], verify_host_key: :never }}
namespace :deploy do
  task :restart_app do
    on roles(:web) do
      within release_path do
        execute :sh, "bin/restart"
      end
    end
  end
  after :publishing, :restart_app
end
"""


def with_shared_deploy_to(common: Path):
    """devhosts' sshd wrapper, plus a bind mount of <host root>/cap over `common` in its namespace."""
    original = devhosts._clean_shell_wrapper

    def wrapper(argv: list[str]) -> list[str]:
        root = Path(argv[argv.index("-f") + 1]).parent
        (root / "cap").mkdir(exist_ok=True)
        inner = (f"mount --bind {shlex.quote(str(root / 'cap'))} {shlex.quote(str(common))} && "
                 f"exec {shlex.join(original(argv))}")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
    return wrapper


def cap(directory: Path, *argv: str) -> float:
    started = time.monotonic()
    done = subprocess.run(["cap", "bench", *argv], cwd=directory, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"cap {' '.join(argv)} failed: {done.stderr[-2000:] or done.stdout[-2000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", default="10,20,40")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("cap") is None:
        raise SystemExit("capistrano_bench: needs root and Debian's capistrano package")
    counts = [int(n) for n in args.hosts.split(",")]
    base = Path(tempfile.mkdtemp(prefix="dsas-cap-bench-"))
    common = base / "deploy-root"  # the same path on every host; each namespace mounts its own dir there
    common.mkdir()
    devhosts._clean_shell_wrapper = with_shared_deploy_to(common)
    hosts = devhosts.DevHosts(base / "hosts", max(counts)).start()
    try:
        make_repo(base / "repo")
        project = base / "project"
        (project / "stages").mkdir(parents=True)
        (project / "dsas.yaml").write_text(
            f"application: bench\nrepo: {base / 'repo'}\ndeploy_to: {common / 'dsas'}\nkeep_releases: 3\n"
            f"parallelism: 20\nrestart:\n  web: sh bin/restart\n" + hosts.ssh_yaml())
        capdir = base / "cap"
        (capdir / "config" / "deploy").mkdir(parents=True)
        (capdir / "Capfile").write_text(CAPFILE)
        (capdir / "config" / "deploy.rb").write_text(DEPLOY_RB.format(
            repo=base / "repo", deploy_to=common / "cap", key=hosts.client_key))
        print(f"{os.cpu_count()} cores; median of {args.runs} runs; Capistrano "
              f"{subprocess.run(['cap', '--version'], capture_output=True, text=True).stdout.split()[2]}")
        print(f"{'hosts':>5} {'what':>16} {'capistrano s':>13} {'dsas s':>7} {'ratio':>6}")
        cache, run_id = base / "cache", 0
        for count in counts:
            stage = "".join(f"    - {{name: h{i}, address: 127.0.0.1, port: {h.port}, roles: [web]}}\n"
                            for i, h in enumerate(hosts.hosts[:count]))
            (project / "stages" / "bench.yaml").write_text("hosts:\n" + stage.replace("    - ", "  - "))
            (capdir / "config" / "deploy" / "bench.rb").write_text("".join(
                f'server "127.0.0.1", port: {h.port}, roles: %w{{web}}\n' for h in hosts.hosts[:count]))
            rows = {"first deploy": ([], []), "one-file change": ([], []), "rollback": ([], [])}
            for run in range(args.runs):
                for h in hosts.hosts[:count]:  # a first deploy starts from nothing, for both tools
                    shutil.rmtree(h.root / "cap" / "cap", ignore_errors=True)
                    shutil.rmtree(h.root / "cap" / "dsas", ignore_errors=True)
                rows["first deploy"][0].append(cap(capdir, "deploy"))
                rows["first deploy"][1].append(timed(project, cache, "deploy", "bench")[0])
                run_id += 1
                change_one_file(base / "repo", run_id)
                time.sleep(1.0)  # both name releases by the second
                rows["one-file change"][0].append(cap(capdir, "deploy"))
                rows["one-file change"][1].append(timed(project, cache, "deploy", "bench")[0])
                time.sleep(1.0)
                rows["rollback"][0].append(cap(capdir, "deploy:rollback"))
                rows["rollback"][1].append(timed(project, cache, "rollback", "bench", "--yes")[0])
            for what, (caps, ours) in rows.items():
                c, d = statistics.median(caps), statistics.median(ours)
                print(f"{count:>5} {what:>16} {c:>13.2f} {d:>7.2f} {c / d:>6.1f}")
    finally:
        hosts.stop()


if __name__ == "__main__":
    main()

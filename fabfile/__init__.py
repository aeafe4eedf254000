"""`fab` entry point: the same dsas tasks (`fab deploy lab`), plus maintainer tasks.

Deployment logic lives in dsasdeploy; this file only mounts it, so `fab -l` and
`dsas --help` list the same commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Collection, task

from dsasdeploy.tasks import builtin_collection

ROOT = Path(__file__).resolve().parents[1]


@task
def test(c, k=None):
    """Run the test suite (README's test command, without the setup step)."""
    c.run(f"{sys.executable} -m pytest -q" + (f" -k {k!r}" if k else ""), pty=False)


@task
def bench(c, runs=3):
    """Run the deploy benchmark (1, 10, 20 local sshd hosts vs the OpenSSH floor)."""
    c.run(f"{sys.executable} {ROOT / 'bench' / 'deploy_bench.py'} --runs {int(runs)}")


ns = builtin_collection()
maintainer = Collection("dev")
maintainer.add_task(test)
maintainer.add_task(bench)
ns.add_collection(maintainer)

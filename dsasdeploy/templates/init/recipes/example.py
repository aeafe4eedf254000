"""A project recipe: every recipes/*.py is mounted as `dsas <file>.<task>`.

Here: `dsas example.disk STAGE` prints free space under deploy_to on every host,
with dsas's host selection, verified SSH, parallelism, events and exit codes.
"""

from invoke import task

from dsasdeploy.commands.base import q
from dsasdeploy.execute.context import FlowResult
from dsasdeploy.status import ExitStatus
from dsasdeploy.tasks.common import Options, run_remote


@task(positional=["stage"], auto_shortflags=False)
def disk(c, stage, hosts=None, roles=None, json=False):
    """Show free disk space under deploy_to on every host of STAGE."""

    def body(run, stage_obj, confirm):
        ctx = run.ctx  # the recipe surface: docs/architecture.md
        ctx.bus.emit("run_started", command="example.disk", hosts=[h.name for h in ctx.hosts])
        ctx.connect_all()
        results = ctx.phase("disk", ctx.hosts, lambda h: [f"df -h {q(h.deploy_to)} | tail -n 1"])
        for name, output in ctx.outputs.items():
            ctx.bus.emit("host_output", host=name, message=output.stdout.strip())
        failed = [name for name, (ok, _, _) in results.items() if not ok]
        return FlowResult(ExitStatus.FAILED_ROLLED_BACK if failed else ExitStatus.OK,
                          f"{len(results) - len(failed)} of {len(results)} host(s) answered")

    run_remote("example.disk", stage, Options(hosts=hosts, roles=roles, json=json), body, release_hosts_only=False)

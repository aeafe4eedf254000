"""Example project recipe: `dsas uptime.show STAGE` prints each host's uptime and load.

dsas mounts every recipes/*.py of a project under its file name. A recipe only
wires arguments: it reuses dsas's stage loading, host selection, SSH sessions
(host keys verified), bounded parallelism, events and exit codes. Its body gets
the command's `Run`; `run.ctx` (the run context) is the surface a recipe uses:
`hosts`, `bus`, `connect_all()`, `phase(...)` and `outputs`.
"""

from invoke import task

from dsasdeploy.execute.context import FlowResult
from dsasdeploy.status import ExitStatus
from dsasdeploy.tasks.common import Options, run_remote


@task(positional=["stage"], auto_shortflags=False)
def show(c, stage, hosts=None, roles=None, json=False):
    """Print uptime and load of every host of STAGE (one SSH round trip per host)."""

    def body(run, stage_obj, confirm):
        run.ctx.bus.emit("run_started", command="uptime.show", hosts=[h.name for h in run.ctx.hosts])
        run.ctx.connect_all()
        results = run.ctx.phase("uptime", run.ctx.hosts, lambda host: ["uptime"])
        for name, output in run.ctx.outputs.items():
            run.ctx.bus.emit("host_output", host=name, message=output.stdout.strip())
        failed = [name for name, (ok, _, _) in results.items() if not ok]
        status = ExitStatus.FAILED_ROLLED_BACK if failed else ExitStatus.OK
        return FlowResult(status, f"uptime read on {len(results) - len(failed)} of {len(results)} host(s)")

    run_remote("uptime.show", stage, Options(hosts=hosts, roles=roles, json=json), body,
               release_hosts_only=False)

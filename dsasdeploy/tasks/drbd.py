"""`dsas drbd status|switchover|recover STAGE`: the DRBD recipe's commands.

The DRBD flow (execute/drbd*.py, and through it the runner) is imported when a command runs.
"""

from __future__ import annotations

from invoke import Collection, task

from .common import COMMON_HELP, Options, run_remote

_HELP = {"stage": COMMON_HELP["stage"], "resource": "DRBD resource name (needed when the stage has several).",
         "json": COMMON_HELP["json"], "report": COMMON_HELP["report"],
         "accept-new-host-keys": COMMON_HELP["accept-new-host-keys"]}


def _nodes(resource_name):
    from ..execute.drbd import pick_resource

    def pick(stage):
        resource = pick_resource(stage.settings.drbd, resource_name, stage.name)
        return tuple(h for h in stage.hosts if h.name in resource.nodes)
    return pick


@task(positional=["stage"], auto_shortflags=False, help=_HELP)
def status(c, stage, resource=None, json=False, report=None, accept_new_host_keys=False):
    """Per node: role, connection, disks, sync progress, mount, service IP, and a verdict.

    Read-only. Exit 0 whatever the verdict (it is printed and in the JSON events).
    """
    from ..execute.drbd import DrbdFlow, pick_resource

    def body(run, stage_obj, confirm):
        res = pick_resource(stage_obj.settings.drbd, resource, stage)
        run.ctx.bus.emit("run_started", command="drbd.status", hosts=list(res.nodes))
        return DrbdFlow(run.ctx, res).status()

    run_remote("drbd.status", stage, Options(json=json, report=report, accept_new_host_keys=accept_new_host_keys),
               body, pick_hosts=_nodes(resource))


@task(positional=["stage"], auto_shortflags=False,
      help={**_HELP, "to": "The node to promote (default: the current Secondary).",
            "dry-run": COMMON_HELP["dry-run"], "lock-wait": COMMON_HELP["lock-wait"]})
def switchover(c, stage, resource=None, to=None, dry_run=False, json=False, report=None, lock_wait=0,
               accept_new_host_keys=False):
    """Move a DRBD resource's primary (and its filesystem, services, service IP) to the peer.

    Refuses unless both nodes are Connected and UpToDate with no resync, exactly one is
    Primary, the target is the Secondary, the services are healthy and no deploy runs.
    Each step is verified; a failure walks back to the original primary (exit 1); if
    that fails too, exit 4 with both nodes' state. Never uses --force.
    """
    from ..execute.drbd import DrbdFlow, pick_resource

    def body(run, stage_obj, confirm):
        res = pick_resource(stage_obj.settings.drbd, resource, stage)
        run.ctx.bus.emit("run_started", command="drbd.switchover", hosts=list(res.nodes), dry_run=dry_run)
        return DrbdFlow(run.ctx, res).switchover(to, dry_run, lock_wait)

    run_remote("drbd.switchover", stage,
               Options(json=json, report=report, lock_wait=lock_wait, accept_new_host_keys=accept_new_host_keys),
               body, pick_hosts=_nodes(resource))


@task(positional=["stage"], auto_shortflags=False,
      help={**_HELP, "to": "With no Primary and no journal: the node to promote (after checking its data)."})
def recover(c, stage, resource=None, to=None, json=False, report=None, accept_new_host_keys=False):
    """After a switchover that died: one Primary serving again, its stage lock released.

    Reads the switchover journal (here, else the copies on the nodes). One Primary: it serves.
    None: the journal's original primary is promoted (disconnected only if the peer never began
    its promote). Two: split brain, exit 4 for a human. Never uses --force.
    """
    from ..execute.drbd import DrbdFlow, pick_resource
    from ..execute.drbd_recover import recover as recover_resource

    def body(run, stage_obj, confirm):
        res = pick_resource(stage_obj.settings.drbd, resource, stage)
        run.ctx.bus.emit("run_started", command="drbd.recover", hosts=list(res.nodes))
        return recover_resource(DrbdFlow(run.ctx, res), to)

    run_remote("drbd.recover", stage, Options(json=json, report=report, accept_new_host_keys=accept_new_host_keys),
               body, pick_hosts=_nodes(resource))


ns = Collection("drbd", status, switchover, recover)

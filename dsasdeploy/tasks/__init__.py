"""The built-in task collection of `dsas` (also mounted by fabfile/ for `fab`)."""

from __future__ import annotations

from invoke import Collection

from . import drbd, provision, release, scaffold


def builtin_collection() -> Collection:
    """deploy, rollback, releases, check, unlock, config, and `lab` when available."""
    ns = Collection()
    for task in (release.deploy, release.rollback, release.releases, release.check, release.unlock,
                 release.config, release.recover, scaffold.init, provision.add_server):
        ns.add_task(task)
    ns.add_collection(drbd.ns, name="drbd")
    try:
        from ..lab.tasks import ns as lab_ns
    except ModuleNotFoundError as exc:  # the lab package is optional; a bug inside it is not hidden
        if exc.name not in ("dsasdeploy.lab", "dsasdeploy.lab.tasks"):
            raise
        lab_ns = None
    if lab_ns is not None:
        ns.add_collection(lab_ns, name="lab")
    return ns

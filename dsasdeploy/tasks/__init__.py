"""The built-in task collection of `dsas` (also mounted by fabfile/ for `fab`)."""

from __future__ import annotations

from invoke import Collection

from . import drbd, provision, release, scaffold


def builtin_collection(lab: bool = True) -> Collection:
    """deploy, rollback, releases, check, unlock, config, and `lab` when available (and asked for:
    the `dsas` program mounts it with mount_lab only when the command line may need it)."""
    ns = Collection()
    for task in (release.deploy, release.rollback, release.releases, release.check, release.unlock,
                 release.config, release.recover, scaffold.init, provision.add_server):
        ns.add_task(task)
    ns.add_collection(drbd.ns, name="drbd")
    if lab:
        mount_lab(ns)
    return ns


def mount_lab(ns: Collection) -> None:
    """Add the `lab` group to `ns` if the optional lab package is installed."""
    try:
        from ..lab.tasks import ns as lab_ns
    except ModuleNotFoundError as exc:  # the lab package is optional; a bug inside it is not hidden
        if exc.name not in ("dsasdeploy.lab", "dsasdeploy.lab.tasks"):
            raise
        return
    ns.add_collection(lab_ns, name="lab")

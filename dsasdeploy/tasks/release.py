"""Built-in tasks: deploy, rollback, releases, check, unlock, config."""

from __future__ import annotations

import json as jsonlib
import sys

from invoke import Exit, task

from ..errors import DsasError
from .common import COMMON_HELP, Options, load, run_remote

_REMOTE = ["hosts", "roles", "yes", "json", "report", "accept-new-host-keys"]


def _help(*names: str) -> dict:
    return {name: COMMON_HELP[name] for name in ("stage", *names)}


@task(positional=["stage"], auto_shortflags=False,
      help={**_help("revision", *_REMOTE, "dry-run", "lock-wait"),
            "full": "Send every host the whole archive, even where a delta on its current release would do."})
def deploy(c, stage, revision=None, hosts=None, roles=None, dry_run=False, yes=False, json=False,
           report=None, lock_wait=0, accept_new_host_keys=False, full=False):
    """Ship a git revision to every host of STAGE as a new release.

    Builds one archive of the revision locally, takes the stage lock, prepares the
    release on every host (sending only what changed where its current release is
    intact), then switches them all. If any host fails before the switch, no host
    is switched; after it, every host goes back.
    Example: dsas deploy production --revision v1.4.2
    """
    from ..delta import build_delta
    from ..scm import build_archive, known_commit, open_repository, resolve

    options = Options(hosts, roles, dry_run, yes, json, report, lock_wait, accept_new_host_keys)

    def body(run, stage_obj, confirm):
        settings = stage_obj.settings
        repo = open_repository(settings.repo, stage_obj.project_dir, stage_obj.blame("repo"))
        ref = revision or settings.branch
        rev = resolve(repo, ref, "--revision" if revision else stage_obj.blame("branch"))
        archive = build_archive(repo, rev, settings.application)
        run.ctx.bus.emit("run_started", command="deploy", hosts=[h.name for h in run.ctx.hosts], revision=rev.sha,
                         ref=ref, dry_run=dry_run, archive_bytes=archive.stat().st_size)

        def delta_for(base: str):
            """A delta from the host's revision `base`, if the repository knows it and it is smaller."""
            if not known_commit(repo, base):
                return None
            delta = build_delta(repo, base, rev.sha, archive)
            return delta if delta.archive.stat().st_size < archive.stat().st_size else None

        return run.deploy(rev.sha, ref, archive, lock_wait, dry_run, delta_for=delta_for, full=full)

    run_remote("deploy", stage, options, body)


@task(positional=["stage"], auto_shortflags=False,
      help={**_help(*_REMOTE, "dry-run", "lock-wait"),
            "to": "Release id to roll back to (default: the newest good release before the current one)."})
def rollback(c, stage, to=None, hosts=None, roles=None, dry_run=False, yes=False, json=False,
             report=None, lock_wait=0, accept_new_host_keys=False):
    """Switch every host of STAGE back to an earlier release and restart it.

    Never picks a release marked failed. Asks for confirmation on a terminal; in CI pass --yes.
    Example: dsas rollback production --to 20261127100203 --yes
    """
    options = Options(hosts, roles, dry_run, yes, json, report, lock_wait, accept_new_host_keys)

    def body(run, stage_obj, confirm):
        run.ctx.bus.emit("run_started", command="rollback", hosts=[h.name for h in run.ctx.hosts], to=to)
        if not dry_run and not confirm(f"roll back stage '{stage}' on {len(run.ctx.hosts)} host(s)"
                                       + (f" to {to}" if to else " to the previous release")):
            raise DsasError("rollback cancelled; nothing was changed")
        return run.rollback(to, lock_wait, dry_run)

    run_remote("rollback", stage, options, body)


@task(positional=["stage"], auto_shortflags=False, help=_help(*_REMOTE))
def releases(c, stage, hosts=None, roles=None, yes=False, json=False, report=None, accept_new_host_keys=False):
    """List each host's releases, their revisions, which one is current and which failed."""
    options = Options(hosts, roles, False, yes, json, report, 0, accept_new_host_keys)

    def body(run, stage_obj, confirm):
        run.ctx.bus.emit("run_started", command="releases", hosts=[h.name for h in run.ctx.hosts])
        return run.releases()

    run_remote("releases", stage, options, body, read_only=True)


@task(positional=["stage"], auto_shortflags=False, help=_help(*_REMOTE))
def check(c, stage, hosts=None, roles=None, yes=False, json=False, report=None, accept_new_host_keys=False):
    """Check every host of STAGE: SSH and host key, writable deploy_to, free disk, tar, lock.

    The stage lock is checked on every host that can hold it (DRBD nodes too).
    Exit 0 when every host passes, 1 otherwise. Safe to run any time: changes nothing.
    """
    options = Options(hosts, roles, False, yes, json, report, 0, accept_new_host_keys)

    def body(run, stage_obj, confirm):
        run.ctx.bus.emit("run_started", command="check", hosts=[h.name for h in run.ctx.hosts])
        return run.check()

    run_remote("check", stage, options, body, read_only=True, lock_hosts=True)


@task(positional=["stage"], auto_shortflags=False, help=_help(*_REMOTE))
def unlock(c, stage, hosts=None, roles=None, yes=False, json=False, report=None, accept_new_host_keys=False):
    """Break STAGE's deploy lock, e.g. one left by a crashed or killed dsas.

    Covers every host that can hold it: release hosts and DRBD nodes (--hosts drbd-a).
    A lock whose owner is gone (its process on this controller, or its heartbeat is
    old) is broken at once; any other lock needs confirmation (--yes without a terminal).
    """
    options = Options(hosts, roles, False, yes, json, report, 0, accept_new_host_keys)

    def body(run, stage_obj, confirm):
        run.ctx.bus.emit("run_started", command="unlock", hosts=[h.name for h in run.ctx.hosts])
        return run.unlock(confirm)

    run_remote("unlock", stage, options, body, lock_hosts=True)


@task(positional=["stage"], auto_shortflags=False,
      help={"stage": COMMON_HELP["stage"], "json": "Print the resolved configuration as JSON."})
def config(c, stage, json=False):
    """Validate and print STAGE's resolved configuration (project file + stage file).

    Exit 2 with one line per problem (file:line: key: what is wrong) when invalid.
    """
    from ..config.load import stage_as_dict
    from ..config.source import plain

    try:
        data = stage_as_dict(load(stage))
    except DsasError as exc:
        raise Exit("\n".join(f"dsas: error: {line}" for line in str(exc).splitlines()), code=int(exc.exit_status))
    except Exception as exc:  # a bug; reading configuration changes nothing (cli_program.py: exit 1)
        exc.dsas_nothing_changed = True
        raise
    sys.stdout.write(jsonlib.dumps(data, indent=2) + "\n" if json else plain(data))


@task(positional=["stage"], auto_shortflags=False,
      help={**_help(*_REMOTE),
            "forward": "Finish the interrupted release instead of going back to the previous one."})
def recover(c, stage, forward=False, hosts=None, roles=None, yes=False, json=False, report=None,
            accept_new_host_keys=False):
    """Repair an interrupted rolling release of STAGE (dsas was killed or crashed).

    Reads the journal the run left, then puts every drained server back into service
    with its original weights, every host on the release it had before (or, with
    --forward, on the new release), and releases the lock. Safe to run twice.
    """
    options = Options(hosts, roles, False, yes, json, report, 0, accept_new_host_keys)

    def body(run, stage_obj, confirm):
        run.ctx.bus.emit("run_started", command="recover", hosts=[h.name for h in run.ctx.hosts], forward=forward)
        return run.recover(forward)  # without lb: whether a lock blocks deploys, and how to break it

    run_remote("recover", stage, options, body)

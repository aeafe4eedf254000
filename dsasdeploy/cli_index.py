"""What `dsas --help` and `dsas --version` print, known without importing invoke or a task.

COMMANDS is a static copy of the built-in commands (name, first line of the task's
docstring): cli.main answers `dsas`, `dsas --help` and `dsas --version` from here in a
few milliseconds, where building the real collection imports every command's code.
tests/cli/test_cli_start.py checks that COMMANDS equals what the collection says.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable

from . import __version__

# (name, summary) of each built-in command, as builtin_collection() (tasks/__init__.py) names
# it; the lab.* commands exist only where the optional dsasdeploy.lab package is installed
COMMANDS = (
    ("add-server", "Install a new machine by PXE through its BMC and put it into service on STAGE."),
    ("check", "Check every host of STAGE: SSH and host key, writable deploy_to, free disk, tar, lock."),
    ("config", "Validate and print STAGE's resolved configuration (project file + stage file)."),
    ("deploy", "Ship a git revision to every host of STAGE as a new release."),
    ("drbd.recover", "After a switchover that died: one Primary serving again, its stage lock released."),
    ("drbd.status", "Per node: role, connection, disks, sync progress, mount, service IP, and a verdict."),
    ("drbd.switchover", "Move a DRBD resource's primary (and its filesystem, services, service IP) to the peer."),
    ("init", "Create dsas.yaml, stages/staging.yaml, stages/production.yaml, recipes/example.py and"),
    ("lab.down", "Remove every namespace, guest, process, mount and file the lab made."),
    ("lab.restart", "Bring one lab host back alone (a killed guest: same disk and host key, rejoins its role)."),
    ("lab.ssh", "Open a shell on a lab host, or run a command there: dsas lab ssh web1 'uptime'."),
    ("lab.status", "Each lab host, its address, and whether it is up."),
    ("lab.up", "Build the local lab (LVS director, DRBD pair, web hosts, memcached, PXE server, client)."),
    ("recover", "Repair an interrupted rolling release of STAGE (dsas was killed or crashed)."),
    ("releases", "List each host's releases, their revisions, which one is current and which failed."),
    ("rollback", "Switch every host of STAGE back to an earlier release and restart it."),
    ("unlock", "Break STAGE's deploy lock, e.g. one left by a crashed or killed dsas."),
)

HELP_TEXT = """\
dsas {version}: releases over SSH, Capistrano-style.

Usage: dsas <command> STAGE [options]        dsas <command> --help

Commands:
{commands}

A project is a directory with dsas.yaml (application, repo, deploy_to, ...) and
stages/<stage>.yaml (hosts and roles); dsas finds it from the current directory
upwards, or from $DSAS_PROJECT.

Global options (before the command):
  --traceback     show the Python traceback of an unexpected error
  -V, --version   show versions
  --print-completion-script=bash|zsh   shell completion (see README)

Exit codes: 0 ok, 1 failed and rolled back cleanly, 2 usage or config error,
3 stage locked by another deploy, 4 failed and NOT fully restored (look now).
"""


def help_text(commands: Iterable[tuple[str, str]]) -> str:
    """`dsas --help`: HELP_TEXT with one line per (name, summary), sorted by name."""
    lines = [f"  {name:<14} {summary}" for name, summary in sorted(commands)]
    return HELP_TEXT.format(version=__version__, commands="\n".join(lines))


def version_line() -> str:
    """`dsas --version`: dsas's and its transport libraries' versions, as installed
    (importing fabric would import paramiko and cryptography)."""
    return (f"dsas {__version__} (fabric {installed_version('fabric')}, invoke {installed_version('invoke')}, "
            f"paramiko {installed_version('paramiko')})")


def installed_version(name: str) -> str:
    """importlib.metadata.version(name), read from the name of the first `name-VERSION.dist-info`
    directory on sys.path (the installed-projects spec puts the normalized name and version
    there) where there is one: importing importlib.metadata (email, zipfile, csv) alone
    takes about as long as starting the interpreter."""
    prefix = name.lower().replace("-", "_").replace(".", "_") + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip file, a path hook's name, a directory that is gone
            continue
        found = [d for d in names if d.lower().startswith(prefix) and d.endswith((".dist-info", ".egg-info"))]
        if found:
            if found[0].endswith(".dist-info"):
                return found[0][len(prefix):-len(".dist-info")]
            break  # an egg-info's name need not hold the version: ask importlib.metadata
    from importlib.metadata import version

    return version(name)

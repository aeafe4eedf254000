"""`dsas add-server STAGE ...`: install a machine by PXE/IPMI and put it into service.

The provisioning code (plan/provision.py, execute/provision*.py, execute/ipmi.py) is
imported when the command runs.
"""

from __future__ import annotations

from invoke import task

from ..errors import UsageError
from .common import COMMON_HELP, Options, run_remote

_HELP = {
    "stage": COMMON_HELP["stage"],
    "name": "Host name of the new server (e.g. web04); also its name in the stage file.",
    "mac": "MAC address of the NIC it network-boots from (52:54:00:12:34:56).",
    "ip": "The address it gets (DHCP reservation and static config); also its SSH address.",
    "role": "Its role(s), comma-separated (e.g. web).",
    "bmc": "Its BMC: address[:port] for ipmitool -I lanplus (password: $IPMI_PASSWORD or provision.bmc.password_file).",
    "profile": "Install profile from provision.profiles (default: provision.default_profile).",
    "resume": "Go on from the step where an earlier add-server of this --name stopped.",
    "reinstall": "Allow wiping a machine that already answers SSH at --ip (asks first; --yes in CI).",
    "yes": COMMON_HELP["yes"],
    "install-timeout": "Seconds to wait for the installer's callback (default: provision.install_timeout).",
    "dry-run": "Run the read-only checks (boot server, BMC, address), print the rendered files; change nothing.",
    "json": COMMON_HELP["json"], "report": COMMON_HELP["report"], "lock-wait": COMMON_HELP["lock-wait"],
    "accept-new-host-keys": COMMON_HELP["accept-new-host-keys"],
}


@task(positional=["stage"], auto_shortflags=False, help=_HELP)
def add_server(c, stage, name=None, mac=None, ip=None, role=None, bmc=None, profile=None, resume=False,
               reinstall=False, install_timeout=0, dry_run=False, yes=False, json=False, report=None,
               lock_wait=0, accept_new_host_keys=False):
    """Install a new machine by PXE through its BMC and put it into service on STAGE.

    Renders its boot file and installer answer file from recipes/templates/, reserves its
    address in the boot server's DHCP, boots it by IPMI, pins the host key the installer
    reports, deploys the release the stage serves now, adds it to the load balancer
    (weight 0, then ramped) and writes it into stages/STAGE.yaml. Every step is journaled:
    after a failure, fix the cause and rerun with --resume.
    Example: dsas add-server production --name web04 --mac 52:54:00:12:34:56 --ip 10.0.2.14
             --role web --bmc 10.0.9.14
    """
    from ..execute.ipmi import Bmc, bmc_password
    from ..execute.provision import AddServer
    from ..execute.provision_journal import ProvisionJournal, state_path
    from ..inventory import split_list
    from ..plan import provision as plan

    options = Options(yes=yes, json=json, report=report, lock_wait=int(lock_wait),
                      accept_new_host_keys=accept_new_host_keys)

    def pick(stage_obj):
        return tuple(stage_obj.hosts_with_role("pxe"))[:1] or stage_obj.hosts[:1]

    def body(run, stage_obj, confirm):
        if not name:
            raise UsageError("--name is required")
        journal = ProvisionJournal(state_path(stage_obj.project_dir, stage_obj.name, name))
        asked = {"mac": mac, "ip": ip, "roles": split_list(role) or None, "profile": profile, "bmc": bmc}
        if journal.exists and not resume and not dry_run:
            failed = journal.data.get("failed") or {}
            where = f" (stopped in step '{failed.get('step')}': {failed.get('message')})" if failed else ""
            raise UsageError(f"an add-server of {name} is unfinished{where}: rerun with --resume, or remove "
                             f"{journal.path} after cleaning up by hand")
        if resume:
            if not journal.exists:
                raise UsageError(f"--resume: no unfinished add-server of {name} ({journal.path} does not exist)")
            before = journal.data["request"]
            saved = {"mac": before["mac"], "ip": before["ip"], "roles": before["roles"], "profile": before["profile"],
                     "bmc": f"{before['bmc_host']}:{before['bmc_port']}"}
            for key, value in asked.items():
                if value is None:
                    continue
                try:
                    given = {"mac": plan.normalize_mac, "bmc": lambda v: "%s:%d" % plan.parse_bmc(v, before["bmc_port"])
                             }.get(key, lambda v: v)(value)
                except ValueError as exc:
                    raise UsageError(f"--{key.rstrip('s')}: {exc}") from None
                if given != saved[key]:
                    raise UsageError(f"--resume: --{key.rstrip('s')} {value} differs from the unfinished run's "
                                     f"{saved[key]}")
            asked = saved
        missing = [f"--{k.rstrip('s')}" for k in ("mac", "ip", "roles", "bmc") if not asked[k]]
        if missing:
            raise UsageError(f"add-server needs {', '.join(missing)}")
        request, problems = plan.build_request(stage_obj, name, asked["mac"], asked["ip"], list(asked["roles"]),
                                               asked["profile"], asked["bmc"])
        if problems:
            raise UsageError("; ".join(problems))
        if reinstall and not dry_run and not journal.done("install") and not confirm(
                f"--reinstall: WIPE whatever machine answers at {request.ip} (BMC {request.bmc_host}) and install "
                f"{request.name} on it"):
            raise UsageError("add-server cancelled; nothing was changed")
        prov = stage_obj.settings.provision
        machine = Bmc(request.bmc_host, request.bmc_port, prov.bmc, bmc_password(prov.bmc, stage_obj.project_dir))
        run.ctx.bus.emit("run_started", command="add-server", hosts=[request.name], dry_run=dry_run)
        runner = AddServer(stage_obj, request, run.ctx.backend, run.ctx.bus, machine, journal, reinstall=reinstall,
                           lock_wait=float(lock_wait),
                           install_timeout=float(install_timeout) or None)
        return runner.add(dry_run=dry_run)

    run_remote("add-server", stage, options, body, pick_hosts=pick)

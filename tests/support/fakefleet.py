"""A dsas project whose hosts are directories on this machine, for the orchestration tests.

`FakeFleet.build(...)` writes dsas.yaml and stages/test.yaml (every host with its own deploy_to
under the fleet's directory), an IPVS table per director, a DRBD pair's state, and starts a
small HTTP server per web host (the health check `via: ssh` reaches it through the recording
backend's tcp_opener). `fleet.run("deploy", "test")` runs the real program in-process with a
fresh RecordingBackend (execute/recording.py) that shares the fleet's canned answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

import jsonschema

import dsasdeploy
from dsasdeploy.commands.lock import LockOwner
from dsasdeploy.execute.recording import Answer, Call, RecordingBackend

from .inprocess import quiet_environment, run_dsas

FAKEBIN = Path(__file__).resolve().parent / "fakebin"
_SCHEMA = json.loads((Path(dsasdeploy.__file__).parent / "report" / "events.schema.json").read_text())
EVENTS_SCHEMA = jsonschema.validators.validator_for(_SCHEMA)(_SCHEMA)  # built once: validate() rebuilds it
VIP = "10.99.1.10:80"
REAL_PORT = 8080
DRBD_DEVICE = "/dev/drbd7"  # a minor no real /proc/drbd of this machine would describe
SERVICE_IP = "192.0.2.20"  # TEST-NET-1, on an interface no real machine has: the fake `ip` keeps it

PROJECT = """\
application: shop
repo: {repo}
branch: main
deploy_to: /srv/shop
keep_releases: 3
linked_dirs: [log]
restart:
  web: sh bin/restart
parallelism: 10
"""

ROLLING = f"""\
lb:
  driver: lvs
  real_port: {REAL_PORT}
  drain_timeout: 2
  poll_interval: 0.05
  ramp_interval: 0
  command_timeout: 5
rollout: {{canary: 1, batch: 1, max_unavailable: 1}}
health:
  path: /health
  via: ssh
  interval: 0.05
  rise: 1
  timeout: 1
  deadline: 2
  fail_fast: true
"""

DRBD = """\
drbd:
  - name: r0
    nodes: [drbd-a, drbd-b]
    device: {device}
    mount: {mount}
    fstype: ext4
    services:
      - name: files
        start: touch "$FAKE_HOST_DIR/files.running"
        stop: rm -f "$FAKE_HOST_DIR/files.running"
        check: {{command: 'test -f "$FAKE_HOST_DIR/files.running"', timeout: 1}}
    service_ip: {{address: {ip}, prefix: 24, interface: fake0}}
"""


class SimulatedCrash(BaseException):
    """The controller died here (SIGKILL): nothing after it runs, no way back is taken."""


@dataclass(frozen=True)
class FakeHostSpec:
    name: str
    address: str
    roles: tuple[str, ...]


@dataclass
class Run:
    """One in-process `dsas` run: exit code, output, --json events, and what the backend saw."""

    code: int
    stdout: str
    stderr: str
    backend: RecordingBackend

    @cached_property
    def events(self) -> list[dict]:
        """The --json events, each checked against the published schema."""
        found = [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]
        for event in found:
            EVENTS_SCHEMA.validate(event)
        return found

    def of_type(self, kind: str) -> list[dict]:
        """The events of one type, in order."""
        return [e for e in self.events if e["type"] == kind]

    @property
    def summary(self) -> dict:
        """The run's final summary event."""
        return self.of_type("summary")[-1]

    def scripts(self, host: Optional[str] = None, phase: Optional[str] = None) -> list[Call]:
        """The scripts the run sent (to `host`, of `phase`: see recording.guess_phase)."""
        return self.backend.scripts(host, phase)


class HealthServer:
    """A web host's app as its health check sees it: HTTP on 127.0.0.1, answering with the
    release `current` points to (X-Release header and body); `status_of(host, release)` decides
    the status (200 unless a test says otherwise)."""

    def __init__(self, host: str, deploy_to: Path, status_of: Callable[[str, Optional[str]], int]):
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                release = server_self.release()
                status = server_self.status_of(host, release)
                body = f"release {release}\n".encode()
                self.send_response(status)
                self.send_header("X-Release", release or "-")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                return None

        self.deploy_to, self.status_of = deploy_to, status_of
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def release(self) -> Optional[str]:
        link = self.deploy_to / "current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class FakeFleet:
    """The project, the fake hosts and their state; see the module doc."""

    root: Path
    hosts: list[FakeHostSpec]
    answers: list[Answer] = field(default_factory=list)
    health_status: Callable[[str, Optional[str]], int] = lambda host, release: 200
    servers: dict[str, HealthServer] = field(default_factory=dict)

    # ---- building -----------------------------------------------------------------------

    @classmethod
    def build(cls, root: Path, repo: Path, *, web: int = 3, lb: bool = False, drbd: bool = False,
              extra_project: str = "", directors: int = 1) -> "FakeFleet":
        """`web` web hosts (web1..), a director lb1 with a VIP over them (`lb`), a DRBD pair
        drbd-a (Primary, serving) and drbd-b (`drbd`); `extra_project`: more dsas.yaml keys.
        Set DSAS_PROJECT to `fleet.project` before running (fleet_fixture does)."""
        hosts = [FakeHostSpec(f"web{i}", f"10.99.2.{10 + i}", ("web",)) for i in range(1, web + 1)]
        if lb:
            hosts += [FakeHostSpec(f"lb{i}", f"10.99.0.{9 + i}", ("lb",)) for i in range(1, directors + 1)]
        if drbd:
            hosts += [FakeHostSpec("drbd-a", "10.99.0.21", ("db",)), FakeHostSpec("drbd-b", "10.99.0.22", ("db",))]
        fleet = cls(root, hosts)
        fleet.project.mkdir(parents=True)
        text = PROJECT.format(repo=repo) + (ROLLING if lb else "") + extra_project
        if drbd:
            text += DRBD.format(device=DRBD_DEVICE, mount=fleet.drbd_mount, ip=SERVICE_IP)
        (fleet.project / "dsas.yaml").write_text(text)
        (fleet.project / "stages").mkdir()
        (fleet.project / "stages" / "test.yaml").write_text(fleet.stage_yaml())
        for host in hosts:
            fleet.deploy_to(host.name).mkdir(parents=True)
        for i in range(1, directors + 1 if lb else 1):
            fleet.write_ipvs(f"lb{i}", [fleet.real("web1", 5), fleet.real("web2", 3, upper=100, lower=50),
                                        fleet.real("web3", 7, method="Route")])
        if drbd:
            fleet.write_drbd(primary="drbd-a")
        return fleet

    def stage_yaml(self) -> str:
        """stages/test.yaml: every host with its own deploy_to under the fleet's directory."""
        lines = ["hosts:"]
        for host in self.hosts:
            lines += [f"  - name: {host.name}", f"    address: {host.address}",
                      f"    roles: [{', '.join(host.roles)}]", f"    deploy_to: {self.deploy_to(host.name)}"]
        return "\n".join(lines) + "\n"

    def start_health_servers(self) -> None:
        """One HTTP server per web host; status from `self.health_status` (changeable any time)."""
        for host in self.hosts:
            if "web" in host.roles:
                self.servers[host.name] = HealthServer(host.name, self.deploy_to(host.name),
                                                       lambda name, release: self.health_status(name, release))

    def stop(self) -> None:
        """Stop the health servers."""
        for server in self.servers.values():
            server.stop()

    # ---- running dsas --------------------------------------------------------------------

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def world(self) -> Path:
        return self.root / "hosts"

    def host_dir(self, name: str) -> Path:
        return self.world / name

    def deploy_to(self, name: str) -> Path:
        return self.host_dir(name) / "srv" / "shop"

    def new_backend(self, stage=None, accept_new_host_keys: bool = False) -> RecordingBackend:
        """A backend for one run (the Environment's backend_factory); the answers are shared."""
        return RecordingBackend(host_dir=lambda host: self.host_dir(host.name), world=self.world,
                                bin_dirs=[FAKEBIN], answers=self.answers,
                                ports={name: server.port for name, server in self.servers.items()},
                                env={"FAKE_PYTHON": sys.executable}, default_timeout=30)

    def run(self, *argv: str, **environment) -> Run:
        """`dsas ARGV...` in-process against the fake hosts; no terminal (as in CI) unless
        `environment` (Environment fields: is_terminal, confirm, ...) says otherwise."""
        backends: list[RecordingBackend] = []

        def factory(stage, accept_new_host_keys):
            backends.append(self.new_backend(stage, accept_new_host_keys))
            return backends[-1]

        code, out, err = run_dsas(list(argv), quiet_environment(backend_factory=factory, **environment))
        return Run(code, out, err, backends[-1] if backends else self.new_backend())

    def crash_after(self, host: str, phase: str) -> None:
        """The controller dies (SimulatedCrash) right after `host`'s `phase` script has run: from
        then on no script runs anywhere and no way back is taken, as after a SIGKILL."""
        dead = threading.Event()

        def die(call: Call) -> None:
            dead.set()
            raise SimulatedCrash(f"killed after {call.host}'s {call.phase} script")

        def nothing_runs_once_dead(call: Call) -> None:
            if dead.is_set():
                raise SimulatedCrash("the controller is dead")
            return None  # run the script

        self.answers += [Answer(die, host=host, phase=phase, run_first=True),
                         Answer(nothing_runs_once_dead, times=None)]

    @property
    def journal(self) -> Path:
        """The controller's journal of the stage's rolling releases."""
        return self.project / ".dsas" / "journal" / "test.jsonl"

    def journal_records(self) -> list[dict]:
        """The journal's records, in order (none if there is no journal)."""
        return [json.loads(line) for line in self.journal.read_text().splitlines()] if self.journal.exists() else []

    def journal_writer_exited(self) -> None:
        """The run that wrote the journal is gone: its pid becomes one of an exited process (a run
        crashed in-process shares the test's pid, which is alive)."""
        exited = subprocess.Popen(["true"])
        exited.wait()
        records = self.journal_records()
        for record in records:
            if record.get("event") == "begin":
                record["pid"] = exited.pid
        self.journal.write_text("".join(json.dumps(r) + "\n" for r in records))

    # ---- the hosts' state ------------------------------------------------------------------

    def current(self, name: str) -> Optional[str]:
        """The release host `name` serves (its `current` link), or None."""
        link = self.deploy_to(name) / "current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def releases(self, name: str) -> list[str]:
        """The release directories on host `name`, oldest first."""
        path = self.deploy_to(name) / "releases"
        return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.is_symlink()) if path.exists() else []

    def locked(self, name: str) -> bool:
        """Whether the stage lock is held on host `name`."""
        return (self.deploy_to(name) / ".dsas-lock").exists()

    def dsas_log(self, name: str) -> list[str]:
        """dsas's own log lines on host `name` (deployed, failed, rolled_back ...)."""
        path = self.deploy_to(name) / ".dsas-revisions.log"
        return path.read_text().splitlines() if path.exists() else []

    def restarts(self, name: str) -> list[str]:
        """The releases the app was restarted on, in order (the app's bin/restart writes them)."""
        path = self.deploy_to(name) / "shared" / "restarts.log"
        return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []

    def hold_lock(self, name: str, pid: int, controller: str, since: str = "2026-01-01T00:00:00Z") -> None:
        """Another run's lock on host `name`."""
        lock = self.deploy_to(name) / ".dsas-lock"
        lock.mkdir(parents=True)
        owner = LockOwner(token="other-run", owner="alice@ci-7", controller=controller, pid=pid, stage="test",
                          since=since, revision="abcdef1234567890", command="deploy")
        (lock / "owner").write_text(owner.file_text())

    # ---- the director -------------------------------------------------------------------------

    def real(self, host: str, weight: int, method: str = "Masq", upper: int = 0, lower: int = 0) -> dict:
        """Host `host` as a real server entry of the fake IPVS table."""
        address = next(h.address for h in self.hosts if h.name == host)
        return {"address": f"{address}:{REAL_PORT}", "method": method, "weight": weight, "upper": upper,
                "lower": lower, "active": 0, "inactive": 0}

    def write_ipvs(self, director: str, reals: list[dict]) -> None:
        """The director's table: one wrr service on the VIP over `reals`."""
        table = {"services": [{"proto": "TCP", "address": VIP, "scheduler": "wrr", "flags": [],
                               "persistent": None, "reals": reals}]}
        self._write_table(director, table)

    def _write_table(self, director: str, table: dict) -> None:
        """The director's IPVS table; the fake ipvsadm's rendered listings go (it renders them again)."""
        home = self.host_dir(director)
        home.mkdir(parents=True, exist_ok=True)
        for rendered in ("ipvs.save", "ipvs.list"):
            (home / rendered).unlink(missing_ok=True)
        (home / "ipvs.json").write_text(json.dumps(table, indent=1))

    def ipvs_reals(self, director: str = "lb1") -> dict[str, dict]:
        """host name -> its real server entry (weight, method, thresholds) in the director's table."""
        table = json.loads((self.host_dir(director) / "ipvs.json").read_text())
        by_address = {f"{h.address}:{REAL_PORT}": h.name for h in self.hosts}
        return {by_address[r["address"]]: r for s in table["services"] for r in s["reals"]}

    def keepalived(self, director: str, maintenance_file: str) -> None:
        """A fake keepalived owns `director`'s table from now on: each web host's weight reads 0
        while <its deploy_to>/`maintenance_file` exists, and raw ipvsadm edits fail."""
        checks = {self.real(h.name, 0)["address"]: str(self.deploy_to(h.name) / maintenance_file)
                  for h in self.hosts if "web" in h.roles}
        for rendered in ("ipvs.save", "ipvs.list"):  # the sh wrapper would cat them: weights are read live now
            (self.host_dir(director) / rendered).unlink(missing_ok=True)
        (self.host_dir(director) / "keepalived.json").write_text(json.dumps(checks, indent=1))

    def set_weight(self, host: str, weight: int, director: str = "lb1") -> None:
        """Change a real server's weight by hand (as an operator would with ipvsadm -e)."""
        table = json.loads((self.host_dir(director) / "ipvs.json").read_text())
        real = self.real(host, 0)["address"]
        for service in table["services"]:
            for entry in service["reals"]:
                if entry["address"] == real:
                    entry["weight"] = weight
        self._write_table(director, table)

    # ---- the DRBD pair ----------------------------------------------------------------------

    @property
    def drbd_mount(self) -> Path:
        return self.root / "mnt" / "r0"

    @property
    def drbd_state(self) -> Path:
        """r0 as the fake drbdadm keeps it: device, cstate, <node>.role, <node>.disk."""
        return self.world / "drbd" / "r0"

    def write_drbd(self, primary: str) -> None:
        """r0 Connected, UpToDate on both nodes; `primary` has it mounted, holds the service IP and
        runs the service."""
        self.drbd_state.mkdir(parents=True, exist_ok=True)
        (self.drbd_state / "device").write_text(DRBD_DEVICE + "\n")
        (self.drbd_state / "cstate").write_text("Connected\n")
        for name in ("drbd-a", "drbd-b"):
            (self.drbd_state / f"{name}.role").write_text("Primary\n" if name == primary else "Secondary\n")
            (self.drbd_state / f"{name}.disk").write_text("UpToDate\n")
            home = self.host_dir(name)
            home.mkdir(parents=True, exist_ok=True)
            for item in ("mounts", "addrs", "files.running"):
                (home / item).unlink(missing_ok=True)
        home = self.host_dir(primary)
        (home / "mounts").write_text(f"{DRBD_DEVICE} {self.drbd_mount}\n")
        (home / "addrs").write_text(f"fake0 {SERVICE_IP}/24\n")
        (home / "files.running").write_text("")

    def drbd_roles(self) -> dict[str, str]:
        """Each node's DRBD role of r0 (Primary, Secondary)."""
        return {name: (self.drbd_state / f"{name}.role").read_text().strip() for name in ("drbd-a", "drbd-b")}

    def serving(self, name: str) -> dict[str, bool]:
        """What node `name` has of the DRBD service: the mount, the service IP, the service."""
        home = self.host_dir(name)
        mounts = (home / "mounts").read_text() if (home / "mounts").exists() else ""
        addrs = (home / "addrs").read_text() if (home / "addrs").exists() else ""
        return {"mounted": str(self.drbd_mount) in mounts, "service_ip": SERVICE_IP in addrs,
                "service": (home / "files.running").exists()}


def fleet_fixture(tmp_path: Path, tmp_path_factory, app_repo, monkeypatch, **options) -> FakeFleet:
    """A FakeFleet in `tmp_path` (DSAS_PROJECT and a session-wide archive cache set), its
    health servers started; stop it at the end (`fleet.stop()`)."""
    repo, _ = app_repo
    fleet = FakeFleet.build(tmp_path / "fleet", repo, **options)
    monkeypatch.setenv("DSAS_PROJECT", str(fleet.project))
    monkeypatch.setenv("DSAS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dsas-archive-cache"))
    monkeypatch.delenv("DSAS_STATE_DIR", raising=False)
    monkeypatch.setenv("CI", "true")
    fleet.start_health_servers()
    return fleet

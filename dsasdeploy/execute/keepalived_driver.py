"""The keepalived pool driver: keepalived owns IPVS on the directors (often a VRRP pair), dsas watches.

Drain = create lb.maintenance_file on the host; the directors' keepalived health check fails on it
and, with inhibit_on_failure, sets the server's weight to 0 on every director; restore = remove
it. dsas never edits a table keepalived owns (a reload would undo the edit), it reads every
director until each shows the expected weights. A director that goes silent during the rollout
(killed, failed over, its link cut) is left out of the watch and reported, with where the VIP
went: its peer carries on, since both follow the same maintenance files; when it comes back, its
own checks read them too (`alpha` in its virtual_server starts every server down until its check
passes, so it never serves a drained server). docs/load-balancers.md has the configuration.
"""

from __future__ import annotations

import time
from typing import Sequence

from ..commands.lb import lvs
from ..config.schema import LbSettings
from ..errors import RemoteError
from ..inventory import Host
from ..plan.drain import DrainRecord
from .director_calls import INTERRUPT_GRACE
from .lb_base import PoolEnv
from .lvs_driver import LvsDriver
from .pool import run_parallel


class MaintenanceFileDriver(LvsDriver):
    """keepalived owns IPVS: drain through its health check, watch every director that answers."""

    def __init__(self, env: PoolEnv, directors: Sequence[Host], settings: LbSettings):
        super().__init__(env, directors, settings)
        self.lost: dict[str, str] = {}  # director -> why it left the watch
        self.watching = False  # after preflight: a director may go silent without failing the run

    def live(self) -> tuple[Host, ...]:
        return tuple(d for d in self.directors if d.name not in self.lost)

    def preflight(self, hosts: Sequence[Host]) -> None:
        super().preflight(hosts)  # every director answers, or nothing starts
        self.watching = True

    def read_all(self, with_journal: bool = False) -> dict[str, dict[str, lvs.VirtualService]]:
        """The tables of the directors still watched; one that went silent leaves the watch (and
        is reported) while another answers. An error answer, or no answer at all, fails."""
        if not self.watching:
            return super().read_all(with_journal)
        tables, problems = self.read_tables(self.live(), with_journal)
        silent = {name: why for name, why in problems.items() if name in self.calls.silent}
        if not tables or len(silent) < len(problems):
            raise RemoteError("; ".join(problems.values()))
        for name, why in silent.items():
            self._lose(name, why, tables)
        self.last_read, self.last_read_at = tables, time.monotonic()
        return tables

    def _lose(self, name: str, why: str, tables: dict[str, dict[str, lvs.VirtualService]]) -> None:
        self.lost[name] = why
        self.fleet.directors = self.live()
        survivors = sorted(tables)
        held = self.vip_holders(sorted({lvs.service_address(key) for t in tables.values() for key in t}))
        where = ", ".join(f"{vip} on {', '.join(on) or 'no surviving director yet'}" for vip, on in held.items())
        self.env.bus.emit("lb", status="director_lost", host=name, directors=survivors, reason=why, vips=held)
        self.env.bus.emit("warning", host=name, message=(
            f"director {name} left the rollout ({why}); {', '.join(survivors)} carr{'y' if len(survivors) > 1 else 'ies'}"
            f" on ({where}). Its keepalived follows the same maintenance files when it is back"))

    def vip_holders(self, addresses: list[str]) -> dict[str, list[str]]:
        """Virtual address -> the watched directors holding it now (the VRRP MASTER's)."""
        held: dict[str, list[str]] = {a: [] for a in addresses}
        for outcome in run_parallel(self.live(), lambda d: self.calls.run(d, lvs.vip_held_lines(addresses)),
                                    self.env.limit, grace=INTERRUPT_GRACE):
            if outcome.ok and outcome.value.ok:
                for address in lvs.parse_vip_held(outcome.value.stdout):
                    held.setdefault(address, []).append(outcome.host.name)
        return held

    def maintenance_file(self, host: Host) -> str:
        """The host's maintenance file: lb.maintenance_file, relative to its deploy_to unless absolute
        (config validation keeps an absolute one below every deploy_to)."""
        path = self.settings.maintenance_file
        return path if path.startswith("/") else f"{host.deploy_to.rstrip('/')}/{path}"

    def _touch(self, records: list[DrainRecord], create: bool) -> None:
        names = sorted({r.host for r in records})
        hosts = [h for h in self.env.stage_hosts if h.name in names]

        def touch(host: Host):
            return self.env.backend.run(host, lvs.maintenance_file_lines(self.maintenance_file(host), create))

        for outcome in run_parallel(hosts, touch, self.env.limit):
            if not outcome.ok or not outcome.value.ok:
                raise RemoteError(f"{outcome.host.name}: cannot {'create' if create else 'remove'} "
                                  f"{self.maintenance_file(outcome.host)}: {outcome.reason()}")

    def _await(self, records: list[DrainRecord], weight_of) -> None:
        """Until every watched director shows `weight_of(record)` for each record."""
        deadline = time.monotonic() + self.settings.drain_timeout
        while True:
            tables = self.read_all()
            pending = [r for r in records if r.director not in self.lost
                       and (tables.get(r.director, {}).get(r.service) is None
                            or tables[r.director][r.service].reals.get(r.real) is None
                            or tables[r.director][r.service].reals[r.real].weight != weight_of(r))]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise RemoteError("keepalived did not apply the expected weights within "
                                  f"{self.settings.drain_timeout:g}s: " +
                                  ", ".join(f"{r.real}@{r.director}" for r in pending))
            time.sleep(self.settings.poll_interval)

    def drain(self, records: list[DrainRecord]) -> None:
        self.fleet.ship()  # no director edit carries it here: the copy goes first, on its own
        self._touch(records, True)
        self._await(records, lambda r: 0)
        for host in sorted({r.host for r in records}):
            self.env.bus.emit("lb", host=host, status="drained",
                              directors=sorted({r.director for r in records if r.host == host} - set(self.lost)))

    def restore(self, records: list[DrainRecord]) -> None:
        if records:
            self._touch(records, False)
            self._await(records, lambda r: r.weight)
            for host in sorted({r.host for r in records}):
                self.env.bus.emit("lb", host=host, status="restored",
                                  weights={r.where: r.weight for r in records
                                           if r.host == host and r.director not in self.lost})

"""add-server's changes to LVS pools: a new real server joins (at weight 0, then ramped up) or leaves."""

from __future__ import annotations

from typing import Sequence

from ..commands.lb import lvs
from ..errors import RemoteError
from ..inventory import Host
from ..plan.drain import DrainRecord
from ..plan.provision import pick_weight
from .director_calls import INTERRUPT_GRACE
from .pool import run_parallel


class LvsMembership:
    """Adds and removes real servers on every director of an LvsDriver (verified by read-back)."""

    def __init__(self, driver):
        self.driver = driver

    def join_plan(self, host: Host, peers: Sequence[Host]) -> list[DrainRecord]:
        """One record per (director, virtual service) that serves a peer of `host`: the service the
        new host joins, with the peers' forwarding method and their most common weight."""
        tables = self.driver.read_all()
        rs, peer_rs = self.driver.rs(host), {self.driver.rs(p) for p in peers}
        records, problems = [], []
        for director, services in tables.items():
            for service in services.values():
                present = [real for address, real in service.reals.items() if address in peer_rs]
                if not present:
                    continue
                methods = sorted({real.method for real in present})
                if len(methods) > 1:
                    problems.append(f"{service.key} on {director}: the peers use different forwarding methods "
                                    f"({', '.join(methods)}); add {rs} by hand")
                    continue
                records.append(DrainRecord(host.name, director, service.key, rs, methods[0],
                                           pick_weight([r.weight for r in present]), present=rs in service.reals))
        if not records and not problems:
            problems.append(f"no virtual service on {', '.join(d.name for d in self.driver.directors)} serves a peer of "
                            f"{host.name} ({', '.join(p.name for p in peers) or 'none'}): nothing to join")
        if problems:
            raise RemoteError("; ".join(problems))
        return records

    def _membership(self, changes: dict[str, list[list[str]]]) -> dict[str, dict[str, lvs.VirtualService]]:
        directors = [d for d in self.driver.directors if changes.get(d.name)]

        def change(director: Host) -> dict[str, lvs.VirtualService]:
            result = self.driver.calls.run(director, lvs.membership_script(changes[director.name]))
            if not result.ok:
                raise RemoteError(f"ipvsadm failed: {result.stderr_tail()}")
            return lvs.parse_read(result.stdout)[0]  # a ValueError here is reported like any failure

        tables, problems = {}, []
        for outcome in run_parallel(directors, change, self.driver.env.limit, grace=INTERRUPT_GRACE):
            if not outcome.ok:
                problems.append(outcome.error_text())
                continue
            tables[outcome.host.name] = outcome.value
        if problems:
            raise RemoteError("; ".join(problems))
        return tables

    def join(self, records: list[DrainRecord], steps: list[int]) -> None:
        """Add the real server at weight 0 where it is missing (verified), then ramp it up."""
        changes: dict[str, list[list[str]]] = {}
        for r in records:
            if not r.present:
                changes.setdefault(r.director, []).append(lvs.add_real_argv(r.service, r.real, r.method, 0))
        tables = self._membership(changes)
        for r in records:
            if r.director in tables:
                real = tables[r.director].get(r.service, lvs.VirtualService("", "", "")).reals.get(r.real)
                if real is None or real.method != r.method:
                    raise RemoteError(f"{r.director}: {r.real} is not in {r.service} as {r.method} "
                                      f"after ipvsadm -a")
        self.driver.env.bus.emit("lb", host=records[0].host, status="joined",
                                 directors=sorted({r.director for r in records}))
        self.driver.restore(records, steps)

    def leave(self, host: Host) -> list[str]:
        """Remove `host` from every virtual service on every director, each director on its own
        (one unreachable director does not keep the others from being cleaned); verified.
        Returns where it was; raises naming the directors where it may still be."""
        rs = self.driver.rs(host)

        def one(director: Host) -> list[str]:
            read = self.driver.calls.run(director, lvs.read_script())
            if not read.ok:
                raise RemoteError(f"cannot read the IPVS table: {read.stderr_tail()}")
            keys = [s.key for s in lvs.parse_read(read.stdout)[0].values() if rs in s.reals]
            if not keys:
                return []
            done = self.driver.calls.run(director, lvs.membership_script(
                [lvs.delete_real_argv(key, rs) for key in keys]))
            if not done.ok:
                raise RemoteError(f"ipvsadm -d failed: {done.stderr_tail()}")
            still = [s.key for s in lvs.parse_read(done.stdout)[0].values() if rs in s.reals]
            if still:
                raise RemoteError(f"{rs} is still a real server in {', '.join(still)} after ipvsadm -d")
            return keys

        where, problems = [], []
        for outcome in run_parallel(self.driver.directors, one, self.driver.env.limit, grace=INTERRUPT_GRACE):
            if outcome.ok:
                where += [f"{outcome.host.name} {key}" for key in outcome.value]
            else:
                problems.append(outcome.error_text())
        if where:
            self.driver.env.bus.emit("lb", host=host.name, status="left",
                                     directors=sorted({w.split(" ", 1)[0] for w in where}))
        if problems:
            raise RemoteError(f"{rs} may still be in the pool: " + "; ".join(problems))
        return where

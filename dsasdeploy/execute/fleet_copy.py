"""The rolling journal's copy on every director (commands/fleet_journal.py builds the lines).

Each weight edit carries the journal's new records to the director it runs on, in the same
round trip; what no edit carried (e.g. `end`) is shipped on its own. `dsas recover` reads
the copies back, so the journal lives with the fleet, not only with this controller.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..commands import fleet_journal as fleet
from ..inventory import Host
from .director_calls import INTERRUPT_GRACE, DirectorCalls
from .lb_base import PoolEnv
from .pool import run_parallel


class FleetCopy:
    """The journal's copy on `directors`, as shipped by this run and as the last read found it."""

    def __init__(self, env: PoolEnv, directors: Sequence[Host], calls: DirectorCalls):
        self.env, self.directors, self.calls = env, tuple(directors), calls
        self.journal = None  # the run's journal, copied to every director with each edit
        self.copies: dict[str, list[dict]] = {}  # director -> its copy, as the last read found it

    def take(self) -> tuple[list[str], bool]:
        """The records no director has yet (and whether the copy starts afresh); they count as sent."""
        return self.journal.take_unshipped() if self.journal is not None else ([], False)

    def lines(self, director: Host, shipment: tuple[list[str], bool]) -> list[str]:
        """Shell lines appending `shipment` to `director`'s copy."""
        records, fresh = shipment
        return fleet.append_lines(director.deploy_to, self.env.stage_name, records, fresh)

    def read_lines(self, director: Host) -> list[str]:
        return fleet.read_lines(director.deploy_to, self.env.stage_name)

    def remember(self, director: str, stdout: str) -> None:
        """Keep the copy a read of `director` brought along."""
        self.copies[director] = fleet.parse(stdout)

    def ship(self) -> None:
        """Copy the records no edit carried yet (e.g. `end`) to every director; best effort."""
        shipment = self.take()
        if not shipment[0]:
            return
        for outcome in run_parallel(self.directors, lambda d: self.calls.run(d, self.lines(d, shipment)),
                                    self.env.limit, grace=INTERRUPT_GRACE):
            if not outcome.ok or not outcome.value.ok:
                self.env.bus.emit("warning", host=outcome.host.name, message=f"could not copy the journal's new "
                                  f"records to this director: {outcome.reason()}")

    def unfinished(self) -> Optional[tuple[str, list[dict]]]:
        """(director, records) of an unfinished rolling release in a copy, else None (the
        longest copy wins: a silent director may have missed the last records)."""
        found = [(d, fleet.unfinished(records)) for d, records in sorted(self.copies.items())]
        # a run another director's copy saw end was finished: this director missed the end (it was
        # down, e.g. the VRRP peer that failed over mid-rollout)
        ended = {fleet.run_token(records) for records in self.copies.values() if not fleet.unfinished(records)}
        ended.discard(None)
        found = [(d, run) for d, run in found if run and fleet.run_token(run) not in ended]
        return max(found, key=lambda item: len(item[1])) if found else None

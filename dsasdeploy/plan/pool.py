"""Pure: what the directors' tables say about a pool, before dsas changes anything in it."""

from __future__ import annotations

from typing import Iterable

from ..commands.lb import lvs

Tables = dict[str, dict[str, lvs.VirtualService]]  # director -> service key -> its virtual service


def stranger_reals(tables: Tables, known: set[str], ours: set[str], stage: str) -> list[tuple[str, str]]:
    """(director, why) for each virtual service serving one of `ours` that also sends traffic to
    real servers the stage does not list (`known`): their release and health are unknown."""
    found = []
    for director, services in tables.items():
        for service in services.values():
            if not ours & set(service.reals):
                continue
            strangers = sorted(rs for rs, real in service.reals.items() if rs not in known and real.weight > 0)
            if strangers:
                found.append((director, f"{director}: {service.key} also sends traffic to {len(strangers)} real "
                              f"server(s) stage '{stage}' does not list ({_first(strangers)}): their release and "
                              f"health are unknown; add them to the stage, take them out of the pool, or set "
                              f"lb.unknown_reals: warn"))
    return found


def active_connections(tables: Tables, targets: dict[str, str]) -> dict[str, int]:
    """{'host@director': ActiveConn} for the real servers `targets` (real server -> host name)
    still holding established connections (InActConn is TIME_WAIT: ignored)."""
    active: dict[str, int] = {}
    for director, services in tables.items():
        for service in services.values():
            for rs, name in targets.items():
                real = service.reals.get(rs)
                if real is not None and real.active:
                    active[f"{name}@{director}"] = active.get(f"{name}@{director}", 0) + real.active
    return active


def _first(names: Iterable[str], count: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")

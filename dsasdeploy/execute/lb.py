"""Pool drivers: take hosts out of the load balancer and put them back, on EVERY director.

lb_base.py holds the protocol and what a driver gets from the run (PoolEnv); the drivers
are in lvs_driver.py (ipvsadm), keepalived_driver.py (keepalived's maintenance file) and haproxy_driver.py.
"""

from __future__ import annotations

from typing import Optional

from ..config.schema import LbSettings
from .haproxy_driver import HaproxyDriver
from .lb_base import NoFleetJournal, NoMembership, NullDriver, PoolDriver, PoolEnv
from .keepalived_driver import MaintenanceFileDriver
from .lvs_driver import LvsDriver

__all__ = ["HaproxyDriver", "LvsDriver", "MaintenanceFileDriver", "NoFleetJournal", "NoMembership", "NullDriver",
           "PoolDriver", "PoolEnv", "make_driver"]


def make_driver(env: PoolEnv, settings: Optional[LbSettings]) -> PoolDriver:
    """The driver the stage asks for (no lb section, or driver none: the null driver)."""
    if settings is None or settings.driver == "none":
        return NullDriver()
    balancers = tuple(h for h in env.stage_hosts if "lb" in h.roles)
    if settings.driver == "haproxy":
        return HaproxyDriver(env, balancers, settings)
    if settings.keepalived == "maintenance_file":
        return MaintenanceFileDriver(env, balancers, settings)
    return LvsDriver(env, balancers, settings)

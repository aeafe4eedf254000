"""`dsas lab`: a local data center (LVS director + DRBD pair in UML guests, web hosts,
memcached, PXE boot server and a client in network namespaces) for the demo and the tests.

    from dsasdeploy.lab import Lab
    lab = Lab()            # state dir /var/lib/dsas-lab (or $DSAS_LAB_DIR)
    lab.up(web=3); lab.status(); lab.run("lb1", "ipvsadm -Ln"); lab.down()
"""

from .lab import HostStatus, Lab, LabError, require_root  # noqa: F401
from . import faults, topology  # noqa: F401
from .topology import APP_PORT, DEPLOY_TO, VIP, VIP_PORT, stage_yaml  # noqa: F401

__all__ = ["APP_PORT", "DEPLOY_TO", "VIP", "VIP_PORT", "HostStatus", "Lab", "LabError", "faults",
           "require_root", "stage_yaml", "topology"]

"""DRBD parsers on real outputs captured in the lab (drbd 8.4.11, drbd-utils 9.22), and the verdict."""

from __future__ import annotations

import json

from dsasdeploy.commands import drbd
from dsasdeploy.config.schema import DrbdResource, ServiceIp

RESOURCE = DrbdResource(name="r0", nodes=["drbd-a", "drbd-b"], mount="/srv/data",
                        service_ip=ServiceIp(address="10.77.0.20"))

HEALTHY_PROC = """version: 8.4.11 (api:1/proto:86-101)
srcversion: 059B1B470318F053F5077D5 
 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----
    ns:262100 nr:0 dw:0 dr:262100 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
"""
SYNC_PROC = """version: 8.4.11 (api:1/proto:86-101)
 0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
    ns:40832 nr:0 dw:0 dr:40832 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:221268
\t[==>.................] sync'ed: 15.7% (221268/262100)K
\tfinish: 0:00:05 speed: 40,832 (40,832) K/sec
"""
DISCONNECTED_PROC = """version: 8.4.11 (api:1/proto:86-101)
 0: cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown C r-----
    ns:0 nr:0 dw:16 dr:0 al:1 bm:1 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:16
"""
SPLIT_PROC = """version: 8.4.11 (api:1/proto:86-101)
 0: cs:StandAlone ro:Primary/Unknown ds:UpToDate/DUnknown   r-----
    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:16
"""


def output(proc: str, role: str, cstate: str, dstate: str, extra: str = "") -> str:
    return (f"DSAS section proc\n{proc}DSAS section json\nDSAS section end\n"
            f"DSAS role {role}\nDSAS cstate {cstate}\nDSAS dstate {dstate}\n{extra}")


def test_healthy_pair_is_safe():
    a = drbd.parse_status(output(HEALTHY_PROC, "Primary/Secondary", "Connected", "UpToDate/UpToDate",
                                 "DSAS mounted yes\nDSAS service_ip yes\n"), RESOURCE)
    b = drbd.parse_status(output(HEALTHY_PROC.replace("Primary/Secondary", "Secondary/Primary"),
                                 "Secondary/Primary", "Connected", "UpToDate/UpToDate"), RESOURCE)
    assert (a.role, a.peer_role, a.cstate, a.disk, a.protocol, a.version) == (
        "Primary", "Secondary", "Connected", "UpToDate", "C", "8.4.11")
    assert a.mounted and a.has_service_ip and not b.mounted
    assert drbd.switch_refusals(RESOURCE, {"drbd-a": a, "drbd-b": b}, "drbd-a", "drbd-b") == []
    # the target must be the Secondary
    assert any("not Secondary" in r for r in drbd.switch_refusals(RESOURCE, {"drbd-b": b, "drbd-a": a},
                                                                    "drbd-b", "drbd-a"))


def test_resync_is_refused_with_progress():
    a = drbd.parse_status(output(SYNC_PROC, "Primary/Secondary", "SyncSource", "UpToDate/Inconsistent"), RESOURCE)
    assert a.syncing and a.sync_done == 15.7 and a.out_of_sync_kb == 221268
    b = drbd.NodeState(role="Secondary", peer_role="Primary", cstate="SyncTarget", disk="Inconsistent",
                       peer_disk="UpToDate")
    reasons = drbd.switch_refusals(RESOURCE, {"drbd-a": a, "drbd-b": b}, "drbd-a", "drbd-b")
    assert any("resync is running" in r for r in reasons) and any("not Connected (SyncSource)" in r for r in reasons)


def test_disconnected_and_split_brain_are_refused():
    a = drbd.parse_status(output(DISCONNECTED_PROC, "Primary/Unknown", "WFConnection", "UpToDate/DUnknown"), RESOURCE)
    b = drbd.parse_status(output(HEALTHY_PROC.replace("Primary/Secondary", "Secondary/Primary"),
                                 "Secondary/Primary", "Connected", "UpToDate/UpToDate"), RESOURCE)
    reasons = drbd.switch_refusals(RESOURCE, {"drbd-a": a, "drbd-b": b}, "drbd-a", "drbd-b")
    assert "drbd-a: not Connected (WFConnection)" in reasons
    split = drbd.parse_status(output(SPLIT_PROC, "Primary/Unknown", "StandAlone", "UpToDate/DUnknown",
                                     "DSAS split_brain yes\n"), RESOURCE)
    reasons = drbd.switch_refusals(RESOURCE, {"drbd-a": split, "drbd-b": b}, "drbd-a", "drbd-b")
    assert any("split brain" in r for r in reasons)
    assert drbd.switch_refusals(RESOURCE, {"drbd-a": a, "drbd-b": None}, "drbd-a", "drbd-b") == ["drbd-b is unreachable"]


def test_cluster_manager_is_refused():
    a = drbd.NodeState(role="Primary", peer_role="Secondary", cstate="Connected", disk="UpToDate",
                       peer_disk="UpToDate", managers=("pacemakerd",))
    b = drbd.NodeState(role="Secondary", peer_role="Primary", cstate="Connected", disk="UpToDate",
                       peer_disk="UpToDate")
    assert "cluster manager (pacemakerd)" in drbd.switch_refusals(RESOURCE, {"a": a, "b": b}, "a", "b")[0]


def test_drbd9_status_json():
    # shape of `drbdsetup status --json` (drbd-utils 9): a list of resources
    sample = [{"name": "r0", "node-id": 0, "role": "Primary", "suspended": False,
               "devices": [{"volume": 0, "minor": 0, "disk-state": "UpToDate", "client": False}],
               "connections": [{"peer-node-id": 1, "name": "nodeb", "connection-state": "Connected",
                                "congested": False, "peer-role": "Secondary",
                                "peer_devices": [{"volume": 0, "replication-state": "SyncSource",
                                                  "peer-disk-state": "Inconsistent", "out-of-sync": 4096,
                                                  "percent-in-sync": 42.1}]}]}]
    parsed = drbd.parse_status_json(json.dumps(sample), "r0")
    assert parsed == {"role": "Primary", "disk": "UpToDate", "cstate": "SyncSource", "peer_role": "Secondary",
                      "peer_disk": "Inconsistent", "oos": 4096, "sync_done": 42.1}
    sample[0]["connections"][0]["connection-state"] = "Connecting"
    assert drbd.parse_status_json(json.dumps(sample), "r0")["cstate"] == "WFConnection"


def test_promote_never_forces_and_checks_first():
    lines = "\n".join(drbd.promote(RESOURCE))
    assert "--force" not in lines and "drbdadm primary r0" in lines
    assert lines.index("Connected") < lines.index("drbdadm primary r0")


def test_add_ip_detects_duplicates_then_announces():
    text = "\n".join(drbd.add_ip(RESOURCE))
    assert text.index("arping -D") < text.index("ip addr add 10.77.0.20/24 dev eth0") < text.index("arping -q -U")


def _node(role, cstate="Connected", disks=("UpToDate", "UpToDate")):
    from dsasdeploy.commands.drbd import NodeState
    return NodeState(role=role, cstate=cstate, disk=disks[0], peer_disk=disks[1])


def test_recover_serves_on_the_one_primary():
    from dsasdeploy.execute.drbd_recover import choose_primary
    states = {"a": _node("Secondary"), "b": _node("Primary")}
    assert choose_primary(states, [], None) == ("b", False)


def test_recover_promotes_the_journals_source_even_disconnected_if_the_target_never_promoted():
    import pytest
    from dsasdeploy.errors import DsasError
    from dsasdeploy.execute.drbd_recover import choose_primary
    begin = {"event": "begin", "source": "a", "target": "b"}
    down = {"a": _node("Secondary", "WFConnection", ("UpToDate", "DUnknown")),
            "b": _node("Secondary", "WFConnection", ("UpToDate", "DUnknown"))}
    steps = [begin, {"event": "step", "name": "demote", "on": "a", "undo": False}]
    assert choose_primary(down, steps, None) == ("a", True)
    with pytest.raises(DsasError, match="began a promote"):
        choose_primary(down, steps + [{"event": "step", "name": "promote", "on": "b", "undo": False}], None)
    with pytest.raises(DsasError, match="does not prove"):
        choose_primary(down, steps, "b")
    with pytest.raises(DsasError, match="no switchover journal"):
        choose_primary(down, [], None)
    connected = {"a": _node("Secondary"), "b": _node("Secondary")}
    assert choose_primary(connected, [], "b") == ("b", True)  # both UpToDate and Connected: either is safe
    with pytest.raises(DsasError, match="split brain"):
        choose_primary({"a": _node("Primary"), "b": _node("Primary")}, steps, None)

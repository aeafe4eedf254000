"""The marker protocol's one reader (commands/base.py) and the parsers that cut stdout with it."""

from __future__ import annotations

import json
import subprocess

from dsasdeploy.commands import drbd, fleet_journal as fleet
from dsasdeploy.commands.base import (Marker, mark, mark_literal, marked_text, marker_in, parse_markers, q,
                                      split_at_marker, text_before_marker)
from dsasdeploy.commands.lb import lvs
from dsasdeploy.config.schema import DrbdResource

LIST = Marker("section", "list")


def sh(lines: list[str]) -> str:
    return subprocess.run(["sh", "-ec", "\n".join(lines)], capture_output=True, text=True, check=True).stdout


def test_a_marker_is_a_whole_line_starting_with_the_mark():
    assert marker_in("DSAS step link_file config/a b.yml") == Marker("step", "link_file config/a b.yml")
    assert marker_in("DSAS no_callback") == Marker("no_callback")
    assert marker_in("DSAS ") == Marker("", "")
    assert marker_in("DSAS") is None and marker_in(" DSAS step x") is None and marker_in("xDSAS step x") is None
    assert marker_in("DSASstep x") is None


def test_marker_line_reads_back_as_the_same_marker():
    for marker in (Marker("step", "write /etc/x y"), Marker("fleet-journal"), Marker("section", "list")):
        assert marker_in(marker.line) == marker
    assert Marker("section", "list").line == lvs.SPLIT and Marker("fleet-journal").line == fleet.BEGIN


def test_markers_printed_by_sh_parse_back_in_order():
    out = sh([mark("step", "one $((1 + 1))"), "echo chatter", mark_literal("path", "/srv/a b"), mark("bare")])
    assert parse_markers(out) == [Marker("step", "one 2"), Marker("path", "/srv/a b"), Marker("bare")]


def test_split_at_marker_is_str_split_on_whole_marker_lines():
    text = "rules\nDSAS section list\ncounters\nDSAS other x\nDSAS section list\ntail\n"
    assert split_at_marker(text, LIST) == ["rules\n", "counters\nDSAS other x\n", "tail\n"]
    assert split_at_marker("no marker\n", LIST) == ["no marker\n"]
    assert split_at_marker("DSAS section list\n", LIST) == ["", ""]
    # not the marker: glued to other output, or a longer value
    assert split_at_marker("xDSAS section list\nDSAS section listing\n", LIST) == [
        "xDSAS section list\nDSAS section listing\n"]


def test_marked_text_runs_to_the_next_marker_line():
    out = "before\nDSAS section proc\nline 1\n\nline 3\nDSAS section json\nDSAS section end\nDSAS role P/S\n"
    assert marked_text(out, Marker("section", "proc")) == "line 1\n\nline 3\n"
    assert marked_text(out, Marker("section", "json")) == ""
    assert marked_text(out, Marker("section", "end")) == ""
    assert marked_text(out, Marker("section", "missing")) is None
    assert text_before_marker("a\nb\nDSAS x\nc\n") == "a\nb\n" and text_before_marker("a\n") == "a\n"


def test_marked_text_keeps_what_a_file_printed_exactly():
    content = "x = 1\n\ttabbed  \nDSASnot-a-marker\n"
    out = sh(["echo 'DSAS file'", f"printf '%s' {q(content)}", "echo 'DSAS file-end'"])
    assert marked_text(out, Marker("file")) == content


# ---- the parsers that cut stdout into marked texts ----------------------------------------

RESOURCE = DrbdResource(name="r0", nodes=["drbd-a", "drbd-b"], mount="/srv/data")
PROC_84 = """version: 8.4.11 (api:1/proto:86-101)
 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----
    ns:262100 nr:0 dw:0 dr:262100 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
"""
STATUS_9 = [{"name": "r0", "role": "Secondary", "devices": [{"disk-state": "UpToDate"}],
             "connections": [{"connection-state": "Connected", "peer-role": "Primary", "peer_devices": [
                 {"replication-state": "SyncTarget", "peer-disk-state": "UpToDate", "out-of-sync": 2048,
                  "percent-in-sync": 40.5}]}]}]


def test_drbd_status_reads_the_json_section_as_drbdsetup_prints_it():
    # drbdsetup ends its JSON with puts("]\n"): a blank line before the next marker
    printed = json.dumps(STATUS_9, indent=2) + "\n\n"
    out = (f"DSAS section proc\nversion: 9.2.4 (api:2/proto:86-122)\nDSAS section json\n{printed}"
           "DSAS section end\nDSAS role Secondary\nDSAS cstate Connected\nDSAS mounted yes\n")
    state = drbd.parse_status(out, RESOURCE)
    assert (state.version, state.role, state.peer_role, state.cstate, state.disk) == (
        "9.2.4", "Secondary", "Primary", "SyncTarget", "UpToDate")
    assert state.out_of_sync_kb == 2048 and state.sync_done == 40.5 and state.mounted


def test_drbd_status_after_the_journal_copy_in_the_same_round_trip():
    copy = json.dumps({"event": "step", "name": "demote", "on": "drbd-a"})
    out = (f"{fleet.BEGIN}\n{copy}\n{fleet.END}\nDSAS section proc\n{PROC_84}DSAS section json\n"
           "DSAS section end\nDSAS role Primary/Secondary\nDSAS cstate Connected\nDSAS dstate UpToDate/UpToDate\n"
           "DSAS manager pacemakerd\nDSAS service_ok web yes\nDSAS service_ok db no\n")
    state = drbd.parse_status(out, RESOURCE)
    assert (state.version, state.role, state.protocol, state.cstate) == ("8.4.11", "Primary", "C", "Connected")
    assert state.managers == ("pacemakerd",) and state.services_ok == {"web": True, "db": False}
    assert fleet.parse(out) == [json.loads(copy)]


def test_drbd_empty_proc_section_does_not_take_the_next_sections_text():
    out = "DSAS section proc\nDSAS section json\n[]\nDSAS section end\n"
    assert drbd._section(out, "proc") == "" and drbd._section(out, "json") == "[]\n"


def test_fleet_copy_read_after_the_ipvs_table(tmp_path):
    deploy_to = str(tmp_path)
    records = [json.dumps({"event": "begin", "release": "1"}), json.dumps({"event": "drain", "host": "web1"})]
    sh(fleet.append_lines(deploy_to, "prod", records, fresh=True))
    table = "-A -t 10.77.1.10:80 -s wrr\n-a -t 10.77.1.10:80 -r 10.77.2.11:80 -m -w 1\n"
    out = table + lvs.SPLIT + "\n" + lvs.SPLIT + "\nexpire_quiescent_template=1\n" + sh(fleet.read_lines(deploy_to, "prod"))
    assert [r["event"] for r in fleet.parse(out)] == ["begin", "drain"]
    services, keepalived = lvs.parse_read(out)
    assert list(services["TCP 10.77.1.10:80"].reals) == ["10.77.2.11:80"] and not keepalived
    assert lvs.parse_expire_quiescent_template(out) == 1


def test_fleet_copy_whose_last_record_lost_its_newline(tmp_path):
    path = fleet.journal_file(str(tmp_path), "prod")
    sh([f"mkdir -p {tmp_path}/.dsas-journal",
        f"printf '%s\\n%s' '{{\"event\": \"begin\"}}' '{{\"event\": \"drain\"}}' > {path}"])
    out = sh(fleet.read_lines(str(tmp_path), "prod") + ["echo 'DSAS section proc'"])
    assert f'"drain"}}{fleet.END}' in out
    assert fleet.parse(out) == [{"event": "begin"}, {"event": "drain"}]


def test_fleet_without_a_copy_marker_reads_as_nothing():
    assert fleet.parse("") == [] and fleet.parse(f"{fleet.END}\n") == []


def test_keepalived_is_read_from_its_own_line_not_from_the_journal_copy(tmp_path):
    """A journal record naming a host or controller 'keepalived-…' does not mean keepalived runs."""
    deploy_to = str(tmp_path)
    sh(fleet.append_lines(deploy_to, "prod", [json.dumps({"event": "begin", "controller": "keepalived-admin"})],
                          fresh=True))
    copy = sh(fleet.read_lines(deploy_to, "prod"))
    table = "-A -t 10.77.1.10:80 -s wrr\n" + lvs.SPLIT + "\n" + lvs.SPLIT + "\n"
    assert lvs.parse_read(table + "expire_quiescent_template=0\n" + copy)[1] is False
    assert lvs.parse_read(table + "keepalived\nexpire_quiescent_template=0\n" + copy)[1] is True

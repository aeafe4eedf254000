"""The journal's copy on the directors: builders run under a real sh, parsed back."""

from __future__ import annotations

import json
import subprocess

from dsasdeploy.commands import fleet_journal as fleet
from dsasdeploy.execute.journal import Journal


def sh(lines: list[str]) -> str:
    return subprocess.run(["sh", "-ec", "\n".join(lines)], capture_output=True, text=True, check=True).stdout


def test_records_round_trip_through_the_directors_copy(tmp_path):
    deploy_to = str(tmp_path / "srv" / "app")
    hostile = {"event": "drain", "host": "web1", "note": "it's $(rm -rf /) `x` \"q\" \\ %s %d"}
    lines = [json.dumps({"event": "begin", "release": "1"}), json.dumps(hostile)]
    sh(fleet.append_lines(deploy_to, "prod", lines, fresh=True))
    sh(fleet.append_lines(deploy_to, "prod", [json.dumps({"event": "restored", "host": "web1"})], fresh=False))
    records = fleet.parse(sh(fleet.read_lines(deploy_to, "prod")))
    assert [r["event"] for r in records] == ["begin", "drain", "restored"]
    assert records[1] == hostile
    assert fleet.unfinished(records) == records
    sh(fleet.append_lines(deploy_to, "prod", [json.dumps({"event": "end"})], fresh=False))
    assert fleet.unfinished(fleet.parse(sh(fleet.read_lines(deploy_to, "prod")))) is None
    # a new run starts a new copy and keeps the last one beside it
    sh(fleet.append_lines(deploy_to, "prod", [json.dumps({"event": "begin", "release": "2"})], fresh=True))
    records = fleet.parse(sh(fleet.read_lines(deploy_to, "prod")))
    assert records == [{"event": "begin", "release": "2"}]
    assert (tmp_path / "srv" / "app" / ".dsas-journal" / "prod.jsonl.previous").exists()


def test_no_copy_reads_as_nothing(tmp_path):
    assert fleet.parse(sh(fleet.read_lines(str(tmp_path), "prod"))) == []
    assert fleet.unfinished([]) is None
    assert fleet.append_lines(str(tmp_path), "prod", [], fresh=True) == []


def test_only_the_last_run_counts():
    runs = [{"event": "begin", "release": "1"}, {"event": "end"}, {"event": "begin", "release": "2"},
            {"event": "drain", "host": "web2"}]
    assert fleet.unfinished(runs) == runs[2:]


def test_journal_hands_each_record_to_the_directors_once(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    journal.begin(release="1")
    journal.record("drain", host="web1")
    records, fresh = journal.take_unshipped()
    assert fresh and [json.loads(r)["event"] for r in records] == ["begin", "drain"]
    assert journal.take_unshipped() == ([], False)
    journal.end("done")
    records, fresh = journal.take_unshipped()
    assert not fresh and json.loads(records[0])["event"] == "end"
    copy = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    other = Journal(tmp_path / "other.jsonl")
    other.adopt(copy[:2])
    assert [r["event"] for r in other.unfinished()] == ["begin", "drain"]


def test_replay_knows_where_the_new_release_passed_its_gates():
    from dsasdeploy.execute.journal import JournalState
    records = [{"event": "begin", "previous": {"web1": "1", "web2": "1"}},
               {"event": "drain", "host": "web1", "director": "lb1", "service": "TCP v:80", "weight": 1},
               {"event": "switch", "host": "web1", "release": "2"}, {"event": "gated", "host": "web1"},
               {"event": "restored", "host": "web1"},
               {"event": "switch", "host": "web2", "release": "2"}, {"event": "gated", "host": "web2"},
               {"event": "switched_back", "host": "web2"}]
    state = JournalState.replay(records)
    assert state.gated == {"web1"}  # web2 went back: its pass no longer stands
    assert state.switched == {"web1": "2"} and not state.drained


def test_a_director_that_missed_the_end_of_a_finished_run_does_not_block_the_next(tmp_path):
    """The VRRP peer killed mid-rollout keeps a copy without `end`; its peer's copy of the same run
    (same token) has it: the run is finished. A run no copy finished is still unfinished."""
    from dsasdeploy.execute.fleet_copy import FleetCopy

    begin = {"event": "begin", "token": "t1"}
    copy = FleetCopy.__new__(FleetCopy)
    copy.copies = {"lb1": [begin, {"event": "drain", "host": "web2"}],
                   "lb2": [begin, {"event": "drain", "host": "web2"}, {"event": "restored", "host": "web2"},
                           {"event": "end"}]}
    assert copy.unfinished() is None
    copy.copies["lb2"] = copy.copies["lb2"][:-1]
    assert copy.unfinished() == ("lb2", copy.copies["lb2"])  # the longest unfinished copy
    copy.copies = {"lb1": [begin], "lb2": [{"event": "begin", "token": "t0"}, {"event": "end"}]}
    assert copy.unfinished() == ("lb1", [begin])  # another run's end does not finish this one

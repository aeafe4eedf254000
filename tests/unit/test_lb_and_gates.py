"""LVS/HAProxy builders and parsers (real tool output), rollout planning, gates, journal."""

from __future__ import annotations

import http.server
import threading

import pytest

from dsasdeploy.commands.health import judge_response, parse_stats, warm_figures
from dsasdeploy.commands.lb import haproxy, lvs
from dsasdeploy.config.schema import HealthCheck, RolloutPolicy
from dsasdeploy.errors import UsageError
from dsasdeploy.execute.gates import health_gate
from dsasdeploy.execute.journal import Journal, JournalState
from dsasdeploy.plan.rollout import capacity_refusal, count_of, plan_batches, ramp_weights

# ipvsadm 1.31 output captured in the UML lab (shared/lab/UML-LAB.md), one server drained
SAVE = """-A -t 10.77.1.10:80 -s wrr
-a -t 10.77.1.10:80 -r 10.77.2.11:80 -m -w 1
-a -t 10.77.1.10:80 -r 10.77.2.12:80 -m -w 0
-A -t 10.77.1.10:443 -s sh -b sh-fallback -p 300
-a -t 10.77.1.10:443 -r 10.77.2.11:443 -g -w 100 -x 500 -y 400
"""
LIST = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.77.1.10:80 wrr
  -> 10.77.2.11:80                Masq    1      0          5         
  -> 10.77.2.12:80                Masq    0      1          5         
TCP  10.77.1.10:443 sh (sh-fallback) persistent 300
  -> 10.77.2.11:443               Route   100    37         212       
"""


def read_output(keepalived: bool = False) -> str:
    return SAVE + lvs.SPLIT + "\n" + LIST + lvs.SPLIT + "\n" + ("keepalived\n" if keepalived else "")


def test_parse_read_merges_rules_and_counters():
    services, keepalived = lvs.parse_read(read_output())
    web = services["TCP 10.77.1.10:80"]
    assert web.scheduler == "wrr" and not keepalived
    assert web.reals["10.77.2.12:80"] == lvs.RealServer("10.77.2.12:80", "Masq", 0, 0, 0, 1, 5)
    tls = services["TCP 10.77.1.10:443"]
    assert (tls.flags, tls.persistent) == (("sh-fallback",), 300)
    assert tls.reals["10.77.2.11:443"].upper == 500 and tls.reals["10.77.2.11:443"].active == 37
    assert lvs.parse_read(read_output(keepalived=True))[1] is True


def test_edit_restates_method_and_thresholds():
    services, _ = lvs.parse_read(read_output())
    web = services["TCP 10.77.1.10:80"]
    assert lvs.edit_argv(web, web.reals["10.77.2.11:80"], 0) == [
        "ipvsadm", "-e", "-t", "10.77.1.10:80", "-r", "10.77.2.11:80", "-m", "-w", "0"]
    tls = services["TCP 10.77.1.10:443"]
    assert lvs.edit_argv(tls, tls.reals["10.77.2.11:443"], 100)[-6:] == ["-g", "-w", "100", "-x", "500", "-y", "400"][-6:]


@pytest.mark.parametrize("scheduler,flags,refused", [
    ("wrr", (), False), ("wlc", (), False), ("sh", (), True), ("sh", ("sh-fallback",), False),
    ("mh", (), True), ("dh", (), True), ("lblc", (), True)])
def test_schedulers_where_weight_zero_is_not_a_drain(scheduler, flags, refused):
    service = lvs.VirtualService("TCP", "10.0.0.1:80", scheduler, flags)
    assert (service.drain_refusal() is not None) is refused


def test_batches_canary_first_capped_by_max_unavailable():
    hosts = [f"web{i}" for i in range(1, 8)]
    policy = RolloutPolicy(canary=1, batch=3, max_unavailable=2)
    assert plan_batches(hosts, policy, 7) == [["web1"], ["web2", "web3"], ["web4", "web5"], ["web6", "web7"]]
    assert plan_batches(hosts, RolloutPolicy(canary=0, batch="50%", max_unavailable="50%"), 7) == [
        hosts[:3], hosts[3:6], hosts[6:]]
    assert count_of("25%", 3) == 1
    with pytest.raises(UsageError):
        plan_batches(hosts, RolloutPolicy(max_unavailable=0), 7)


def test_capacity_guard_counts_servers_drained_by_hand():
    weights = {"a": 1, "b": 0, "c": 1}
    assert "already out: b" in capacity_refusal("svc", weights, ["a"], cap=1)
    assert capacity_refusal("svc", weights, ["a"], cap=2) is None
    assert "no real server" in capacity_refusal("svc", {"a": 1, "b": 0}, ["a"], cap=5)


def test_ramp_ends_at_the_original_weight():
    assert ramp_weights(100, [25, 50, 100]) == [25, 50, 100]
    assert ramp_weights(1, [25, 50, 100]) == [1]
    assert ramp_weights(0, [50, 100]) == [0]


def test_health_judgement():
    spec = HealthCheck(expect_body="ok")
    assert judge_response(spec, 200, {"X-Release": "20261127100000"}, "ok", "20261127100000") is None
    assert "does not name release" in judge_response(spec, 200, {}, "ok from 20261127090000", "20261127100000")
    assert judge_response(spec, 503, {}, "ok", None).startswith("HTTP 503")
    assert "lacks" in judge_response(spec, 200, {}, "fine", None)


def test_memcached_stats_window():
    before = parse_stats("STAT get_hits 10\r\nSTAT get_misses 10\r\nSTAT curr_items 5\r\nSTAT version 1.6\r\nEND\r\n")
    after = parse_stats("STAT get_hits 55\r\nSTAT get_misses 15\r\nSTAT curr_items 10\r\nEND\r\n")
    assert warm_figures(before, after) == {"hits": 45, "misses": 5, "hit_ratio": 0.9, "new_items": 5,
                                           "evictions": 0}


def test_haproxy_show_stat_by_header_name():
    text = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,weight\n"
            "web,web1,0,0,3,9,,100,DRAIN,1\nweb,web2,0,0,0,4,,90,UP,1\nweb,BACKEND,0,0,3,9,,190,UP,2\n")
    rows = haproxy.server_rows(haproxy.parse_show_stat(text), "web")
    assert set(rows) == {"web1", "web2"}
    assert haproxy.sessions(rows["web1"]) == 3 and not haproxy.in_service(rows["web1"])
    assert haproxy.set_state("web", "web1", "drain") == "set server web/web1 state drain"
    assert "socat stdio UNIX-CONNECT:/run/haproxy/admin.sock" in haproxy.api_script("/run/haproxy/admin.sock", ["show stat"])[-1]


def test_haproxy_servers_taken_out_by_hand_are_named_not_drained():
    text = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,weight\n"
            "web,web1,0,0,0,9,,100,MAINT,1\nweb,web2,0,0,0,4,,90,UP,1\nweb,web3,0,0,0,4,,90,DOWN 1/2,1\n"
            "web,web4,0,0,0,4,,90,DRAIN,1\n")
    rows = haproxy.server_rows(haproxy.parse_show_stat(text), "web")
    # MAINT/DRAIN are an operator's decision; DOWN is a failing check a deploy may well fix
    assert haproxy.taken_out(rows, ["web1", "web2", "web3", "web4", "web9"]) == {"web1": "MAINT", "web4": "DRAIN"}


def test_health_gate_against_a_real_http_server():
    state = {"calls": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["calls"] += 1
            status = 503 if state["calls"] <= 2 else 200  # slow to start
            body = b"ok release 20261127100000"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = HealthCheck(path="/health", interval=0.05, rise=2, deadline=5)
        result = health_gate("127.0.0.1", spec, server.server_address[1], "20261127100000")
        assert result.ok and result.attempts == 4
        failing = health_gate("127.0.0.1", HealthCheck(interval=0.05, deadline=0.3), server.server_address[1],
                              "20261127999999")
        assert not failing.ok and "does not name release 20261127999999" in failing.reason
    finally:
        server.shutdown()


def test_journal_replay_and_torn_last_line(tmp_path):
    journal = Journal(tmp_path / "j" / "prod.jsonl")
    journal.begin(release="R2", previous={"web1": "R1", "web2": "R1"}, token="t")
    journal.record("drain", host="web1", director="lb1", service="TCP v:80", real="a:80", method="Masq",
                   weight=5, upper=0, lower=0)
    journal.record("switch", host="web1", release="R2")
    with open(journal.path, "a") as out:
        out.write('{"event": "resto')  # SIGKILL mid-write
    records = journal.unfinished()
    state = JournalState.replay(records)
    assert state.switched == {"web1": "R2"} and state.drained["web1"][0].weight == 5
    assert state.previous == {"web1": "R1", "web2": "R1"}
    journal.record("restored", host="web1")
    journal.end("rolled_back")
    assert journal.unfinished() is None


def test_signals_held_interrupts_only_after_the_block():
    import os
    import signal

    from dsasdeploy.execute.pool import signals_held

    finished = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            finished.append("step")  # the step still completes
    assert finished == ["step"]
    assert signal.getsignal(signal.SIGTERM) is not None


def test_expire_quiescent_template_is_read():
    text = read_output() + "expire_quiescent_template=0\n"
    assert lvs.parse_expire_quiescent_template(text) == 0
    assert lvs.parse_expire_quiescent_template(read_output()) is None
    assert lvs.parse_read(text)[0]["TCP 10.77.1.10:443"].persistent == 300


def test_capacity_guard_exempts_servers_this_run_left_out():
    """A host that failed for its own reason (left drained by the run) must not block the rollback
    of the hosts still serving the failed release; the last server in service is still kept."""
    weights = {"web1": 1, "web2": 0, "web3": 1}
    assert "already out: web2" in capacity_refusal("svc", weights, ["web1"], cap=1)
    assert capacity_refusal("svc", weights, ["web1"], cap=1, exempt=frozenset({"web2"})) is None
    assert "no real server" in capacity_refusal("svc", {"web1": 1, "web2": 0}, ["web1"], cap=1,
                                                exempt=frozenset({"web2"}))

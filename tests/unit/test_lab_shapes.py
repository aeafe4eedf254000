"""The lab's load-balancer shapes as text: stage files, daemons' configuration checked by the
daemons themselves (keepalived --config-test, haproxy -c), the DR table, the VIP-holder probe."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dsasdeploy.commands.lb import lvs
from dsasdeploy.lab import lbshapes
from dsasdeploy.lab.topology import LB_SHAPES, stage_name, stage_yaml, topology

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("shape", LB_SHAPES)
def test_each_shape_has_its_stage_file_in_the_repository(shape):
    assert (ROOT / "stages" / f"{stage_name(shape)}.yaml").read_text() == stage_yaml(3, lb=shape)


def test_shapes_differ_where_they_should():
    names = lambda shape: [h.name for h in topology(3, shape) if "lb" in h.roles]  # noqa: E731
    assert names("keepalived") == ["lb1", "lb2"] and names("dr") == names("haproxy") == ["lb1"]
    assert [h.kind for h in topology(3, "haproxy") if "lb" in h.roles] == ["ns"]
    web1 = [h for h in topology(3, "dr") if h.name == "web1"][0]
    assert [n.bridge for n in web1.nics] == ["br-priv", "br-pub"] and web1.extra["dr_vip"] == "10.77.1.10"
    assert lbshapes.ipvs_rules(2, "dr").splitlines() == [
        "-A -t 10.77.1.10:8080 -s wrr",
        "-a -t 10.77.1.10:8080 -r 10.77.2.11:8080 -g -w 1",
        "-a -t 10.77.1.10:8080 -r 10.77.2.12:8080 -g -w 1"]
    with pytest.raises(ValueError, match="--lb must be one of"):
        lbshapes.check_shape("nginx")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("keepalived"), reason="needs root and keepalived")
@pytest.mark.parametrize("director", ["lb1", "lb2"])
def test_keepalived_accepts_the_lab_configuration(tmp_path, director):
    conf = tmp_path / "keepalived.conf"
    conf.write_text(lbshapes.keepalived_conf(director, 3))
    # its interfaces must exist: a throwaway network namespace with veth eth1/eth2
    check = subprocess.run(["unshare", "--net", "sh", "-c", 'ip link add eth1 type veth peer name p1 && ip link add eth2 type '
                            'veth peer name p2 && exec keepalived --config-test -f "$1"', "sh", str(conf)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = conf.read_text()
    assert text.count("inhibit_on_failure") == 3 and "alpha" in text and "nopreempt" in text


@pytest.mark.skipif(not shutil.which("haproxy"), reason="needs haproxy")
def test_haproxy_accepts_the_lab_configuration(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(lbshapes.haproxy_cfg(3))
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout
    assert [ln.split()[1] for ln in cfg.read_text().splitlines() if ln.strip().startswith("server ")] == \
        ["web1", "web2", "web3"]  # named like the stage's hosts: the driver finds them by name


def test_the_vip_holder_probe_names_only_held_addresses():
    script = "\n".join(lvs.vip_held_lines(["127.0.0.1", "10.254.254.254"]))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout
    assert lvs.parse_vip_held(out) == ["127.0.0.1"]
    assert lvs.service_address("TCP 10.77.1.10:80") == "10.77.1.10"
    assert lvs.service_address("TCP [fd00::1]:80") == "fd00::1"

"""On a machine where UML boots (so the lab suite ran on UML), the lab's smoke tests run once more
on the qemu engine, so that both code paths stay proven. Where UML cannot boot, the whole suite
already ran on qemu and this module skips.

Named to sort after test_lab.py, whose last test takes the session's lab down.
"""

from __future__ import annotations

import os

import pytest

from dsasdeploy.lab import Lab, engine

from . import test_lab
from .conftest import lab_skip_reason

pytestmark = pytest.mark.lab

SMOKE = [test_lab.test_every_host_answers_ssh_with_its_pinned_key,
         test_lab.test_ipvs_lists_web_hosts_as_masq_real_servers,
         test_lab.test_vip_reaches_every_web_host_after_a_release,
         test_lab.test_weight_0_with_method_restated_moves_new_requests_away,
         test_lab.test_drbd_pair_is_primary_secondary_uptodate]


@pytest.fixture(scope="module")
def qemu_lab():
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    natural = engine.choose(lab.uml_root, lab.cache, forced="")
    if natural.name == "qemu":
        pytest.skip("this machine runs the lab on qemu: the whole lab suite already ran on it")
    previous = lab.meta()
    if previous is not None:
        lab.down()
    os.environ["DSAS_LAB_ENGINE"] = "qemu"
    try:
        r = lab.up(web=3)
        assert r["engine"].name == "qemu" and lab.engine().name == "qemu"
        print(f"\n[lab] qemu engine ({r['engine'].label}) up in {r['seconds']:.1f} s")
        yield lab
    finally:
        lab.down()
        del os.environ["DSAS_LAB_ENGINE"]
        if previous is not None:  # someone else's lab was running: give it back
            lab.up(web=previous.get("web", 3))


@pytest.mark.parametrize("smoke", SMOKE, ids=[f.__name__[len("test_"):] for f in SMOKE])
def test_smoke_on_qemu(qemu_lab, smoke):
    smoke(qemu_lab)


def test_guest_runs_debian_kernel_with_read_only_host_root(qemu_lab):
    out = qemu_lab.run("lb1", "uname -r; touch /usr/dsas-write-test 2>&1; grep ' / ' /proc/mounts").stdout
    kernel, *rest = out.splitlines()
    assert kernel.endswith("-amd64")  # Debian's kernel, not UML's
    assert "Read-only file system" in "\n".join(rest)
    assert not os.path.exists("/usr/dsas-write-test")

"""Fixtures for the lab's own tests: one real lab per session (root only)."""

from __future__ import annotations

import os
import time

import pytest

from dsasdeploy.lab import Lab, qemu
from dsasdeploy.lab.lab import meminfo


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: needs root and builds the real local lab (dsas lab)")


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, UML guests)"
    lab = Lab()
    if not os.access(os.path.join(lab.uml_root, "usr/bin/linux.uml"), os.X_OK) \
            and not os.access(qemu.QEMU, os.X_OK):
        return f"neither user-mode-linux (under {lab.uml_root}) nor qemu is there: run .ci/lab-setup.sh"
    return None


@pytest.fixture(scope="session")
def lab_session():
    """The running lab; brought up once, torn down at the end (unless a test already did)."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    meta = lab.meta()
    if meta and (meta.get("web") != 3 or lab.lb_shape != "ipvsadm"):
        lab.down()  # a lab of another size or shape (or an interrupted run): start from scratch
    mem0 = meminfo()["host_available_kib"]
    r = lab.up(web=3)  # idempotent: a healthy running lab is used as it is
    time.sleep(0.5)
    used_mib = (mem0 - meminfo()["host_available_kib"]) / 1024
    if r["already_running"]:
        print("\n[lab] already running: using it (it is put back up after the down test)")
    else:
        print(f"\n[lab] up in {r['seconds']:.2f} s on {r['engine'].label}, host memory used {used_mib:.0f} MiB")
    lab.timings = {"up": r["seconds"], "mem_mib": used_mib}
    lab.owned = not r["already_running"]  # whoever started it also takes it down
    yield lab
    if lab.owned and lab.meta() is not None:
        lab.down()


@pytest.fixture
def lab(lab_session):
    if lab_session.meta() is None:
        pytest.skip("the lab was already taken down")
    return lab_session

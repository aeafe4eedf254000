"""The lab's guest engine is chosen by probes that really boot a guest (UML, else qemu KVM/TCG).

These tests make UML (and qemu) fail on purpose with stand-in binaries that print what the real
failure prints, in a private cache dir, so the machine's own verdict cache is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dsasdeploy.errors import UsageError
from dsasdeploy.lab import engine, net, qemu
from dsasdeploy.lab.topology import cache_dir

pytestmark = pytest.mark.lab
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UML_PANIC = """#!/bin/sh
# stands in for linux.uml on a CPU with AVX-512/AMX/PKU: what Debian 12's UML 6.1 prints there
echo "Linux version 6.1.176 (user-mode-linux)"
echo "userspace - ptrace set fp regs failed, errno = 14"
echo "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b"
exit 1
"""
QEMU_BROKEN = """#!/bin/sh
echo "qemu-system-x86_64: could not load kernel" >&2
exit 1
"""


def _skip_unless_qemu_kernel():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    try:
        qemu.kernel_tree()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if not os.access(qemu.QEMU, os.X_OK):
        pytest.skip(f"{qemu.QEMU} missing: run .ci/lab-setup.sh")


def _script(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return str(path)


@pytest.fixture
def private_cache(tmp_path):
    """A cache dir of its own (verdicts, probe files), sharing the machine's kernel and initrd."""
    _skip_unless_qemu_kernel()
    real = cache_dir()
    qemu.ensure_depmod(real)
    qemu.ensure_vmlinux(real)
    qemu.ensure_initrd(real)
    cache = tmp_path / "cache"
    cache.mkdir()
    for d in ("pxe", "qemu"):
        os.symlink(os.path.join(real, d), cache / d)
    return cache


def test_probe_picks_qemu_when_uml_panics_and_says_why(private_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("DSAS_LAB_UML_BIN", _script(tmp_path / "linux.uml", UML_PANIC))
    monkeypatch.delenv("DSAS_LAB_ENGINE", raising=False)
    t0 = time.monotonic()
    eng = engine.choose(str(tmp_path / "uml"), str(private_cache))
    first = time.monotonic() - t0
    assert eng.name == "qemu" and eng.accel in ("kvm", "tcg")
    assert "UML cannot boot here" in eng.reason
    assert "ptrace set fp regs failed, errno = 14" in eng.reason
    assert [t["engine"] for t in eng.tried][0] == "uml" and not eng.tried[0]["ok"]
    # the verdict is cached per kernel and CPU: the next choice boots nothing
    t0 = time.monotonic()
    again = engine.choose(str(tmp_path / "uml"), str(private_cache))
    assert (again.name, again.accel) == (eng.name, eng.accel)
    assert "cached verdict" in again.reason
    assert time.monotonic() - t0 < min(1.0, first)


def test_forced_engine_is_probed_too(private_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("DSAS_LAB_UML_BIN", _script(tmp_path / "linux.uml", UML_PANIC))
    with pytest.raises(UsageError) as e:
        engine.choose(str(tmp_path / "uml"), str(private_cache), forced="uml")
    assert "ptrace set fp regs failed" in str(e.value) and "nothing was built" in str(e.value)
    with pytest.raises(UsageError, match="must be one of uml, qemu"):
        engine.choose(str(tmp_path / "uml"), str(private_cache), forced="vmware")


def test_no_engine_exits_2_in_one_line_and_builds_nothing(private_cache, tmp_path):
    """`dsas lab up` where no engine boots: exit 2, one line naming each probe, no state dir, no
    namespace, no process left (whether or not another lab runs on this machine)."""
    state = tmp_path / "lab"
    netns_before = set(net.list_netns())
    env = dict(os.environ, DSAS_LAB_DIR=str(state), DSAS_LAB_CACHE=str(private_cache),
               DSAS_LAB_UML_BIN=_script(tmp_path / "linux.uml", UML_PANIC),
               DSAS_LAB_QEMU_BIN=_script(tmp_path / "qemu", QEMU_BROKEN))
    env.pop("DSAS_LAB_ENGINE", None)
    p = subprocess.run([sys.executable, "-m", "dsasdeploy", "lab", "up"], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsas: error: no guest engine can boot"), p.stderr
    for what in ("uml: exit 1: userspace - ptrace set fp regs failed", "qemu/tcg: exit 1",
                 "DSAS_LAB_ENGINE", "nothing was built"):
        assert what in lines[0]
    assert not state.exists()
    assert set(net.list_netns()) == netns_before
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftovers == ""

"""Which guest engine runs the lab's LVS director and DRBD pair: chosen by probes, never assumed.

    uml   user-mode-linux (Debian 12's 6.1): the fastest, but it panics on hosts whose XSAVE area
          is not 832 bytes (AVX-512, AMX, PKU): `ptrace set fp regs failed, errno = 14`.
    qemu  Debian 12's kernel under qemu, with KVM where a probe guest really boots under KVM
          (an accessible /dev/kvm proves nothing: nested KVM can hang forever), else TCG.

A probe boots a tiny guest that prints a marker and powers off, with a deadline. Verdicts are
cached in <cache>/engine.json, keyed by host kernel, CPU (model and flags) and the binaries
involved, so `lab up` pays for a probe once per machine. DSAS_LAB_ENGINE=uml|qemu forces an
engine (it is still probed, so a lab that cannot boot is refused before anything is built).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import UsageError
from . import qemu
from .topology import cache_dir

ENGINES = ("uml", "qemu")
PROBE_VERSION = "2"
UML_TIMEOUT = 20.0
KVM_TIMEOUT = 8.0
TCG_TIMEOUT = 40.0

UML_PROBE_INIT = f"""#!/bin/sh
# init of the dsas lab's UML probe guest: prove that a guest reaches userspace, then power off
mount -t proc proc /proc
echo "{qemu.PROBE_MARKER} $(cut -d' ' -f1 /proc/uptime)"
echo o > /proc/sysrq-trigger
sleep 10
"""


@dataclass(frozen=True)
class Engine:
    """The chosen engine: name ("uml" | "qemu"), accel for qemu ("kvm" | "tcg"), and why."""
    name: str
    accel: str = ""
    reason: str = ""
    tried: tuple = field(default=(), compare=False)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.accel}" if self.accel else self.name

    def as_dict(self) -> dict:
        return {"name": self.name, "accel": self.accel, "reason": self.reason,
                "tried": [dict(t) for t in self.tried]}

    @classmethod
    def from_dict(cls, d: dict) -> "Engine":
        return cls(d.get("name", "uml"), d.get("accel", ""), d.get("reason", ""),
                   tuple(d.get("tried", ())))


def uml_binary(uml_root: str) -> str:
    return os.environ.get("DSAS_LAB_UML_BIN") or os.path.join(uml_root, "usr/bin/linux.uml")


def qemu_binary() -> str:
    return os.environ.get("DSAS_LAB_QEMU_BIN") or qemu.QEMU


def _file_key(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path}:missing"


def cpu_key() -> str:
    """CPU model and feature flags (what decides UML's XSAVE size and KVM's behaviour)."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return hashlib.sha256(f"{model}\0{flags}".encode()).hexdigest()[:16]


def probe_key(kind: str, binary: str, extra: str = "") -> str:
    return hashlib.sha256("\0".join([PROBE_VERSION, kind, platform.release(), cpu_key(),
                                     _file_key(binary), extra]).encode()).hexdigest()[:24]


def _last_lines(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-300:]


def _run_probe(argv: list[str], timeout: float, env: dict | None = None) -> tuple[bool, float, str]:
    """Run a probe guest; (reached userspace, seconds, what it printed that explains a failure)."""
    t0 = time.monotonic()
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except OSError as e:
        return False, 0.0, f"cannot start {argv[0]}: {e.strerror or e}"
    try:
        out, _ = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        timed_out = True
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # UML leaves helper processes in its group
        except ProcessLookupError:
            pass
    text = out.decode(errors="replace")
    seconds = time.monotonic() - t0
    if qemu.PROBE_MARKER in text:
        return True, seconds, ""
    if timed_out:
        return False, seconds, f"no boot within {timeout:.0f} s" + (f" (last output: {_last_lines(text)})"
                                                                   if text.strip() else "")
    panic = [ln.strip() for ln in text.splitlines() if "failed" in ln or "panic" in ln.lower()]
    detail = " | ".join(panic[:2]) if panic else _last_lines(text)
    return False, seconds, f"exit {p.returncode}: {detail or 'no output'}"


UML_PROBE_MEM = "64M"
UML_PROBE_TRIES = 2


def probe_uml(uml_root: str, cache: str) -> dict:
    binary = uml_binary(uml_root)
    if not os.access(binary, os.X_OK):
        return {"engine": "uml", "ok": False, "seconds": 0.0,
                "detail": f"{binary} not found (run .ci/lab-setup.sh)"}
    work = tempfile.mkdtemp(prefix="uml-probe.", dir=cache)
    try:
        init = os.path.join(work, "init.sh")
        with open(init, "w") as f:
            f.write(UML_PROBE_INIT)
        os.chmod(init, 0o755)
        # 64M like the smallest lab guest: with 32M, UML 6.1 panics at random on some hosts
        # ("Failed to allocate ... memory map", "find_iomem failed") although its guests boot
        argv = [binary, "umid=probe", f"uml_dir={work}", f"mem={UML_PROBE_MEM}", "rootfstype=hostfs",
                "rootflags=/", "ro", f"init={init}", "con=null", "ssl=null", "con0=null,fd:1"]
        for _ in range(UML_PROBE_TRIES):  # a verdict that sticks needs every try to fail
            ok, seconds, detail = _run_probe(argv, UML_TIMEOUT, env=dict(os.environ, TMPDIR="/dev/shm"))
            if ok:
                break
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"engine": "uml", "ok": ok, "seconds": round(seconds, 2), "detail": detail}


def probe_qemu(accel: str, cache: str) -> dict:
    binary = qemu_binary()
    label = f"qemu/{accel}"
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return {"engine": label, "ok": False, "seconds": 0.0, "detail": "no usable /dev/kvm"}
    if not os.access(binary, os.X_OK):
        return {"engine": label, "ok": False, "seconds": 0.0,
                "detail": f"{binary} not found (run .ci/lab-setup.sh)"}
    try:
        kernel = qemu.ensure_vmlinux(cache)
        initrd = qemu.ensure_initrd(cache)
    except (OSError, subprocess.CalledProcessError) as e:
        return {"engine": label, "ok": False, "seconds": 0.0, "detail": f"guest kernel: {e}"}
    argv = qemu.base_argv(binary, accel, 128, kernel, initrd, ["dsas_probe=1"], "dsas-probe")
    ok, seconds, detail = _run_probe(argv, KVM_TIMEOUT if accel == "kvm" else TCG_TIMEOUT)
    return {"engine": label, "ok": ok, "seconds": round(seconds, 2), "detail": detail}


class VerdictCache:
    """<cache>/engine.json: probe results by probe key (a new kernel, CPU or binary: a new key)."""

    def __init__(self, cache: str):
        self.path = os.path.join(cache, "engine.json")

    def load(self) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict | None:
        return self.load().get(key)

    def put(self, key: str, verdict: dict) -> None:
        data = self.load()
        data[key] = {**verdict, "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)


def _cached(vc: VerdictCache, key: str, probe, keep_failure: bool = True) -> dict:
    """A cached verdict, or a new probe's (a failure is kept only where it is a property of the
    machine: a UML panic, a KVM that does not boot; never TCG's, the last resort)."""
    hit = vc.get(key)
    if hit is not None:
        return {**hit, "cached": True}
    verdict = probe()
    if verdict["ok"] or keep_failure:
        vc.put(key, verdict)
    return {**verdict, "cached": False}


def _describe(t: dict) -> str:
    if t["ok"]:
        return f"{t['engine']} probe guest booted in {t['seconds']:.1f} s" + (" (cached verdict)" if t.get("cached") else "")
    return f"{t['engine']}: {t['detail']}"


def choose(uml_root: str, cache: str | None = None, forced: str | None = None) -> Engine:
    """The engine the lab runs on (probing where no cached verdict exists). UsageError (exit 2)
    with every probe's result when nothing can boot a guest."""
    cache = cache or cache_dir()
    os.makedirs(cache, exist_ok=True)
    forced = (os.environ.get("DSAS_LAB_ENGINE", "") if forced is None else forced).strip().lower()
    if forced and forced not in ENGINES:
        raise UsageError(f"DSAS_LAB_ENGINE={forced!r}: must be one of {', '.join(ENGINES)} (or unset: probe)")
    vc = VerdictCache(cache)
    tried: list[dict] = []
    if forced in ("", "uml"):
        t = _cached(vc, probe_key("uml", uml_binary(uml_root)), lambda: probe_uml(uml_root, cache),
                    keep_failure=True)
        tried.append(t)
        if t["ok"]:
            why = "forced by DSAS_LAB_ENGINE" if forced else "a UML probe guest boots here"
            return Engine("uml", "", f"{why} ({_describe(t)})", tuple(tried))
    if forced in ("", "qemu"):
        try:
            kernel_version = qemu.kernel_tree(cache)[2]
        except FileNotFoundError as e:
            kernel_version = ""
            tried.append({"engine": "qemu", "ok": False, "seconds": 0.0, "detail": str(e)})
        if kernel_version:
            qemu.ensure_depmod(cache)
            for accel in ("kvm", "tcg"):
                key = probe_key(f"qemu-{accel}", qemu_binary(), kernel_version)
                t = _cached(vc, key, lambda a=accel: probe_qemu(a, cache), keep_failure=accel == "kvm")
                tried.append(t)
                if t["ok"]:
                    failed = "; ".join(_describe(x) for x in tried if not x["ok"])
                    why = "forced by DSAS_LAB_ENGINE" if forced else "UML cannot boot here"
                    reason = f"{why}: {failed}" if failed else why
                    return Engine("qemu", accel, f"{reason}; {_describe(t)}", tuple(tried))
    what = "; ".join(_describe(t) for t in tried)
    raise UsageError(f"no guest engine can boot a lab guest on this machine ({what}): run "
                     ".ci/lab-setup.sh, or force one with DSAS_LAB_ENGINE=uml|qemu; nothing was built")

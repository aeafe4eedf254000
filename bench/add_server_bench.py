#!/usr/bin/env python3
"""Benchmark: `dsas add-server lab` from power-on to serving through the VIP, per step.

Runs the real thing in the lab (qemu VM network-booted through the ipmi_sim BMC) on a copy
of this project, prints each step's seconds from the `provision_step` events, then takes
the VM out of the pool, powers it off and removes its DHCP entry. Needs root and a lab
(`dsas lab up`; the bench brings it up if it is down and leaves it up).
Usage: .venv/bin/python bench/add_server_bench.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsasdeploy.lab import Lab  # noqa: E402
from dsasdeploy.lab.topology import VIP, VIP_PORT  # noqa: E402

MAC, IP, NAME = "52:54:00:77:02:00", "10.77.2.200", "web4"


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("add_server_bench: needs root")
    lab = Lab()
    lab.up(web=3)
    work = Path(tempfile.mkdtemp(prefix="dsas-add-server-bench."))
    try:
        (work / "stages").mkdir()
        known = work / "known_hosts"
        shutil.copy(os.path.join(lab.state, "ssh", "known_hosts"), known)
        (work / "dsas.yaml").write_text((ROOT / "dsas.yaml").read_text().replace(
            "/var/lib/dsas-lab/ssh/known_hosts", str(known)))
        shutil.copy(ROOT / "stages" / "lab.yaml", work / "stages" / "lab.yaml")
        shutil.copytree(ROOT / "recipes", work / "recipes")
        env = {**os.environ, "DSAS_PROJECT": str(work), "DSAS_STATE_DIR": str(work / "state")}
        dsas = [sys.executable, "-m", "dsasdeploy"]
        subprocess.run([*dsas, "deploy", "lab", "--revision", "v1"], env=env, check=True, capture_output=True)
        started = time.monotonic()
        done = subprocess.run([*dsas, "add-server", "lab", "--name", NAME, "--mac", MAC, "--ip", IP, "--role", "web",
                               "--bmc", "127.0.0.1:9623", "--json"], env=env, capture_output=True, text=True)
        total = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"add-server failed (exit {done.returncode}): {done.stderr.strip()}")
        print(f"{'step':<12} {'seconds':>8}")
        for line in done.stdout.splitlines():
            event = json.loads(line)
            if event["type"] == "provision_step" and event["status"] == "ok":
                print(f"{event['phase']:<12} {event['seconds']:>8.1f}")
        print(f"{'total':<12} {total:>8.1f}   (command wall time, incl. ~0.6 s interpreter start)")
        print("target: one command, no manual step; the PXE boot itself (TCG emulation) dominates")
    finally:
        table = lab.run("lb1", "ipvsadm -Sn").stdout
        if f"{IP}:8080" in table:
            lab.run("lb1", f"ipvsadm -d -t {VIP}:{VIP_PORT} -r {IP}:8080", check=False)
        password = Path(lab.bmc_password_file).read_text().strip()
        subprocess.run(["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", "9623", "-U", "admin", "-E", "-C", "3",
                        "chassis", "power", "off"], env={**os.environ, "IPMI_PASSWORD": password},
                       capture_output=True)
        (Path(lab.boot_dir) / "dhcp-hosts" / f"dsas-{NAME}").unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

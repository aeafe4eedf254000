"""ipmitool over IPMI-over-LAN (lanplus): pure argv builders and output parsers.

The password never appears here: ipmitool reads it from $IPMI_PASSWORD with `-E`.
Pitfall: `ipmitool chassis bootdev` exits 0 even when the BMC rejects the boot device,
so the caller checks the answer text AND reads the flag back (`chassis bootparam get 5`).
"""

from __future__ import annotations

import re

BOOT_DEVICES = ("pxe", "disk", "none")


def base_argv(host: str, port: int, user: str, cipher_suite: int) -> list[str]:
    return ["ipmitool", "-I", "lanplus", "-H", host, "-p", str(port), "-U", user, "-E", "-C", str(cipher_suite),
            "-N", "2", "-R", "2"]


def power_status_argv() -> list[str]:
    return ["chassis", "power", "status"]


def power_argv(action: str) -> list[str]:
    if action not in ("on", "off", "cycle"):
        raise ValueError(f"unknown power action {action!r}")
    return ["chassis", "power", action]


def bootdev_argv(device: str, efiboot: bool) -> list[str]:
    """Boot from `device` on the NEXT boot only (no `persistent`)."""
    if device not in BOOT_DEVICES:
        raise ValueError(f"unknown boot device {device!r}")
    return ["chassis", "bootdev", device] + (["options=efiboot"] if efiboot else [])


def bootparam_argv() -> list[str]:
    return ["chassis", "bootparam", "get", "5"]


def parse_power(stdout: str) -> str:
    """'Chassis Power is on' -> 'on'; ValueError for anything else."""
    match = re.search(r"Chassis Power is (on|off)", stdout)
    if not match:
        raise ValueError(f"unexpected power status answer: {stdout.strip()[:80]!r}")
    return match.group(1)


def bootdev_accepted(stdout: str, device: str) -> bool:
    """True only if ipmitool said it set the device and reported no failed parameter."""
    return f"Set Boot Device to {device}" in stdout and "failed" not in stdout.lower()


def parse_boot_flags(stdout: str) -> str:
    """`chassis bootparam get 5` -> 'pxe' | 'disk' | 'none' | 'other:<text>'."""
    match = re.search(r"Boot Device Selector\s*:\s*(.+)", stdout)
    if not match:
        raise ValueError(f"no boot device selector in the BMC's answer: {stdout.strip()[:80]!r}")
    selector = match.group(1).strip()
    if "PXE" in selector:
        return "pxe"
    if "Hard-Drive" in selector:
        return "disk"
    if "No override" in selector:
        return "none"
    return "other:" + selector

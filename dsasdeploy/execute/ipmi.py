"""Run ipmitool on the controller against one BMC. The password goes through the
environment only ($IPMI_PASSWORD with -E): never argv, never a log line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

from ..commands import ipmi
from ..config.schema import BmcSettings
from ..errors import RemoteError, UsageError


def bmc_password(settings: BmcSettings, project_dir: Path) -> str:
    """From $<password_env>, else from password_file; a usage error if neither has one."""
    value = os.environ.get(settings.password_env)
    if value:
        return value
    if settings.password_file:
        path = Path(settings.password_file).expanduser()
        path = path if path.is_absolute() else project_dir / path
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"provision.bmc.password_file {path}: {exc.strerror}") from None
        if text:
            return text
    raise UsageError(f"no BMC password: set ${settings.password_env} or provision.bmc.password_file")


class Bmc:
    """One machine's BMC."""

    def __init__(self, host: str, port: int, settings: BmcSettings, password: str, timeout: float = 30.0):
        self.host, self.port, self.settings = host, port, settings
        self._password = password
        self.timeout = timeout

    @property
    def label(self) -> str:
        return f"BMC {self.host}:{self.port}"

    def run(self, command: list[str]) -> str:
        argv = ipmi.base_argv(self.host, self.port, self.settings.user, self.settings.cipher_suite) + command
        env = {k: v for k, v in os.environ.items() if k not in ("IPMITOOL_PASSWORD",)}
        env["IPMI_PASSWORD"] = self._password
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise UsageError("ipmitool is not installed on this machine (apt-get install ipmitool)") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.label}: no answer to `{' '.join(command)}` within {self.timeout:g}s") from None
        output = (done.stdout + done.stderr).replace(self._password, "***")
        if done.returncode != 0:
            first = next((line for line in output.splitlines() if line.strip()), f"exit {done.returncode}")
            raise RemoteError(f"{self.label}: `ipmitool {' '.join(command)}` failed: {first.strip()}")
        return output

    def power_status(self) -> str:
        text = self.run(ipmi.power_status_argv())
        try:
            return ipmi.parse_power(text)
        except ValueError as exc:
            raise RemoteError(f"{self.label}: {exc}") from None

    def power(self, action: str) -> None:
        self.run(ipmi.power_argv(action))

    def set_boot_device(self, device: str, efiboot: bool) -> str:
        """Set it, then read it back: returns what the BMC now says ('pxe', 'disk', 'none')."""
        answer = self.run(ipmi.bootdev_argv(device, efiboot))
        if not ipmi.bootdev_accepted(answer, device):
            raise RemoteError(f"{self.label}: the BMC did not accept boot device '{device}' "
                              f"(ipmitool said: {' / '.join(answer.split(chr(10))[:2]).strip()})")
        return self.boot_device()

    def boot_device(self) -> str:
        text = self.run(ipmi.bootparam_argv())
        try:
            return ipmi.parse_boot_flags(text)
        except ValueError as exc:
            raise RemoteError(f"{self.label}: {exc}") from None

    def power_state_or_none(self) -> Optional[str]:
        try:
            return self.power_status()
        except RemoteError:
            return None

"""Credentials given in the environment: taken out of it once, at start-up.

$DSAS_SSH_PRIVATE_KEY and $DSAS_SSH_KEY_PASSPHRASE are read once and removed from
os.environ (and so from the C environment), so that no child process dsas starts
(git via GitPython, hooks, ipmitool, anything a later change adds) inherits them.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

SECRET_VARIABLES = ("DSAS_SSH_PRIVATE_KEY", "DSAS_SSH_KEY_PASSPHRASE")

_taken: dict[str, str] = {}
_lock = threading.Lock()


def take_from_environment() -> None:
    """Move the secret variables out of os.environ into this process's memory (idempotent)."""
    with _lock:
        for name in SECRET_VARIABLES:
            value = os.environ.pop(name, None)
            if value is not None:
                _taken[name] = value


def secret(name: str) -> Optional[str]:
    """The value a secret variable had (taking it from the environment first if it is still there)."""
    take_from_environment()
    return _taken.get(name) or None

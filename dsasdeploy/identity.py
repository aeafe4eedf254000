"""Who runs dsas, as the lock, the revision log and Capistrano's log lines name them."""

from __future__ import annotations

import os
import pwd
import socket


def local_user() -> str:
    """The user name of this process's uid (never the bare uid, never a stale $USER after su)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (some containers)
        return os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid{os.getuid()}"


def operator() -> str:
    """user@controller, for lock owners and dsas's own log."""
    return f"{local_user()}@{socket.gethostname()}"

"""The controller's own directories: the cache (archives, mirrors) and the state (journals).

These and deploy_to are the only places dsas writes to. Both are checked before any
host is touched, so that an unusable one is a usage error (exit 2), not a failure
half-way through a deploy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class LocalDir:
    """A directory dsas writes to, and how an error names where it came from."""

    path: Path
    source: str  # '$DSAS_CACHE_DIR', 'the default cache directory', ...

    def check(self) -> Path:
        """The path, if it is (or can be created as) a writable directory; else UsageError."""
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            if existing.is_symlink():  # a dangling link: mkdir would fail
                break
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"{self.source}: {self.path} is not usable: {existing} is not a directory; "
                             f"nothing was touched")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{self.source}: {self.path} is not usable: {existing} is not writable; "
                             f"nothing was touched")
        return self.path


def cache_dir() -> LocalDir:
    """$DSAS_CACHE_DIR, else $XDG_CACHE_HOME/dsas, else ~/.cache/dsas."""
    if os.environ.get("DSAS_CACHE_DIR"):
        return LocalDir(Path(os.environ["DSAS_CACHE_DIR"]), "$DSAS_CACHE_DIR")
    if os.environ.get("XDG_CACHE_HOME"):
        return LocalDir(Path(os.environ["XDG_CACHE_HOME"]) / "dsas", "$XDG_CACHE_HOME")
    return LocalDir(Path(os.path.expanduser("~/.cache/dsas")), "the cache directory (set $DSAS_CACHE_DIR)")


def state_dir(project_dir: Path) -> LocalDir:
    """$DSAS_STATE_DIR, else <project>/.dsas."""
    if os.environ.get("DSAS_STATE_DIR"):
        return LocalDir(Path(os.environ["DSAS_STATE_DIR"]), "$DSAS_STATE_DIR")
    return LocalDir(project_dir / ".dsas", "the state directory (set $DSAS_STATE_DIR)")

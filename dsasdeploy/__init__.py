"""dsas: Capistrano-like releases over SSH."""

from .credentials import take_from_environment

__version__ = "0.1.0"

# First thing, before any module can start a child process (importing GitPython runs
# `git version`): the SSH key and its passphrase leave the process environment.
take_from_environment()

"""Exit codes of `dsas`: stable, documented in README.md, one per failure class."""

from enum import IntEnum


class ExitStatus(IntEnum):
    """What a `dsas` run tells its caller (CI relies on these numbers)."""

    OK = 0
    FAILED_ROLLED_BACK = 1  # the change failed and every host is back where it was
    USAGE = 2  # bad arguments or bad configuration; nothing was touched
    LOCKED = 3  # another deploy holds the stage lock
    NEEDS_HUMAN = 4  # failed and could NOT fully restore: a human must look

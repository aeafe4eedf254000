"""Pure: the record of one server's place in one balancer's pool, kept before it is changed.

A DrainRecord is the most safety-critical datum of a rolling release: the weight (or state)
a real server had in one virtual service on one director before dsas took it out, so that
it goes back exactly as it was. The drivers make them, the rollout journals them before
each change, `recover` reads them back, add-server joins a server with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional


@dataclass(frozen=True)
class DrainRecord:
    """`host`'s real server `real` in `service` on `director`, as it was before any change.

    LVS: `method` (-g/-i/-m), `weight` and the `upper`/`lower` connection thresholds.
    HAProxy: `service` is the backend; no weight (the server is set ready again).
    `present` (add-server): whether the real server already existed in the service.
    """

    host: str
    director: str
    service: str
    real: str = ""
    method: str = ""
    weight: Optional[int] = None
    upper: int = 0
    lower: int = 0
    present: bool = True

    @property
    def where(self) -> str:
        """'director service': the key of this record in a restored-weights report."""
        return f"{self.director} {self.service}"

    def to_journal(self) -> dict[str, Any]:
        """The journal's (and the directors' copy's) JSON form; the same keys older versions wrote."""
        data = asdict(self)
        if self.present:
            del data["present"]
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_journal(cls, data: dict[str, Any]) -> "DrainRecord":
        """A record read back from a journal; unknown keys (the journal's own) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

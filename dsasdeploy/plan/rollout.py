"""Pure: the batches of a rolling release and the capacity guard before each drain."""

from __future__ import annotations

import math
from typing import Sequence, TypeVar, Union

from ..config.schema import RolloutPolicy
from ..errors import UsageError

T = TypeVar("T")


def count_of(value: Union[int, str], pool: int) -> int:
    """3 -> 3; '25%' of 10 -> 2 (rounded down, at least 1 for a non-zero percentage)."""
    if isinstance(value, int):
        return value
    percent = int(value.rstrip("%"))
    return max(1, math.floor(pool * percent / 100)) if percent else 0


def max_unavailable(policy: RolloutPolicy, pool: int) -> int:
    return count_of(policy.max_unavailable, pool)


def plan_batches(hosts: Sequence[T], policy: RolloutPolicy, pool: int) -> list[list[T]]:
    """Canary batch first, then batches of `batch` hosts, never more than max_unavailable at once.

    `pool` is the size of the whole pool behind the load balancer (percentages refer to it).
    """
    cap = max_unavailable(policy, pool)
    if cap < 1:
        raise UsageError("rollout.max_unavailable is 0: no host could ever be taken out of service")
    size = max(1, min(count_of(policy.batch, pool), cap))
    remaining = list(hosts)
    batches: list[list[T]] = []
    if policy.canary and remaining:
        canary = min(policy.canary, cap)
        batches.append(remaining[:canary])
        remaining = remaining[canary:]
    while remaining:
        batches.append(remaining[:size])
        remaining = remaining[size:]
    return batches


def capacity_refusal(service: str, weights: dict[str, int], batch: Sequence[str], cap: int,
                     exempt: frozenset = frozenset()) -> str | None:
    """Why draining `batch` from a service with these live weights is refused (None: allowed).

    Refused when no real server would be left in service, or when more than `cap`
    (max_unavailable) would be out at once, counting servers someone already drained, except
    `exempt`: servers this run itself left out because they failed, which must not block the
    rollback of the hosts still serving the failed release.
    """
    in_service = {rs for rs, weight in weights.items() if weight > 0}
    after = in_service - set(batch)
    if not after:
        return f"{service}: draining {', '.join(batch)} would leave no real server in service"
    out = sorted(set(weights) - after - set(exempt))
    if len(out) > cap:
        already = sorted(set(weights) - in_service)
        note = f" (already out: {', '.join(already)})" if already else ""
        return (f"{service}: draining {', '.join(batch)} would leave {len(out)} of {len(weights)} real servers "
                f"out of service, more than max_unavailable={cap}{note}")
    return None


def ramp_weights(original: int, steps: Sequence[int]) -> list[int]:
    """Weights to restore through, ending exactly at `original` (0 stays 0)."""
    if original == 0:
        return [0]
    weights = [max(1, round(original * step / 100)) for step in steps]
    weights[-1] = original
    return [w for i, w in enumerate(weights) if i == 0 or w != weights[i - 1]]

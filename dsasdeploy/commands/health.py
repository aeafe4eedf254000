"""Pure judgement of a health response, and of memcached warmth from `stats`."""

from __future__ import annotations

from typing import Mapping, Optional

from ..config.schema import HealthCheck


def judge_response(spec: HealthCheck, status: int, headers: Mapping[str, str], body: str,
                   release_id: Optional[str]) -> Optional[str]:
    """None when the response passes the gate, else the reason it does not."""
    if status not in spec.expect_status:
        return f"HTTP {status} (expected {', '.join(map(str, spec.expect_status))})"
    if spec.expect_body is not None and spec.expect_body not in body:
        return f"body lacks {spec.expect_body!r}"
    if spec.expect_release and release_id:
        seen = body + " " + " ".join(f"{k}: {v}" for k, v in headers.items())
        if release_id not in seen:
            return f"response does not name release {release_id} (an old process may still answer)"
    return None


NOT_FINAL_5XX = frozenset({502, 503, 504})  # a proxy waiting for the app, or an app not ready yet


def final_statuses(spec: HealthCheck) -> frozenset[int]:
    """HTTP statuses that fail the health gate at once (`health.fail_fast`), not after the deadline."""
    if spec.fail_fast is True:
        return frozenset(range(500, 600)) - NOT_FINAL_5XX
    if not spec.fail_fast:
        return frozenset()
    return frozenset(spec.fail_fast) - frozenset(spec.expect_status)


def parse_stats(text: str) -> dict[str, float]:
    """memcached `stats`: `STAT name value` lines up to END -> numeric fields."""
    stats: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 3 and parts[0] == "STAT":
            try:
                stats[parts[1]] = float(parts[2])
            except ValueError:
                continue
    return stats


def warm_figures(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Windowed figures between two `stats` reads: hits, misses, hit ratio, new items."""
    hits = after.get("get_hits", 0) - before.get("get_hits", 0)
    misses = after.get("get_misses", 0) - before.get("get_misses", 0)
    gets = hits + misses
    return {
        "hits": hits,
        "misses": misses,
        "hit_ratio": round(hits / gets, 4) if gets else 0.0,
        "new_items": after.get("curr_items", 0) - before.get("curr_items", 0),
        "evictions": after.get("evictions", 0) - before.get("evictions", 0),
    }

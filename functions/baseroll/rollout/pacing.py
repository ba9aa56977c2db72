"""Admin API write pacing: per project × region release schedules.

Cloud Run's write quota is per project and region (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2), so each location gets its
own rate and locations proceed in parallel.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Hashable, Sequence, TypeVar

T = TypeVar("T")


def schedule(items: Sequence[T], location: Callable[[T], Hashable], per_min: Callable[[Hashable], int], *,
             start: float, burst: int = 5) -> list[tuple[float, T]]:
    """Release times: in each location the first `burst` at once, then one every 60/quota seconds.
    Order within a location is kept; the result is sorted by time (stable)."""
    seen: dict[Hashable, int] = defaultdict(int)
    timed = []
    for order, item in enumerate(items):
        loc = location(item)
        i = seen[loc]
        seen[loc] += 1
        rate = max(1, per_min(loc)) / 60.0
        timed.append((start + max(0, i - burst + 1) / rate, order, item))
    timed.sort(key=lambda t: (t[0], t[1]))
    return [(t, item) for t, _, item in timed]

"""Admin API write pacing: per project × region release schedules and a token bucket.

Cloud Run's write quota is per project and region (REFERENCE.md §4), so each location gets its
own rate and locations proceed in parallel.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Hashable, Iterable, Sequence, TypeVar

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


class TokenBucket:
    """Thread-safe: `take()` blocks until a token is free or `timeout` passes."""

    def __init__(self, per_min: float, burst: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_min / 60.0
        self.capacity = float(max(1, burst))
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while True:
            with self._lock:
                self._refill()
                if self.tokens >= 1:
                    self.tokens -= 1
                    return True
                wait = (1 - self.tokens) / self.rate
            if self.clock() + wait > deadline:
                return False
            time.sleep(min(wait, 1.0))


def by_location(names: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """Group service names (projects/P/locations/L/services/S) by (project, region)."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in names:
        parts = name.split("/")
        out[(parts[1], parts[3])].append(name)
    return out

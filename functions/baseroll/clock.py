"""Time as the core sees it: one small port, so waits and deadlines are testable without sleeping.

`SYSTEM` is the real clock; `FakeClock` advances only when the code under test sleeps.
"""
from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (what records and messages carry)."""
        ...

    def monotonic(self) -> float:
        """Seconds for measuring intervals and deadlines within one process."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


SYSTEM: Clock = SystemClock()


class FakeClock:
    """A clock that moves only when slept on (or `advance`d): a test of a 300 s timeout takes no time.

    `on_sleep` callbacks run after each sleep with the new time, so a test can change the world
    "while" the code waits (a revision becoming ready, an operator aborting).
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = start
        self._lock = threading.Lock()
        self.slept: list[float] = []
        self.on_sleep: list = []

    def now(self) -> float:
        with self._lock:
            return self._t

    def monotonic(self) -> float:
        return self.now()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += max(0.0, seconds)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        for callback in list(self.on_sleep):
            callback(self.now())

"""rebaser._parallel: the concurrency every rebase's registry calls go through."""
from __future__ import annotations

import threading
import time

import pytest
from baseroll.images import rebaser
from baseroll.images.rebaser import _parallel


def test_calls_run_together_results_in_order_on_one_pool():
    together = threading.Barrier(3, timeout=5)  # opens only when all three calls run at once

    def call(i: int) -> tuple[int, str]:
        together.wait()
        return i, threading.current_thread().name

    results = _parallel([lambda i=i: call(i) for i in range(3)])
    assert [i for i, _ in results] == [0, 1, 2]
    assert results[0][1] == threading.current_thread().name  # the caller runs the first call itself
    assert all(name.startswith("baseroll-rebase") for _, name in results[1:])
    pool = rebaser._pool
    _parallel([lambda: None, lambda: None])
    assert rebaser._pool is pool  # kept for the next rebase, not started per call


def test_an_error_is_raised_only_after_every_call_finished():
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.05)
        finished.set()

    def fail() -> None:
        raise ValueError("first")

    with pytest.raises(ValueError, match="first"):
        _parallel([fail, slow])
    assert finished.is_set()  # nothing left running against the client after the error

    def fail_later() -> None:
        time.sleep(0.02)
        raise KeyError("second")

    with pytest.raises(KeyError):
        _parallel([lambda: 1, fail_later, slow])

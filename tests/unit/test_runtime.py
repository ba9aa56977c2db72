"""`runtime.from_environment`: one set of clients per function instance."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from baseroll import runtime


def test_invocations_arriving_together_at_a_fresh_instance_share_one_set_of_clients(monkeypatch) -> None:
    """A wave's tasks reach a new worker instance at once: one of them builds the clients, the others
    wait for it, instead of each building (and connecting) its own."""
    built: list[object] = []
    start = threading.Barrier(8, timeout=5)

    def build(cfg: object) -> object:
        built.append(object())
        time.sleep(0.05)  # long enough for the others to arrive while it builds
        return built[-1]

    monkeypatch.setattr(runtime, "_BUILT", [])
    monkeypatch.setattr(runtime, "build", build)
    monkeypatch.setattr(runtime.config_mod, "load", lambda: "config")

    def invocation() -> object:
        start.wait()
        return runtime.from_environment()

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda _: invocation(), range(8)))
    assert len(built) == 1 and all(d is built[0] for d in got)
    assert runtime.from_environment() is built[0]  # and every later invocation reuses them

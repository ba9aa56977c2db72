"""The Cloud Run stand-in's image checks (infra/local/cloudrun/images.py) on many threads against the real
registry: each check in progress has an httpx client of its own (a client shared by threads let httpcore's
pool close a connection under another thread: "[Errno 9] Bad file descriptor"), and stopping closes them
all, including one still in a check."""
from __future__ import annotations

import threading

import httpx
import pytest

from infra.local.cloudrun_standin import ImageChecker
from infra.local.registry_server import RegistryServer
from tests.integration.test_cloudrun_standin import Images, images, registry  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.integration

THREADS = 4


class Clients:
    """Makes the checker's clients and holds each thread's first request until all THREADS threads sent
    theirs, so the checks are in progress at the same time."""

    def __init__(self) -> None:
        self.made: list[httpx.Client] = []
        self.together = threading.Barrier(THREADS, timeout=10)
        self.holding = True
        self._seen = threading.local()
        self._lock = threading.Lock()

    def new(self) -> httpx.Client:
        client = httpx.Client(timeout=5.0, trust_env=False, event_hooks={"request": [self._hold_first]})
        with self._lock:
            self.made.append(client)
        return client

    def _hold_first(self, request: httpx.Request) -> None:
        if self.holding and not getattr(self._seen, "done", False):
            self._seen.done = True
            self.together.wait()


def test_concurrent_checks_each_have_their_own_client(registry: RegistryServer, images: Images) -> None:  # noqa: F811
    clients = Clients()
    checker = ImageChecker(registry.host, clients.new)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(checker.check(images.good))) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [None] * THREADS, results  # every check passed the barrier together, and found the image
    assert len({id(c) for c in clients.made}) == THREADS

    clients.holding = False
    assert checker.check(images.good_v2) is None  # idle clients are reused, not made again
    assert checker.check(images.missing).reason == "CONTAINER_MISSING"
    assert len(clients.made) == THREADS

    checker.close()
    assert all(c.is_closed for c in clients.made)
    with pytest.raises(RuntimeError, match="closed"):
        checker.check(images.good)


def test_a_client_in_a_check_when_stopping_is_closed_when_the_check_ends(
    registry: RegistryServer, images: Images,  # noqa: F811
) -> None:
    made: list[httpx.Client] = []
    in_check, closed = threading.Event(), threading.Event()

    def new() -> httpx.Client:
        def hold(request: httpx.Request) -> None:
            in_check.set()
            closed.wait(10)  # the stand-in stops while this check reads the registry

        made.append(httpx.Client(timeout=5.0, trust_env=False, event_hooks={"request": [hold]}))
        return made[-1]

    checker = ImageChecker(registry.host, new)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(checker.check(images.good)))
    thread.start()
    assert in_check.wait(10)
    checker.close()
    assert not made[0].is_closed, "closing the checker must not close a client under a running check"
    closed.set()
    thread.join(30)
    assert result == [None] and made[0].is_closed

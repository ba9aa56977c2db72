"""Issue #15's flaky running mode, each race made likely on purpose:

- a revision's port is reserved for it alone outside the kernel's ephemeral range, where loopback clients'
  own ports come from; a port another process takes before the app binds it is not mistaken for the
  revision's (the probe wants the revision's own listener), and the app is started once more elsewhere;
- the proxy forwards many requests at once over keep-alive connections, each thread with a client of its
  own: one shared client let httpcore 1.0.9 close a connection under another thread's request, which then
  hung until its read timeout (docs/GOOGLE_APIS.md#revisions-that-really-run).
"""
from __future__ import annotations

import http.server
import random
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import httpx
import pytest

from infra.local.cloudrun.bundles import BundleCache
from infra.local.cloudrun.proxy import RevisionProxy
from infra.local.cloudrun.runner import LaunchSpec, RevisionRunner
from infra.local.cloudrun.running import Routes
from infra.local.procs import (
    LOOPBACK,
    SERVER_PORTS,
    PortReservations,
    ephemeral_range,
    group_listens_on,
)
from tests.integration.test_cloudrun_running import _alive, images, needs_root  # noqa: F401  (module fixture)

pytestmark = pytest.mark.integration

REVISIONS = 12
# More threads than httpx's 20 keep-alive connections, so the pool closes some; with one client shared by the
# proxy's threads this lost 2 of 3600 requests (504 after the read timeout) in 1 of 3 runs.
PROXY_THREADS, PROXY_REQUESTS = 60, 50


@pytest.fixture
def runner(images: dict, tmp_path: Path) -> Iterator[RevisionRunner]:  # noqa: F811
    bundles = BundleCache(tmp_path / "images", credentials=images["creds"])
    r = RevisionRunner(bundles, tmp_path / "logs", startup_timeout_s=10.0)
    yield r
    r.stop_all()


class _Churn:
    """Opens and closes loopback connections as fast as it can, so the kernel hands out ephemeral ports."""

    def __init__(self) -> None:
        self.server = socket.create_server((LOOPBACK, 0), backlog=512)
        self.connections = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True),
                         *(threading.Thread(target=self._connect, daemon=True) for _ in range(3))]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.close()
        for t in self._threads:
            t.join(10)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.close()

    def _connect(self) -> None:
        port = self.server.getsockname()[1]
        while not self._stop.is_set():
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                self.connections += 1
            except OSError:
                continue


@needs_root
def test_revisions_started_together_amid_connection_churn_each_listen_on_their_own_port(
        runner: RevisionRunner, images: dict) -> None:  # noqa: F811
    runner.bundles.get(images["v1"])  # pulled once up front: the starts race for ports, not for the pull
    low, high = ephemeral_range()
    with _Churn() as churn, ThreadPoolExecutor(REVISIONS) as pool:
        failures = list(pool.map(lambda i: runner.start(f"rev-{i}", LaunchSpec(images["v1"])), range(REVISIONS)))
        connections = churn.connections
    ports = {key: runner.port(key) for key in runner.running()}
    print(f"\n{REVISIONS} revisions started together while {connections} loopback connections came and went: "
          f"ports {sorted(ports.values())}, ephemeral range {low}-{high}")
    assert failures == [None] * REVISIONS
    assert len(set(ports.values())) == REVISIONS and not any(low <= p <= high for p in ports.values())
    assert all(group_listens_on(pid, ports[key]) for key, pid in runner.running().items())
    assert set(ports.values()) <= runner.ports.held()
    logs = "".join(p.read_text() for p in runner.logs.iterdir())
    assert "in use" not in logs and "starting again" not in logs
    for key in list(ports):
        runner.stop(key)
    assert not set(ports.values()) & runner.ports.held(), "a stopped revision's port stayed reserved"


class _TakenFirst(PortReservations):
    """Lets another process's listener take the first port it hands out, before the app can bind it."""

    def __init__(self) -> None:
        super().__init__(SERVER_PORTS.ports)
        self.taken: socket.socket | None = None

    def reserve(self, **kw: float) -> int:
        port = super().reserve(**kw)
        if self.taken is None:
            self.taken = socket.create_server((LOOPBACK, port))
        return port


@needs_root
def test_a_port_taken_before_the_app_binds_it_is_not_the_revisions_and_it_starts_again_elsewhere(
        images: dict, tmp_path: Path) -> None:  # noqa: F811
    ports = _TakenFirst()
    runner = RevisionRunner(BundleCache(tmp_path / "images", credentials=images["creds"]), tmp_path / "logs",
                            startup_timeout_s=10.0, ports=ports)
    try:
        assert runner.start("web", LaunchSpec(images["v1"])) is None
        assert ports.taken is not None
        taken, port, pid = ports.taken.getsockname()[1], runner.port("web"), runner.running()["web"]
        # The probe's connect reached the other listener at once; only the app's own listener made it ready.
        assert port != taken and group_listens_on(pid, port) and not group_listens_on(pid, taken)
        log = (tmp_path / "logs/web.log").read_text()
        print(f"\nthe first port, {taken}, was taken; the revision listens on {port}. Its log:\n{log}")
        assert "in use" in log and "starting again on another port" in log
        assert httpx.get(f"http://{LOOPBACK}:{port}/index.html", trust_env=False).text == "app v1\n"
        assert ports.held() == {port}, "the taken port was not given back"
    finally:
        runner.stop_all()
        if ports.taken is not None:
            ports.taken.close()
    assert not _alive(pid) and ports.held() == set()


class _KeepAlive(http.server.BaseHTTPRequestHandler):
    """A revision that keeps connections open (HTTP/1.1), as most app servers do and busybox httpd does not,
    and takes up to 5 ms to answer, so requests overlap in the proxy's pool."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        time.sleep(random.uniform(0, 0.005))
        body = f"answer to {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _OneRevision:
    """What the proxy asks of the stand-in: one public service whose only revision listens on `port`."""

    def __init__(self, port: int) -> None:
        self.port = port

    def routes(self, project: str, region: str, sid: str, tag: str | None) -> Routes:
        return Routes(audiences=frozenset(), public=True, targets=(("web-00001-abc", "uid-1", 100),))

    def revision_port(self, uid: str) -> int:
        return self.port


def test_concurrent_requests_through_the_proxy_over_keep_alive_connections_all_answer() -> None:
    upstream = socketserver.ThreadingTCPServer((LOOPBACK, 0), _KeepAlive)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    proxy = RevisionProxy(_OneRevision(upstream.server_address[1]), LOOPBACK, timeout_s=5.0)  # type: ignore[arg-type]
    proxy.start()
    outcomes: Counter[str] = Counter()

    def user(i: int) -> None:
        with httpx.Client(trust_env=False, timeout=10) as client:  # the test's side: a client per thread too
            for n in range(PROXY_REQUESTS):
                try:
                    r = client.get(f"{proxy.base}/s/p/r/web/u{i}/{n}")
                    outcomes["ok" if (r.status_code, r.text) == (200, f"answer to /u{i}/{n}\n") else
                             f"{r.status_code} {r.text.strip()}"] += 1
                except httpx.HTTPError as e:
                    outcomes[type(e).__name__] += 1

    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(PROXY_THREADS) as pool:
            list(pool.map(user, range(PROXY_THREADS)))
    finally:
        proxy.stop()
        upstream.shutdown()
        upstream.server_close()
    print(f"\n{PROXY_THREADS} threads x {PROXY_REQUESTS} requests through the proxy in "
          f"{time.monotonic() - t0:.1f} s: {dict(outcomes)}")
    assert outcomes == Counter({"ok": PROXY_THREADS * PROXY_REQUESTS})
    assert proxy.served["web-00001-abc"] == PROXY_THREADS * PROXY_REQUESTS


def test_a_reserved_port_is_neither_held_elsewhere_nor_reserved_twice_until_released_or_its_lease_ends() -> None:
    taken = socket.create_server((LOOPBACK, 0))
    port = taken.getsockname()[1]
    ports = PortReservations(range(port, port + 1))
    with pytest.raises(OSError, match="no free port"):
        ports.reserve(attempts=5)  # another socket holds it
    taken.close()
    assert ports.reserve() == port
    with pytest.raises(OSError, match="no free port"):
        ports.reserve(attempts=5)  # reserved already
    ports.release(port)
    assert ports.reserve(lease_s=0.2) == port and ports.held() == {port}
    time.sleep(0.3)
    assert ports.held() == set() and ports.reserve() == port

"""The registry transport: which hosts are reached over plain HTTP (loopback without a flag, as crane
and docker do), and what a connect or TLS failure tells the user to try. Real sockets on 127.0.0.1."""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Iterator

import httpx
import pytest
from baseroll.images import oci
from baseroll.images.refs import ImageRef
from baseroll.images.registry import (
    RegistryClient,
    RegistryError,
    StaticCredentials,
    is_loopback,
)


def client(handler: Any = None, **kw: Any) -> RegistryClient:
    transport = httpx.MockTransport(handler) if handler else None
    return RegistryClient(credentials=StaticCredentials({}), transport=transport, sleep=lambda s: None, **kw)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1:5000", True), ("127.0.0.1", True), ("127.8.9.10:80", True), ("localhost:5000", True),
    ("LOCALHOST", True), ("[::1]:5000", True), ("::1", True),
    ("10.0.0.1:5000", False), ("128.0.0.1", False), ("localhost.example.com", False),
    ("reg.example:443", False), ("[::2]:5000", False), ("us-docker.pkg.dev", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host, listed, scheme", [
    ("127.0.0.1:5000", False, "http"),
    ("localhost:5000", False, "http"),
    ("[::1]:5000", False, "http"),
    ("reg.example", False, "https"),
    ("10.0.0.1:5000", False, "https"),  # a private address is not loopback: still needs the flag
    ("reg.example", True, "http"),
])
def test_loopback_registries_are_plain_http_without_being_listed(host, listed, scheme):
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.scheme)
        return httpx.Response(404)

    c = client(handler, plain_http_hosts=[host] if listed else [])
    assert c.head_manifest(ImageRef(host, "a", "t")) is None
    assert seen == [scheme]


def test_a_remote_registry_cannot_send_us_to_plain_http_on_loopback():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(202, headers={"Location": "http://127.0.0.1:1/v2/r/blobs/uploads/x"})

    with pytest.raises(RegistryError, match="plain-http location"):
        client(handler).put_blob(ImageRef("reg.example", "r"), b"x")


def test_a_loopback_registry_may_use_its_own_plain_http_locations():
    data = b"x"

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "POST":
            return httpx.Response(202, headers={"Location": "http://127.0.0.1:5000/v2/r/blobs/uploads/x"})
        assert req.url.scheme == "http" and req.url.params["digest"] == oci.sha256_digest(data)
        return httpx.Response(201)

    assert client(handler).put_blob(ImageRef("127.0.0.1:5000", "r"), data) == oci.sha256_digest(data)


# ---------------------------------------------------------------- what a failure says to try


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_asks_whether_a_registry_runs_there():
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RegistryError) as err:
        client(retries=0).head_manifest(ImageRef(host, "apps/x", "1"))
    assert str(err.value) == (f"HEAD manifest {host}/apps/x:1: ConnectError after 1 attempt(s): "
                              f"could not connect to {host}; is a registry running at {host}?")


@pytest.fixture
def plain_server() -> Iterator[int]:
    """A plain HTTP server on loopback: what a TLS client meets at a registry without TLS."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_a_tls_failure_suggests_plain_http_for_that_host(plain_server):
    """A real TLS handshake against a plain HTTP server, as if reg.example:5000 were that server."""

    def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.scheme == "https"
        try:
            with httpx.Client(verify=False, trust_env=False) as real:
                real.get(f"https://127.0.0.1:{plain_server}/v2/")
        except httpx.ConnectError as e:
            raise httpx.ConnectError(str(e), request=req) from e
        raise AssertionError("TLS to a plain HTTP server cannot succeed")

    host = "reg.example:5000"
    with pytest.raises(RegistryError) as err:
        client(handler, retries=0).get_manifest(ImageRef(host, "apps/x", "1"))
    assert str(err.value) == (f"GET manifest {host}/apps/x:1: ConnectError after 1 attempt(s): TLS handshake "
                              f"with {host} failed; if {host} serves plain HTTP, pass --plain-http {host} "
                              "or list it under plain_http_registries")


def test_a_failure_without_a_request_adds_no_hint():
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(RegistryError) as err:
        client(handler, retries=0).head_manifest(ImageRef("reg.example", "a", "t"))
    assert str(err.value) == "HEAD manifest reg.example/a:t: ReadTimeout after 1 attempt(s)"

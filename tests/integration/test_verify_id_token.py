"""The verification requests over the wire: google-auth, unmodified, gets an ID token from the local
token server with the JWT-bearer grant (a service-account key file named by
GOOGLE_APPLICATION_CREDENTIALS), and `fleet.verify.HttpProber` sends it to a loopback server that
lets a request through only with an ID token for the service URL, as Cloud Run does
(docs/GOOGLE_APIS.md#verify-at-zero-traffic)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from baseroll.fleet import verification
from baseroll.fleet.verification import Probe
from baseroll.fleet.verify import GoogleIdTokens, HttpProber

from infra.local.token_server import TokenServer

SA = "baseroll-worker@baseroll-host.iam.gserviceaccount.com"


class _Service(BaseHTTPRequestHandler):
    """A service behind Cloud Run's invoker check: 403 without a token, 401 with one for another
    audience; then /ok answers 200, /broken 500 with a long body, /slow never in time."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        server: Any = self.server
        server.seen.append(self.path)
        auth = self.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return self._send(403, b"Forbidden")
        try:
            server.tokens.verify_id_token(auth.removeprefix("Bearer "), server.service_url)
        except ValueError as exc:
            return self._send(401, str(exc).encode())
        if self.path.endswith("/slow"):
            server.release.wait(10)
        if self.path.endswith("/broken"):
            return self._send(500, b"Internal Server Error: /etc/app/locale.conf missing " + b"." * 500)
        return self._send(200, b"ok")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    with TokenServer() as ts:
        key = tmp_path / "worker-key.json"
        key.write_text(json.dumps(ts.service_account_key(SA)))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
        yield ts


@pytest.fixture
def service(tokens: TokenServer) -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    server.daemon_threads = True
    port = server.server_address[1]
    server.tokens, server.seen, server.release = tokens, [], threading.Event()
    server.service_url = f"http://127.0.0.1:{port}/s/tenants-a/us-central1/shop"
    server.tag_url = f"http://127.0.0.1:{port}/t/tenants-a/us-central1/shop/{verification.VERIFY_TAG}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_the_tag_url_accepts_an_id_token_for_the_service_url(tokens: TokenServer, service: Any) -> None:
    prober = HttpProber(GoogleIdTokens())
    found = verification.check(prober, service.tag_url, service.service_url, Probe(path="/ok"))
    assert found.passed, found.detail
    assert found.detail == "3 x GET /ok -> 200"
    assert service.seen == [f"/t/tenants-a/us-central1/shop/{verification.VERIFY_TAG}/ok"] * 3
    assert tokens.counts["id_tokens"] == 1  # one token for the audience, reused until it expires
    prober.close()


def test_a_token_for_another_audience_is_refused_and_fails_the_check(service: Any) -> None:
    prober = HttpProber(GoogleIdTokens())
    found = verification.check(prober, service.tag_url, service.tag_url, Probe(path="/ok"))
    assert not found.passed and "answered 401" in found.detail and "roles/run.invoker" in found.detail
    prober.close()


def test_a_500_fails_with_the_first_bytes_of_the_body(service: Any) -> None:
    prober = HttpProber(GoogleIdTokens())
    found = verification.check(prober, service.tag_url, service.service_url, Probe(path="/broken"))
    assert not found.passed and found.detail.startswith("request 1/3 GET /broken answered 500")
    assert "locale.conf missing" in found.detail and "." * 201 not in found.detail
    prober.close()


def test_an_answer_slower_than_the_timeout_fails(service: Any) -> None:
    prober = HttpProber(GoogleIdTokens())
    found = verification.check(prober, service.tag_url, service.service_url,
                               Probe(path="/slow", requests=1, timeout_s=0.5))
    assert not found.passed and "no answer (timed out after 0.5 s)" in found.detail
    prober.close()


def test_an_unknown_service_account_gets_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  service: Any, tokens: TokenServer) -> None:
    """A key the token endpoint does not know: google-auth's refresh fails, the request is not sent."""
    forged = dict(TokenServer().service_account_key(SA), token_uri=f"{tokens.url}/token")
    key = tmp_path / "forged.json"
    key.write_text(json.dumps(forged))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    reply = HttpProber(GoogleIdTokens()).send("GET", service.tag_url + "/ok", audience=service.service_url,
                                              timeout_s=2)
    assert reply.status is None and "no ID token" in reply.error and "signature" in reply.error
    assert service.seen == []

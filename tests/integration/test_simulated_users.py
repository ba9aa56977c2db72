"""The demo's simulated users (infra/local/users.py) against a loopback server: each request carries an ID
token for its URL, the tally counts who answered and how, and the loop stops at its count or time bound."""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra.local.procs import LOOPBACK
from infra.local.users import SimulatedUsers, id_token_minter

pytestmark = pytest.mark.integration
HEADER = "X-Baseroll-Revision"


class _Handler(BaseHTTPRequestHandler):
    """`/ok` answers 200 from revision ok-1; `/bad` 500 from bad-1; a token for another URL gets 401."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        url = f"http://{LOOPBACK}:{self.server.server_port}{self.path}"
        status, revision = (200, "ok-1") if self.path == "/ok" else (500, "bad-1")
        if claims.get("aud") != url:
            status, revision = 401, ""
        self.send_response(status)
        self.send_header(HEADER, revision)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{srv.server_port}"
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def test_users_tally_who_answered_and_stop_at_their_request_bound(server):
    users = SimulatedUsers({"a": f"{server}/ok", "b": f"{server}/bad"}, id_token_minter(), HEADER,
                           threads=3, max_requests=40, pause_s=0.0).start()
    deadline = time.monotonic() + 30
    while users.tally.sent < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    tally = users.stop()
    assert tally.sent == 40 and sum(tally.statuses.values()) == 40  # every request sent was answered and counted
    assert tally.statuses[200] == tally.statuses[500] == 20  # round robin over the two URLs; no 401: aud was each URL
    assert tally.from_revisions({"bad-1"}) == tally.server_errors == 20 and tally.from_revisions({"ok-1"}) == 20
    assert tally.first_error.startswith(f"{server}/bad: 500")


def test_users_stop_at_their_time_bound(server):
    t0 = time.monotonic()
    users = SimulatedUsers({"a": f"{server}/ok"}, id_token_minter(), HEADER, threads=1, max_seconds=0.5, pause_s=0.05)
    tally = users.start().join()  # never stopped: they stop by themselves
    assert time.monotonic() - t0 < 5
    assert 0 < tally.sent <= 0.5 / 0.05 + 1 and tally.server_errors == 0


def test_users_need_a_url():
    with pytest.raises(ValueError, match="no service URL"):
        SimulatedUsers({}, id_token_minter(), HEADER)

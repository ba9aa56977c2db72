"""The optional Chat subscriber (edge/notify_chat.py) against a webhook receiver on loopback.

The receiver is a real HTTP server on 127.0.0.1 that records each POST and answers with the status
the test scripts, so retries, refusals and the thread key are checked on the wire.
"""
from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from baseroll.clock import FakeClock
from baseroll.contracts import events as E
from baseroll.contracts.messages import Rollout
from baseroll.edge import notify_chat as chat

RO = Rollout("python-0123456789ab", "python", "us-docker.pkg.dev/p/bases/python:3.12", "sha256:" + "1" * 64)
HALT = E.halted(RO, at=1_764_460_800.0, seq=7, wave=1, reason="over budget",
                failures={"projects/p/locations/us-east1/services/cart": "not ready"})
DONE = E.finished(RO, at=1_764_460_900.0, seq=9, waves=[{"wave": 0, "size": 1, "done": 1}])


class Webhook:
    """Records (path+query, JSON body) of every POST; answers the next scripted status (then 200)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.script: list[int] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.posts.append((self.path, body))
                    status = outer.script.pop(0) if outer.script else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/spaces/AAA/messages?key=k&token=t"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    chat._seen.clear()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()
    thread.join(timeout=5)


def envelope(event: E.RolloutEvent) -> dict[str, Any]:
    data, attributes = E.encode(event)
    return {"message": {"data": base64.b64encode(data).decode(), "messageId": "m1", "attributes": attributes},
            "subscription": "projects/p/subscriptions/notify"}


def test_posts_the_summary_into_the_rollouts_thread(webhook):
    clock = FakeClock()
    assert chat.notify(envelope(HALT), "ce-1", {chat.WEBHOOK_ENV: webhook.url}, clock=clock) == {"status": "posted"}
    ((path, body),) = webhook.posts
    query = parse_qs(urlsplit(path).query)
    assert query == {"key": ["k"], "token": ["t"], "messageReplyOption": ["REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"]}
    assert body == {"text": E.summary(HALT), "thread": {"threadKey": "python-0123456789ab"}}
    assert "HALTED: over budget; failing: cart (not ready)" in body["text"]
    assert clock.slept == []


def test_a_duplicate_delivery_is_posted_once(webhook):
    env = {chat.WEBHOOK_ENV: webhook.url}
    assert chat.notify(envelope(HALT), "ce-1", env)["status"] == "posted"
    assert chat.notify(envelope(HALT), "ce-2", env)["status"] == "skipped"
    assert chat.notify(envelope(DONE), "ce-3", env)["status"] == "posted"
    assert len(webhook.posts) == 2


def test_rate_limited_and_server_errors_are_retried_with_backoff(webhook):
    webhook.script = [429, 503]
    clock = FakeClock()
    assert chat.notify(envelope(HALT), "ce-1", {chat.WEBHOOK_ENV: webhook.url}, clock=clock)["status"] == "posted"
    assert len(webhook.posts) == 3 and clock.slept == [1.0, 4.0]


def test_chat_down_on_every_attempt_raises_for_redelivery(webhook):
    webhook.script = [500] * chat.ATTEMPTS
    clock = FakeClock()
    with pytest.raises(chat.ChatUnavailable, match="failed 4 times, last: HTTP 500"):
        chat.notify(envelope(HALT), "ce-1", {chat.WEBHOOK_ENV: webhook.url}, clock=clock)
    assert len(webhook.posts) == chat.ATTEMPTS and sum(clock.slept) == 21.0
    assert chat.notify(envelope(HALT), "ce-1", {chat.WEBHOOK_ENV: webhook.url}, clock=clock)["status"] == "posted"


def test_a_refusal_is_permanent_and_not_retried(webhook):
    webhook.script = [400]
    out = chat.notify(envelope(HALT), "ce-1", {chat.WEBHOOK_ENV: webhook.url}, clock=FakeClock())
    assert out == {"status": "refused", "http_status": 400} and len(webhook.posts) == 1


def test_an_unreachable_webhook_is_retried_then_raised():
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed below: nothing listens there
    clock = FakeClock()
    with pytest.raises(chat.ChatUnavailable, match="ConnectError"):
        chat.notify(envelope(DONE), "ce-1", {chat.WEBHOOK_ENV: f"http://127.0.0.1:{port}/x"}, clock=clock)
    assert len(clock.slept) == chat.ATTEMPTS - 1


def test_kinds_filter(webhook):
    env = {chat.WEBHOOK_ENV: webhook.url, chat.KINDS_ENV: "halted, awaiting-approval"}
    assert chat.notify(envelope(DONE), "ce-1", env)["status"] == "skipped"
    assert chat.notify(envelope(HALT), "ce-2", env)["status"] == "posted"
    assert len(webhook.posts) == 1


@pytest.mark.parametrize("env, reason", [
    ({}, "CHAT_WEBHOOK_URL is not set"),
    ({chat.WEBHOOK_ENV: "http://chat.example.com/hook?token=secret"}, "must be an https URL"),
    ({chat.WEBHOOK_ENV: "ftp://127.0.0.1/x"}, "must be an https URL"),
])
def test_an_unusable_url_is_refused_without_logging_it(env, reason, capsys):
    out = chat.notify(envelope(HALT), "ce-1", env)
    assert out["status"] == "rejected" and reason in out["reason"]
    assert "secret" not in capsys.readouterr().out


def test_a_malformed_event_is_rejected(webhook):
    bad = {"message": {"data": base64.b64encode(b'{"schema": "baseroll.dev/v1"}').decode(), "messageId": "m"}}
    out = chat.notify(bad, "ce-1", {chat.WEBHOOK_ENV: webhook.url})
    assert out["status"] == "rejected" and "schema" in out["reason"] and webhook.posts == []


def test_https_urls_get_the_reply_option_and_keep_their_query():
    url = chat.webhook_url({chat.WEBHOOK_ENV: "https://chat.googleapis.com/v1/spaces/S/messages?key=K&token=T"})
    assert url == ("https://chat.googleapis.com/v1/spaces/S/messages?key=K&token=T"
                   "&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")

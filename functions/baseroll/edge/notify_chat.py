"""The optional `notify_chat` subscriber: each rollout event on `baseroll-events` posted to a Google Chat space.

Off unless deployed (Terraform `chat_webhook_secret`). The incoming-webhook URL comes from the
environment (`CHAT_WEBHOOK_URL`, a Secret Manager secret in production); it is a credential, so it
is never logged. One rollout's events go into one Chat thread (its id is the thread key). What Google
documents and this relies on (docs/EVENTS.md#google-chat): a webhook takes `{"text", "thread":
{"threadKey"}}`, `messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` replies in that thread, a
space takes 60 writes a minute and answers 429 beyond that, to be retried with exponential backoff.

Failures: a malformed event, a missing or non-https URL and a 4xx other than 408/429 are permanent
(logged, acknowledged, nothing posted); a 408, 429, 5xx or a connection failure is retried here a few
times, then raised so Pub/Sub redelivers the event later.
"""
from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from baseroll import log
from baseroll.clock import SYSTEM, Clock
from baseroll.contracts import events
from baseroll.contracts.parsing import EventError
from baseroll.edge import envelope

WEBHOOK_ENV = "CHAT_WEBHOOK_URL"
KINDS_ENV = "CHAT_EVENT_KINDS"  # comma-separated kinds to post; unset or empty: every kind
ATTEMPTS = 4
BACKOFF_S = (1.0, 4.0, 16.0)  # between attempts: 21 s at most, well inside the function's timeout
TIMEOUT_S = 10.0
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
SEEN_MAX = 2048  # event ids this instance posted or is posting: a redelivered duplicate is dropped

_seen: OrderedDict[str, None] = OrderedDict()
_seen_lock = threading.Lock()


class ChatUnavailable(RuntimeError):
    """Chat did not take the message after ATTEMPTS tries: raised so Pub/Sub redelivers the event."""


def chat_message(event: events.RolloutEvent) -> dict[str, Any]:
    """The webhook body: the event's one-line summary, in the rollout's thread."""
    return {"text": events.summary(event), "thread": {"threadKey": event.rollout_id}}


def webhook_url(env: Mapping[str, str]) -> str:
    """The configured URL with the reply option set; ValueError (without the URL) when it is unusable.
    https only, except plain http to a loopback address (the tests' receiver)."""
    url = env.get(WEBHOOK_ENV, "").strip()
    if not url:
        raise ValueError(f"{WEBHOOK_ENV} is not set")
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(parts.hostname or "")):
        raise ValueError(f"{WEBHOOK_ENV} must be an https URL (got scheme {parts.scheme!r})")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("messageReplyOption", "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")
    return urlunsplit(parts._replace(query=urlencode(query)))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def wanted(event: events.RolloutEvent, env: Mapping[str, str]) -> bool:
    kinds = {k.strip() for k in env.get(KINDS_ENV, "").split(",") if k.strip()}
    return not kinds or event.kind in kinds


def notify(data: Any, event_id: str, env: Mapping[str, str], *, clock: Clock = SYSTEM,
           client: Callable[[], httpx.Client] = lambda: httpx.Client(timeout=TIMEOUT_S)) -> dict[str, Any]:
    """Post the event in `data` (an Eventarc Pub/Sub envelope) to the Chat webhook."""
    try:
        event = events.decode(envelope.pubsub_message(data))
        url = webhook_url(env)
    except (EventError, ValueError) as exc:
        log.warning("chat.rejected", event_id=event_id, reason=str(exc))
        return {"status": "rejected", "reason": str(exc)}
    if not wanted(event, env) or not _claim(event.event_id):
        log.info("chat.skipped", event_id=event.event_id, kind=event.kind,
                 reason="duplicate" if wanted(event, env) else f"kind not in {KINDS_ENV}")
        return {"status": "skipped"}
    try:
        with client() as http:
            status = _post(http, url, chat_message(event), clock, event.event_id)
    except Exception:
        _forget(event.event_id)  # not posted: its redelivery must post it
        raise
    if status >= 400:
        log.error("chat.refused", event_id=event.event_id, kind=event.kind, http_status=status)
        return {"status": "refused", "http_status": status}
    log.info("chat.posted", event_id=event.event_id, kind=event.kind, rollout_id=event.rollout_id)
    return {"status": "posted"}


def _post(http: httpx.Client, url: str, body: dict[str, Any], clock: Clock, event_id: str) -> int:
    """The final HTTP status; a retryable failure on every attempt raises ChatUnavailable."""
    why = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            clock.sleep(BACKOFF_S[attempt - 1])
        try:
            status = http.post(url, json=body).status_code
        except httpx.TransportError as exc:
            why = type(exc).__name__
        else:
            if status not in RETRYABLE:
                return status
            why = f"HTTP {status}"
        log.warning("chat.retry", event_id=event_id, attempt=attempt + 1, reason=why)
    raise ChatUnavailable(f"Chat webhook failed {ATTEMPTS} times, last: {why}")


def _claim(event_id: str) -> bool:
    """True for the first delivery of `event_id` to this instance (concurrent ones included)."""
    with _seen_lock:
        if event_id in _seen:
            return False
        _seen[event_id] = None
        while len(_seen) > SEEN_MAX:
            _seen.popitem(last=False)
        return True


def _forget(event_id: str) -> None:
    with _seen_lock:
        _seen.pop(event_id, None)

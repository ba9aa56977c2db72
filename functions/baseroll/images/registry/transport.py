"""HTTP transport for the registry client: one ``httpx.Client``, retries, redirects, size caps.

Everything here is about bytes on the wire, never about what they mean: which host may be reached
and over which scheme, retrying 408/429/5xx and dropped connections with backoff (honouring
Retry-After), following redirects by hand so Authorization never leaves the registry and a redirect
goes only where ``hosts.HostPolicy`` lets it, reading bodies under a cap, a wall-clock deadline per
registry call checked while reading, and draining small bodies so connections return to the pool
(docs/OCI.md#distribution-api).
"""
from __future__ import annotations

import ipaddress
import json
import random
import ssl
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Callable, Iterable, Iterator

import httpx

from baseroll.images.registry.hosts import HostPolicy

USER_AGENT = "baseroll/0.1"
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 * 1024
MAX_DRAIN = 64 * 1024  # an unread body up to this is read so its connection can be reused
CHUNK = 1024 * 1024
MAX_FETCHED_RECORDED = 1024  # blobs_fetched keeps the latest digests only: the client lives as long as the process
DEFAULT_DEADLINE = 60.0  # seconds per registry call, retries, redirects, token fetch and body included
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
Body = bytes | Iterator[bytes] | None
_CALL = threading.local()  # the deadline of the registry call running on this thread


class RegistryError(Exception):
    """A registry call failed; ``code`` is the registry's error code when it sent one."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class RegistryStats:
    """Counters for what the client did; tests assert on them (e.g. no layer was downloaded)."""

    requests: int = 0
    retries: int = 0
    manifest_gets: int = 0
    manifest_cache_hits: int = 0
    manifest_heads: int = 0
    manifest_puts: int = 0
    blob_gets: int = 0  # every blob body read, including the streamed fallback copies
    bytes_downloaded: int = 0  # blob bytes only
    bytes_uploaded: int = 0  # blob bytes only
    mounts: int = 0  # 201 cross-repository mounts
    mount_fallbacks: int = 0  # mounts that became a copy
    uploads: int = 0  # blobs uploaded (put_blob and fallback copies)
    # digests whose bytes were read, the latest MAX_FETCHED_RECORDED of them
    blobs_fetched: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_FETCHED_RECORDED))


class Deadline:
    """When one registry call must be over; checked before each request, each backoff and each chunk read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str) -> None:
        if self.remaining() <= 0:
            raise RegistryError(f"{what}: no answer within the {self.seconds:g}s deadline", code=DEADLINE_EXCEEDED)


def current_deadline() -> Deadline | None:
    return getattr(_CALL, "deadline", None)


class Transport:
    """Sends requests to registries; the client above it decides what to send and what it means.

    ``stats`` and ``plain_http_hosts`` may be replaced while in use (tests reset the counters).
    """

    def __init__(self, *, plain_http_hosts: Iterable[str], allowed_hosts: Iterable[str] | None, retries: int,
                 backoff: float, max_backoff: float, timeout: float, transport: httpx.BaseTransport | None,
                 sleep: Callable[[float], None], policy: HostPolicy | None = None,
                 deadline: float = DEFAULT_DEADLINE) -> None:
        self.policy = policy or HostPolicy()
        self.deadline = deadline
        self.timeout = timeout
        self.plain_http_hosts = frozenset(h.lower() for h in plain_http_hosts)
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = RegistryStats()
        self.lock = threading.Lock()
        self._sleep = sleep
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            follow_redirects=False,  # manual: Authorization must not follow to storage hosts
            # identity: a compressed body could expand past our caps inside a single chunk.
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    @contextmanager
    def call(self) -> Iterator[Deadline]:
        """The deadline of the registry call in progress on this thread, or a new one (nested calls share it)."""
        current = current_deadline()
        if current is not None:
            yield current
            return
        _CALL.deadline = Deadline(self.deadline)
        try:
            yield _CALL.deadline
        finally:
            _CALL.deadline = None

    def _timeout(self) -> httpx.Timeout:
        """Socket timeouts that never wait past the current call's deadline."""
        left = self.deadline if (d := current_deadline()) is None else max(d.remaining(), 0.001)
        return httpx.Timeout(min(self.timeout, left), connect=min(10.0, left))

    # ------------------------------------------------------------ hosts and schemes

    def check_host(self, host: str) -> None:
        if self.allowed_hosts is not None and host.lower() not in self.allowed_hosts:
            raise RegistryError(f"registry host {host!r} is not allowed", code="DENIED")

    def plain_http(self, host: str) -> bool:
        """Plain HTTP for listed hosts and, as crane and docker do, for loopback registries."""
        return host.lower() in self.plain_http_hosts or is_loopback(host)

    def may_use_http(self, netloc: str, registry: str) -> bool:
        """May a URL the registry handed us (a Location, a token realm) be plain http?

        A listed host, or loopback named by a loopback registry: a remote registry never gets to
        send us to a plain-http service on this machine.
        """
        netloc = netloc.lower()
        return netloc in self.plain_http_hosts or (is_loopback(netloc) and is_loopback(registry))

    def base(self, host: str) -> str:
        return f"{'http' if self.plain_http(host) else 'https'}://{host}"

    def absolute(self, registry: str, path_or_url: str) -> str:
        if path_or_url.startswith("/"):
            return self.base(registry) + path_or_url
        url = httpx.URL(path_or_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise RegistryError(f"{registry}: unusable location returned by the registry")
        if url.scheme == "http" and not self.may_use_http(url.netloc.decode(), registry):
            raise RegistryError(f"{registry}: registry pointed at a plain-http location", code="DENIED")
        refused = self.policy.refusal(url.netloc.decode(), registry, "storage")
        if refused:  # an upload Location goes only to the registry or its storage hosts
            raise RegistryError(f"{registry}: refused location returned by the registry: {refused}", code="DENIED")
        return path_or_url

    # ------------------------------------------------------------ sending

    def with_retries(self, call: Callable[[], httpx.Response], what: str, replayable: bool) -> httpx.Response:
        """Retry 408/429/5xx and connection errors with exponential backoff + jitter (Retry-After honoured)."""
        attempts = self.retries + 1 if replayable else 1
        for attempt in range(attempts):
            if (deadline := current_deadline()) is not None:
                deadline.check(what)
            try:
                resp = call()
            except httpx.TransportError as e:
                if attempt + 1 >= attempts:
                    raise RegistryError(f"{what}: {type(e).__name__} after {attempt + 1} attempt(s){_hint(e)}") from e
                self.pause(attempt, None, what)
                continue
            if resp.status_code in RETRYABLE and attempt + 1 < attempts:
                discard(resp)
                self.pause(attempt, resp, what)
                continue
            return resp
        raise AssertionError("unreachable")

    def exchange(self, method: str, url: httpx.URL, headers: dict[str, str], content: Body,
                 registry: str) -> httpx.Response:
        """Send for ``registry``, following redirects by hand: only to the registry or its storage hosts
        (``HostPolicy``), and Authorization never goes to another host."""
        origin = url.netloc
        for _ in range(MAX_REDIRECTS + 1):
            req = self._http.build_request(method, url, headers=headers, content=content, timeout=self._timeout())
            resp = self._http.send(req, stream=True)
            with self.lock:
                self.stats.requests += 1
            if resp.status_code not in REDIRECTS or "location" not in resp.headers:
                return resp
            discard(resp)
            target = url.join(resp.headers["location"])
            if target.scheme not in ("http", "https"):
                raise RegistryError(f"{method} redirected to a refused location", status=resp.status_code)
            refused = self.policy.refusal(target.netloc.decode(), registry, "storage")
            if refused:
                raise RegistryError(f"{method} redirected to a refused location: {refused}", status=resp.status_code,
                                    code="DENIED")
            if target.scheme == "http" and url.scheme == "https":
                raise RegistryError(f"{method} redirected from https to http", status=resp.status_code)
            if target.netloc != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if resp.status_code == 303 and method not in ("GET", "HEAD"):
                method, content = "GET", None
            url = target
        raise RegistryError(f"{method}: more than {MAX_REDIRECTS} redirects")

    def pause(self, attempt: int, resp: httpx.Response | None, what: str = "registry call") -> None:
        """Sleep before retry ``attempt`` + 1: exponential, jittered, at least what Retry-After asks;
        give up at once when the call's deadline would pass while sleeping."""
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: spread retries of parallel callers
        if resp is not None:
            after = _retry_after(resp.headers.get("retry-after"))
            if after is not None:
                delay = min(self.max_backoff, max(delay, after))
        deadline = current_deadline()
        if deadline is not None and delay >= deadline.remaining():
            raise RegistryError(f"{what}: the {deadline.seconds:g}s deadline leaves no time to retry",
                                code=DEADLINE_EXCEEDED)
        with self.lock:
            self.stats.retries += 1
        self._sleep(delay)


# ---------------------------------------------------------------- responses


def error_from(resp: httpx.Response, what: str) -> RegistryError:
    """RegistryError from an error response: status plus the registry's first error code and message."""
    code, message = None, ""
    if resp.request.method != "HEAD":
        try:
            body = json.loads(read_capped(resp, MAX_ERROR_BODY, what))
            err = (body.get("errors") or [{}])[0]
            code = err.get("code") if isinstance(err.get("code"), str) else None
            message = err.get("message") if isinstance(err.get("message"), str) else ""
        except (RegistryError, httpx.HTTPError, ValueError, AttributeError, IndexError, TypeError):
            pass
    if code is None:
        code = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND", 429: "TOOMANYREQUESTS"}.get(resp.status_code)
    text = f"{what}: HTTP {resp.status_code}"
    if code:
        text += f" {code}"
    if message:
        text += f": {message[:300]}"
    return RegistryError(text, status=resp.status_code, code=code)


def content_length(resp: httpx.Response) -> int | None:
    if resp.headers.get("content-encoding", "identity") != "identity":
        return None  # the length is of the encoded body, not of the blob
    try:
        return int(resp.headers["content-length"])
    except (KeyError, ValueError):
        return None


def discard(resp: httpx.Response) -> None:
    """Close a response we do not need, reading a small body to its end first.

    httpcore puts a connection back in the pool only when its response was read to the end; closing
    one unread (any HEAD, a 201 or 202 with an empty body) drops the connection, and the next request
    pays a new connect. A large unread body is not worth reading: that connection is dropped.
    """
    deadline = current_deadline()
    try:
        if not resp.is_stream_consumed:
            read = 0
            for chunk in resp.iter_raw():
                read += len(chunk)
                if read > MAX_DRAIN or (deadline is not None and deadline.remaining() <= 0):
                    break
    except (httpx.HTTPError, httpx.StreamError):
        pass  # the connection is dropped, which is all a failed read can cost
    finally:
        resp.close()


@contextmanager
def released(resp: httpx.Response) -> Iterator[httpx.Response]:
    """``with released(resp):`` → ``discard(resp)`` on the way out, whatever was read."""
    try:
        yield resp
    finally:
        discard(resp)


def read_capped(resp: httpx.Response, cap: int, what: str) -> bytes:
    """Read a streamed body, refusing before parsing anything when it exceeds ``cap`` and stopping
    when the current call's deadline passes (checked after every chunk the network hands over)."""
    length = content_length(resp)
    if length is not None and length > cap:
        raise RegistryError(f"{what}: {length} bytes exceeds the {cap}-byte limit", code="SIZE_INVALID")
    deadline = current_deadline()
    buf = bytearray()
    for chunk in resp.iter_bytes():  # as they arrive: a fixed chunk size would wait for it to fill
        if deadline is not None:
            deadline.check(what)
        buf += chunk
        if len(buf) > cap:
            raise RegistryError(f"{what}: body exceeds the {cap}-byte limit", code="SIZE_INVALID")
    return bytes(buf)


# ---------------------------------------------------------------- small helpers


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1, with or without a port (``[::1]:5000``, ``127.0.0.1:5000``)."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hint(e: httpx.TransportError) -> str:
    """What to try after a connection failure, appended to the error message."""
    if not isinstance(e, httpx.ConnectError):
        return ""
    try:
        url = e.request.url
    except RuntimeError:  # raised without its request: nothing to name
        return ""
    host = url.netloc.decode()
    if url.scheme == "https" and _is_tls_error(e):
        return (f": TLS handshake with {host} failed; if {host} serves plain HTTP, pass --plain-http {host} "
                "or list it under plain_http_registries")
    return f": could not connect to {host}; is a registry running at {host}?"


def _is_tls_error(e: BaseException) -> bool:
    seen: BaseException | None = e
    for _ in range(8):  # httpx wraps httpcore's error, which wraps the ssl one
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(e) or "TLS" in str(e)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


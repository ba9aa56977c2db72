"""Simulated users of a fleet: threads sending GET to every service URL while a rollout runs, bounded in
time and in count, tallying who answered (the revision named in each response) and with what status.

    with SimulatedUsers(urls, token_for, revision_header) as users:
        ...  # the rollout
    users.tally.from_revisions(failing)  # how many user requests a failing revision answered
"""
from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

TOKEN_LIFETIME_S = 3600  # as a Google ID token's


@functools.cache
def id_token_minter(subject: str = "demo-user@example.com") -> Callable[[str], str]:
    """ID tokens as a signed-in user's client holds them (RS256 JWT, `aud` the service URL, an hour
    long), signed by a throwaway key (one per subject and process): the stand-in's proxy checks the
    audience and expiry only."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    signer = crypt.RSASigner.from_string(pem, key_id="simulated-users")

    def mint(audience: str) -> str:
        now = int(time.time())
        claims = {"iss": "https://accounts.google.com", "sub": subject, "email": subject, "aud": audience,
                  "iat": now, "exp": now + TOKEN_LIFETIME_S}
        return jwt.encode(signer, claims).decode()

    return mint


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)  # HTTP status → count; 0 for no answer (connection error)
    by_revision: Counter = field(default_factory=Counter)  # revision that answered → count
    first_error: str = ""  # the first 5xx or connection error, for the summary

    def from_revisions(self, revisions: set[str]) -> int:
        """How many requests one of `revisions` answered."""
        return sum(n for rev, n in self.by_revision.items() if rev in revisions)

    @property
    def server_errors(self) -> int:
        """Answers a user would call broken: 5xx or none at all."""
        return sum(n for status, n in self.statuses.items() if status >= 500 or status == 0)


class SimulatedUsers:
    """`threads` users cycling over `urls` (service name → URL) with an ID token for each URL (`token_for`),
    until stopped, `max_seconds` passed or `max_requests` were sent, whichever comes first."""

    def __init__(self, urls: dict[str, str], token_for: Callable[[str], str], revision_header: str, *,
                 threads: int = 4, max_requests: int = 20_000, max_seconds: float = 180.0,
                 pause_s: float = 0.01, timeout_s: float = 10.0) -> None:
        if not urls:
            raise ValueError("no service URL to send users to")
        self.urls, self.revision_header = dict(urls), revision_header
        self.tokens = {url: token_for(url) for url in self.urls.values()}  # an ID token's audience is the URL
        self.threads, self.max_requests, self.max_seconds = threads, max_requests, max_seconds
        self.pause_s, self.timeout_s = pause_s, timeout_s
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._next = itertools.cycle(list(self.urls.values()))

    def start(self) -> "SimulatedUsers":
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.threads):
            t = threading.Thread(target=self._user, args=(deadline,), name=f"user-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> Tally:
        self._stop.set()
        return self.join()

    def join(self) -> Tally:
        """Wait until every user has stopped (stopped, or out of time or requests); the tally."""
        for t in self._workers:
            t.join(timeout=self.max_seconds + self.timeout_s + 5)
        return self.tally

    def __enter__(self) -> "SimulatedUsers":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self, deadline: float) -> str | None:
        """The next URL to hit, or None once stopped, out of time or out of requests."""
        with self._lock:
            if self._stop.is_set() or time.monotonic() >= deadline or self.tally.sent >= self.max_requests:
                return None
            self.tally.sent += 1
            return next(self._next)

    def _user(self, deadline: float) -> None:
        with httpx.Client(timeout=self.timeout_s) as http:
            while (url := self._take(deadline)) is not None:
                try:
                    r = http.get(url, headers={"Authorization": f"Bearer {self.tokens[url]}"})
                    status, revision, error = r.status_code, r.headers.get(self.revision_header, ""), r.text[:120]
                except httpx.HTTPError as e:
                    status, revision, error = 0, "", f"{type(e).__name__}: {e}"
                self._record(url, status, revision, error)
                self._stop.wait(self.pause_s)

    def _record(self, url: str, status: int, revision: str, error: str) -> None:
        with self._lock:
            self.tally.statuses[status] += 1
            if revision:
                self.tally.by_revision[revision] += 1
            if (status >= 500 or status == 0) and not self.tally.first_error:
                self.tally.first_error = f"{url}: {status} {error.strip()}"

"""Registry authentication: the ``WWW-Authenticate`` challenge, credential sources, a token cache.

A registry says how to authenticate in its 401 challenge: Basic (send credentials each time) or
Bearer (trade them at the realm for a token scoped to ``repository:NAME:pull[,push]``)
(docs/OCI.md#authentication). Credentials come from a ``TokenSource``; nothing credential-like
reaches a message or a log. A realm is asked only when it is the registry itself, or one of the
registry's token hosts that is also allow-listed (``hosts.HostPolicy``).
"""
from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from baseroll.images.registry.hosts import normal_netloc
from baseroll.images.registry.transport import (
    RegistryError,
    Transport,
    read_capped,
    released,
)

GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
MAX_TOKEN_BODY = 1024 * 1024
_GOOGLE_HOST = re.compile(r"^(?:[a-z0-9-]+\.)?gcr\.io$|^[a-z0-9-]+-docker\.pkg\.dev$|^docker\.pkg\.dev$")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


# ---------------------------------------------------------------- credentials


class TokenSource(Protocol):
    """Gives (username, password) for a registry host, or None for anonymous access."""

    def basic_auth(self, registry: str) -> tuple[str, str] | None: ...


class StaticCredentials:
    """Fixed credentials per registry host, then an optional fallback source."""

    def __init__(self, by_host: dict[str, tuple[str, str]], fallback: TokenSource | None = None) -> None:
        self._by_host = {h.lower(): c for h, c in by_host.items()}
        self._fallback = fallback

    def basic_auth(self, registry: str) -> tuple[str, str] | None:
        found = self._by_host.get(registry.lower())
        if found is None and self._fallback is not None:
            return self._fallback.basic_auth(registry)
        return found

    def __repr__(self) -> str:  # never show the passwords
        return f"StaticCredentials(hosts={sorted(self._by_host)})"


class GoogleTokenSource:
    """Google access tokens (user ``oauth2accesstoken``) for gcr.io and ``*-docker.pkg.dev`` only
    (docs/GOOGLE_APIS.md#artifact-registry).

    google-auth is imported and Application Default Credentials are loaded on first use, never at
    import, so tests and non-Google registries never touch the metadata server.
    """

    def __init__(self, scopes: tuple[str, ...] = (GOOGLE_SCOPE,)) -> None:
        self._scopes = scopes
        self._creds: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def handles(registry: str) -> bool:
        return bool(_GOOGLE_HOST.fullmatch(registry.lower().split(":", 1)[0]))

    def basic_auth(self, registry: str) -> tuple[str, str] | None:
        if not self.handles(registry):
            return None
        import google.auth  # lazy: see the class docstring
        import google.auth.exceptions
        import google.auth.transport.requests

        with self._lock:
            try:
                if self._creds is None:
                    self._creds, _ = google.auth.default(scopes=list(self._scopes))
                if not self._creds.valid:
                    self._creds.refresh(google.auth.transport.requests.Request())
            except google.auth.exceptions.GoogleAuthError as e:
                raise RegistryError(f"no Google credentials for {registry}: {type(e).__name__}", code="UNAUTHORIZED") from None
            return "oauth2accesstoken", self._creds.token


# ---------------------------------------------------------------- challenges and scopes


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" | "basic"
    realm: str = ""
    service: str | None = None
    scopes: tuple[str, ...] = ()
    error: str | None = None


def parse_challenge(header: str | None) -> Challenge | None:
    """``Bearer realm="..",service="..",scope="a b"`` → Challenge (scope split on spaces)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _CHALLENGE_PARAM.finditer(rest)}
    scheme = scheme.lower()
    if scheme == "basic":
        return Challenge("basic")
    if scheme != "bearer" or not params.get("realm"):
        return None
    return Challenge(
        "bearer",
        realm=params["realm"],
        service=params.get("service"),
        scopes=tuple(params.get("scope", "").split()),
        error=params.get("error"),
    )


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def basic_header(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


# ---------------------------------------------------------------- the authenticator


class Authenticator:
    """How each host authenticates (learnt from its first challenge) and the tokens it gave, per scope set."""

    def __init__(self, transport: Transport, credentials: TokenSource) -> None:
        self._transport = transport
        self.credentials = credentials
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def knows(self, host: str) -> bool:
        return host in self._challenges

    def learn(self, host: str, challenge: Challenge) -> None:
        """Remember how this host authenticates, not the scope of the one request that was challenged."""
        with self._lock:
            self._challenges[host] = Challenge(challenge.scheme, challenge.realm, challenge.service)

    def authorization(self, host: str, scopes: tuple[str, ...], force: bool,
                      base_scopes: tuple[str, ...] = ()) -> str | None:
        """The Authorization header for ``scopes`` on ``host``; None before its first challenge.

        ``force`` asks the realm again (the cached token was refused); ``base_scopes`` are the
        request's own scopes, which a token with extra scopes also serves next time.
        """
        challenge = self._challenges.get(host)
        if challenge is None:
            return None  # first contact is anonymous; the 401 tells us how to authenticate
        if challenge.scheme == "basic":
            creds = self.credentials.basic_auth(host)
            return basic_header(creds) if creds else None
        wanted = tuple(sorted(set(scopes)))
        key = (host, wanted)
        with self._lock:
            cached = self._tokens.get(key)
        if cached and not force and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        token, ttl = self._fetch_token(host, challenge, wanted, self.credentials.basic_auth(host))
        entry = (token, time.monotonic() + max(ttl - 10, 1))
        with self._lock:
            self._tokens[key] = entry
            if base_scopes:
                self._tokens[(host, tuple(sorted(set(base_scopes))))] = entry
        return f"Bearer {token}"

    def _fetch_token(self, host: str, challenge: Challenge, scopes: tuple[str, ...],
                     creds: tuple[str, str] | None) -> tuple[str, float]:
        realm = httpx.URL(challenge.realm)
        self._check_realm(host, realm)
        plain_ok = realm.scheme == "http" and self._transport.may_use_http(realm.netloc.decode(), host)
        if realm.scheme != "https" and not plain_ok:
            raise RegistryError(f"{host}: token realm is not https", code="DENIED")
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", s) for s in scopes)  # repeated, one per scope
        headers = {"Authorization": basic_header(creds)} if creds else {}
        what = f"token for {host}"
        t = self._transport
        resp = t.with_retries(lambda: t.exchange("GET", realm.copy_merge_params(params), headers, None, host), what, True)
        with released(resp):
            if resp.status_code != 200:
                raise RegistryError(f"{what}: HTTP {resp.status_code}", status=resp.status_code, code="UNAUTHORIZED")
            try:
                body = json.loads(read_capped(resp, MAX_TOKEN_BODY, what))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RegistryError(f"{what}: response is not JSON", code="UNAUTHORIZED") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: no token in response", code="UNAUTHORIZED")
        ttl = body.get("expires_in")
        return token, float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else 60.0

    def _check_realm(self, host: str, realm: httpx.URL) -> None:
        """The realm gets the credentials: the registry itself, or a token host of it that is allow-listed."""
        netloc = realm.netloc.decode()
        refused = self._transport.policy.refusal(netloc, host, "realm") if realm.host else "no host"
        if refused is None and normal_netloc(netloc) != normal_netloc(host):
            try:
                self._transport.check_host(netloc)
            except RegistryError:
                refused = f"{netloc} is not an allowed registry host"
        if refused:
            raise RegistryError(f"{host}: refused token realm: {refused}", code="DENIED")

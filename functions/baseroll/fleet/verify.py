"""The verification port's real adapter: httpx for the requests, google-auth for the ID tokens.

Cloud Run lets a request through to a private service when it carries `Authorization: Bearer` with
a Google-signed ID token whose audience is the service's URL and whose identity holds
roles/run.invoker (docs/GOOGLE_APIS.md#verify-at-zero-traffic). The token comes from google-auth as
documented: a service-account key named by GOOGLE_APPLICATION_CREDENTIALS, else the metadata server
of the function's runtime (the worker's own service account).
"""
from __future__ import annotations

import threading
from typing import Callable, Protocol

import google.auth.transport.requests
import httpx
from google.auth import exceptions as gauth_exceptions
from google.oauth2 import id_token

from baseroll.fleet.verification import MAX_BODY, Reply

MAX_AUDIENCES = 256  # tokens kept, one per service URL; a rollout touches each service once


class IdTokens(Protocol):
    def token(self, audience: str) -> str: ...


class GoogleIdTokens:
    """ID tokens from google-auth (`fetch_id_token_credentials`), one set of credentials per
    audience, refreshed by google-auth when it expires (an hour for a Google ID token)."""

    def __init__(self, fetch: Callable[..., object] = id_token.fetch_id_token_credentials) -> None:
        self._fetch = fetch
        self._request = google.auth.transport.requests.Request()
        self._credentials: dict[str, object] = {}
        self._lock = threading.Lock()

    def token(self, audience: str) -> str:
        with self._lock:
            creds = self._credentials.get(audience)
            if creds is None:
                if len(self._credentials) >= MAX_AUDIENCES:
                    self._credentials.clear()
                creds = self._credentials[audience] = self._fetch(audience, request=self._request)
            if not creds.valid:  # type: ignore[attr-defined]
                creds.refresh(self._request)  # type: ignore[attr-defined]
            return str(creds.token)  # type: ignore[attr-defined]


class HttpProber:
    """Sends one verification request; the far side's failures become a Reply, never an exception."""

    def __init__(self, tokens: IdTokens, client: httpx.Client | None = None) -> None:
        self._tokens = tokens
        # No redirects (a 3xx is the answer), no proxy from the environment between us and the URL.
        self._client = client or httpx.Client(follow_redirects=False, trust_env=False)

    def send(self, method: str, url: str, *, audience: str, timeout_s: float) -> Reply:
        try:
            token = self._tokens.token(audience)
        except gauth_exceptions.GoogleAuthError as exc:
            return Reply(None, error=f"no ID token for {audience}: {exc}")
        try:
            with self._client.stream(method, url, headers={"Authorization": f"Bearer {token}"},
                                     timeout=timeout_s) as response:
                return Reply(response.status_code, _head(response))
        except httpx.TimeoutException:
            return Reply(None, error=f"timed out after {timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Reply(None, error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._client.close()


def _head(response: httpx.Response) -> bytes:
    """The first MAX_BODY bytes of the body, without reading the rest."""
    out = b""
    for chunk in response.iter_bytes():
        out += chunk
        if len(out) >= MAX_BODY:
            break
    return out[:MAX_BODY]

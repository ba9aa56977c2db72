"""httpx auth for the local registry's token flow, for the local tools that read the registry without
baseroll's client: the Cloud Run stand-in's image checks (Cloud Run pulls with its service agent's
credentials). On a 401 with a Bearer challenge, trade Basic credentials at the realm for a token
scoped as the challenge asks, and send the request again (docs/OCI.md#authentication).

Only for the local stack: the realm is trusted as the registry names it, since both are ours.
"""
from __future__ import annotations

import base64
import threading
from typing import Generator

import httpx
from baseroll.images.registry.auth import parse_challenge


class BearerAuth(httpx.Auth):
    def __init__(self, username: str, password: str) -> None:
        self._basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self._tokens: dict[str, str] = {}  # per scope asked; the registry's 401 says when one expired
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        scope = request.url.path.split("/manifests/")[0].split("/blobs/")[0]
        with self._lock:
            token = self._tokens.get(scope)
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        challenge = parse_challenge(response.headers.get("www-authenticate"))
        if response.status_code != 401 or challenge is None or challenge.scheme != "bearer":
            return
        params = [("service", challenge.service or ""), *(("scope", s) for s in challenge.scopes)]
        answer = yield httpx.Request("GET", httpx.URL(challenge.realm, params=params),
                                     headers={"Authorization": self._basic})
        answer.read()
        if answer.status_code != 200:
            return
        token = answer.json().get("token", "")
        with self._lock:
            self._tokens[scope] = token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

"""One authorised registry call: the transport sends it, the authenticator answers the challenges.

Each call runs under one deadline (``Transport.call``). A challenge counts only when the registry
itself sent it: a 401 from a redirect target or an upload ``Location`` on another host never decides
where credentials go (docs/OCI.md#authentication).
"""
from __future__ import annotations

import httpx

from baseroll import log
from baseroll.images.refs import ImageRef
from baseroll.images.registry.auth import Authenticator, parse_challenge
from baseroll.images.registry.hosts import normal_netloc
from baseroll.images.registry.transport import (
    Body,
    RegistryError,
    Transport,
    discard,
    error_from,
    read_capped,
    released,
)


class Session:
    """Calls on behalf of the client: anonymous first, then as each host's challenge asks."""

    def __init__(self, transport: Transport, auth: Authenticator) -> None:
        self._net = transport
        self._auth = auth

    def fetch(self, method: str, ref: ImageRef, path_or_url: str, *, scopes: tuple[str, ...], cap: int, what: str,
              headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
              content: Body = None, ok: tuple[int, ...] = (200,),
              replayable: bool = True) -> tuple[httpx.Response, bytes]:
        """A request whose body is read whole (at most ``cap`` bytes); non-``ok`` statuses raise.

        Connection drops while reading the body are retried like failed requests.
        """
        with self._net.call():
            return self._fetch(method, ref, path_or_url, scopes=scopes, cap=cap, what=what, headers=headers,
                               params=params, content=content, ok=ok, replayable=replayable)

    def _fetch(self, method: str, ref: ImageRef, path_or_url: str, *, scopes: tuple[str, ...], cap: int, what: str,
               headers: dict[str, str] | None, params: dict[str, str] | None, content: Body, ok: tuple[int, ...],
               replayable: bool) -> tuple[httpx.Response, bytes]:
        for attempt in range(self._net.retries + 1):
            resp = self.request(method, ref, path_or_url, scopes=scopes, headers=headers, params=params,
                                content=content, what=what, replayable=replayable)
            with released(resp):
                if resp.status_code not in ok:
                    raise error_from(resp, what)
                try:
                    return resp, read_capped(resp, cap, what)
                except httpx.TransportError as e:
                    if not replayable or attempt >= self._net.retries:
                        raise RegistryError(f"{what}: {type(e).__name__} while reading") from e
            self._net.pause(attempt, None, what)
        raise AssertionError("unreachable")

    def request(self, method: str, ref: ImageRef, path_or_url: str, *, scopes: tuple[str, ...], what: str,
                headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
                content: Body = None, replayable: bool = True) -> httpx.Response:
        """One authorised call (open, streaming response): auth challenge, retries, manual redirects."""
        with self._net.call():
            return self._request(method, ref, path_or_url, scopes=scopes, what=what, headers=headers, params=params,
                                 content=content, replayable=replayable)

    def _request(self, method: str, ref: ImageRef, path_or_url: str, *, scopes: tuple[str, ...], what: str,
                 headers: dict[str, str] | None, params: dict[str, str] | None, content: Body,
                 replayable: bool) -> httpx.Response:
        host = ref.registry
        self._net.check_host(host)
        url = httpx.URL(self._net.absolute(host, path_or_url))
        if params:
            url = url.copy_merge_params(params)
        same_host = url.netloc.decode().lower() == host.lower()

        def send(extra: tuple[str, ...], force: bool) -> httpx.Response:
            h = dict(headers or {})
            auth = self._auth.authorization(host, scopes + extra, force, scopes if extra else ()) if same_host else None
            if auth:
                h["Authorization"] = auth
            return self._net.with_retries(lambda: self._net.exchange(method, url, h, content, host), what, replayable)

        # A first call to a host goes anonymous and may meet two challenges: how to authenticate, then
        # (a mount, say) which scope the token lacks. Otherwise one challenge is all a retry can answer.
        rounds = 2 if same_host and not self._auth.knows(host) else 1
        resp = send((), False)
        extra: tuple[str, ...] = ()
        for round_ in range(rounds):
            if resp.status_code != 401 or not replayable:
                return resp
            if normal_netloc(resp.url.netloc.decode()) != normal_netloc(host):
                log.warning("registry.challenge_ignored", registry=host, challenger=resp.url.host, what=what)
                return resp  # only the registry itself says how to authenticate to it
            challenge = parse_challenge(resp.headers.get("www-authenticate"))
            if challenge is None or (round_ and challenge.error != "insufficient_scope"):
                return resp  # the caller turns 401 into a RegistryError
            discard(resp)
            self._auth.learn(host, challenge)
            # insufficient_scope: ask again with whatever scopes the registry named (e.g. pull on a mount source).
            extra += tuple(s for s in challenge.scopes if s not in scopes and s not in extra)
            resp = send(extra, True)
        return resp

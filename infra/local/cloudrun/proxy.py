"""The stand-in's loopback front door for invoking services, as Cloud Run's own serving infrastructure:

    service URL  http://127.0.0.1:<port>/s/<project>/<region>/<service>/...       by the traffic split
    tag URL      http://127.0.0.1:<port>/t/<project>/<region>/<service>/<tag>/... the tagged revision

The prefix is stripped before the request is forwarded to the chosen revision's process (running mode);
in the simulated mode a ready revision answers 200 with a body naming it. Unless the service's invoker
check is off, a request needs `Authorization: Bearer <ID token>` whose `aud` is the service's URL (the
token's signature and issuer are not verified: a stand-in). Every answer carries `X-Baseroll-Revision`
naming the revision that served it, a test aid Cloud Run does not send
(docs/GOOGLE_APIS.md#revisions-that-really-run).
"""
from __future__ import annotations

import base64
import binascii
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import httpx
from werkzeug.wrappers import Request, Response

from .clients import ClientPool
from .running import RouteError, Routes
from .serving import ThreadedWsgi

if TYPE_CHECKING:
    from .standin import CloudRunStandin

REVISION_HEADER = "X-Baseroll-Revision"
MAX_REQUEST_BYTES = 32 << 20  # Cloud Run's HTTP/1 request size limit
MAX_RESPONSE_BYTES = 32 << 20
_URL = re.compile(r"^/(?:s/(?P<sp>[^/]+)/(?P<sr>[^/]+)/(?P<ss>[^/]+)|t/(?P<tp>[^/]+)/(?P<tr>[^/]+)/(?P<ts>[^/]+)/(?P<tag>[^/]+))(?P<rest>/.*)?$")
# Headers of one hop only (RFC 9110 section 7.6.1), and those httpx recomputes.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"})


def invoker_check(authorization: str | None, audiences: Iterable[str], path: str, now: float) -> tuple[int, str] | None:
    """Cloud Run's IAM invoker check as a caller sees it: None when let through, else (status, message):
    403 without credentials, 401 for a token that is not an ID token for this service or has expired."""
    if not authorization:
        return 403, f"Error: Forbidden. Your client does not have permission to get URL {path} from this server."
    unauthorized = 401, f"Error: Unauthorized. Your client does not have permission to the requested URL {path}."
    scheme, _, token = authorization.partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return unauthorized
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return unauthorized
    if not isinstance(claims, dict):
        return unauthorized
    aud = claims.get("aud")
    if not (set(aud) if isinstance(aud, list) else {aud}) & set(audiences):
        return unauthorized
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp < now:
        return unauthorized
    return None


def _text(status: int, body: str) -> Response:
    return Response(body + "\n", status=status, mimetype="text/plain")


class RevisionProxy:
    """Serves service and tag URLs on loopback for `standin`; `base` is `http://127.0.0.1:<port>`."""

    def __init__(self, standin: CloudRunStandin, host: str, port: int = 0, *, timeout_s: float = 30.0,
                 seed: int | None = None) -> None:
        self.standin = standin
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.served: Counter[str] = Counter()  # revision short name -> requests it answered
        self._served_lock = threading.Lock()
        self._clients: ClientPool | None = None  # a client per forwarding thread (clients.py says why)
        self._served = ThreadedWsgi(self._wsgi, host, port, "cloudrun-proxy")

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        # trust_env=False: a proxy from the environment must not sit between this proxy and a revision.
        self._clients = ClientPool(
            lambda: httpx.Client(timeout=self.timeout_s, trust_env=False, follow_redirects=False), "the proxy")
        self.port = self._served.start()

    def stop(self) -> None:
        self._served.stop()
        if self._clients is not None:
            self._clients.close()
            self._clients = None

    def _wsgi(self, environ: dict, start_response: object) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._handle(request)
        except RouteError as e:
            response = _text(e.status, e.message)
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        m = _URL.match(request.path)
        if m is None:
            raise RouteError(404, f"The requested URL {request.path} was not found on this server.")
        project, region, sid = (m["sp"], m["sr"], m["ss"]) if m["sp"] else (m["tp"], m["tr"], m["ts"])
        routes = self.standin.routes(project, region, sid, m["tag"])
        if not routes.public:
            denied = invoker_check(request.headers.get("Authorization"), routes.audiences, request.path, time.time())
            if denied:
                raise RouteError(*denied)
        short, uid = self._pick(routes)
        port = self.standin.revision_port(uid)
        response = self._forward(request, port, m["rest"] or "/") if port else _text(200, f"revision {short}")
        response.headers[REVISION_HEADER] = short
        with self._served_lock:
            self.served[short] += 1
        return response

    def _pick(self, routes: Routes) -> tuple[str, str]:
        """A revision by weighted choice over the traffic percentages, per request."""
        with self._rng_lock:
            short, uid, _ = self._rng.choices(routes.targets, weights=[t[2] for t in routes.targets])[0]
        return short, uid

    def _forward(self, request: Request, port: int, path: str) -> Response:
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            raise RouteError(413, "Request Entity Too Large")
        clients = self._clients
        assert clients is not None, "proxy not started"
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        query = request.query_string.decode("latin-1")
        url = f"http://{self.host}:{port}{path}" + (f"?{query}" if query else "")
        try:
            with clients.client() as http, http.stream(request.method, url, headers=headers,
                                                       content=request.get_data()) as r:
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise RouteError(502, "Bad Gateway: the container's response is too large.")
        except httpx.TimeoutException:
            raise RouteError(504, "Upstream request timeout") from None
        except httpx.HTTPError as e:
            raise RouteError(503, f"Service Unavailable: the container did not answer ({type(e).__name__}).") from None
        out = [(k, v) for k, v in r.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        return Response(bytes(body), status=r.status_code, headers=out)

"""A registry token server on 127.0.0.1, as Artifact Registry's: the registry answers 401 with a
Bearer realm here; the client trades Basic credentials (a known user and secret) for a short-lived
token scoped to what it asked (docs/OCI.md#authentication, the Docker token protocol).

Tokens are JWTs signed ES256 by a key made at start, with the certificate in the ``x5c`` header;
``RegistryServer(token_server=...)`` makes the real registry trust that certificate. ``issued``
keeps every token handed out, so tests can look for them where they must not be.
"""
from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .hostile_registry import LoopbackServer

SERVICE = "baseroll-local-registry"
ISSUER = "baseroll-local-token-server"
USERNAME = "baseroll"
TOKEN_TTL_S = 60  # short-lived, as a registry token is


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server: TokenServer = self.server.owner  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        if url.path != "/token" or not server.accepts(self.headers.get("authorization", "")):
            server.count("refused")
            self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "credentials required"}]})
            return
        scopes = parse_qs(url.query).get("scope", [])
        self._send(200, {"token": server.issue(scopes), "expires_in": TOKEN_TTL_S})

    def _send(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TokenServer(LoopbackServer):
    """``with TokenServer() as ts: ts.realm, ts.secret, ts.issued``."""

    def __init__(self, secret: str | None = None) -> None:
        super().__init__(_TokenHandler)
        self.username = USERNAME
        self.secret = secret or "local-registry-" + secrets.token_urlsafe(18)
        self.issued: list[str] = []
        self.counts = {"issued": 0, "refused": 0}
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = self._self_signed()

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def write_certificate(self, path: Path) -> Path:
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def accepts(self, authorization: str) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()
        return secrets.compare_digest(authorization.encode(), expected.encode())

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def issue(self, scopes: list[str]) -> str:
        """A JWT granting every action asked for in ``scopes`` (``repository:NAME:pull,push``)."""
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": ISSUER, "sub": self.username, "aud": SERVICE, "exp": now + TOKEN_TTL_S, "nbf": now - 5,
                  "iat": now, "jti": secrets.token_hex(12), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        token = f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        with self._lock:
            self.issued.append(token)
            self.counts["issued"] += 1
        return token

    def _self_signed(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))

"""A registry token server on 127.0.0.1, as Artifact Registry's: the registry answers 401 with a
Bearer realm here; the client trades Basic credentials (a known user and secret) for a short-lived
token scoped to what it asked (docs/OCI.md#authentication, the Docker token protocol).

Tokens are JWTs signed ES256 by a key made at start, with the certificate in the ``x5c`` header;
``RegistryServer(token_server=...)`` makes the real registry trust that certificate. ``issued``
keeps every token handed out, so tests can look for them where they must not be.

It is also the OAuth 2.0 token endpoint of the service accounts it makes (``service_account_key``):
``POST /token`` with the JWT-bearer grant that google-auth's ``IDTokenCredentials`` sends (an
assertion signed RS256 by the account's key, carrying ``target_audience``) answers
``{"id_token": <JWT whose aud is that audience>}``, as Google's endpoint does
(docs/GOOGLE_APIS.md#verify-at-zero-traffic). ``verify_id_token`` checks one such token.
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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID

from .hostile_registry import LoopbackServer

SERVICE = "baseroll-local-registry"
ISSUER = "baseroll-local-token-server"
USERNAME = "baseroll"
TOKEN_TTL_S = 60  # short-lived, as a registry token is
ID_TOKEN_TTL_S = 3600  # an hour, as Google's ID tokens
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_FORM_BYTES = 64 << 10


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwt_parts(token: str) -> tuple[dict, dict, bytes, bytes]:
    """(header, claims, signing input, signature) of a compact JWT; ValueError if it is not one."""
    try:
        head, body, sig = token.split(".")
        header, claims = json.loads(_unb64url(head)), json.loads(_unb64url(body))
        signature = _unb64url(sig)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT: header and claims must be objects")
    return header, claims, f"{head}.{body}".encode(), signature


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

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        """The OAuth 2.0 token endpoint: the JWT-bearer grant for an ID token."""
        server: TokenServer = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("content-length") or 0)
        if urlsplit(self.path).path != "/token" or not 0 < length <= MAX_FORM_BYTES:
            self._send(400, {"error": "invalid_request", "error_description": "POST /token with a form body"})
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        if form.get("grant_type") != [JWT_BEARER] or len(form.get("assertion", [])) != 1:
            self._send(400, {"error": "unsupported_grant_type", "error_description": f"only {JWT_BEARER}"})
            return
        try:
            self._send(200, {"id_token": server.grant_id_token(form["assertion"][0])})
        except ValueError as exc:
            server.count("refused")
            self._send(400, {"error": "invalid_grant", "error_description": str(exc)})

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
        self.counts = {"issued": 0, "refused": 0, "id_tokens": 0}
        self._accounts: dict[str, rsa.RSAPublicKey] = {}  # service account email -> its key's public half
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
        token = self._sign(header, claims)
        with self._lock:
            self.issued.append(token)
            self.counts["issued"] += 1
        return token

    def service_account_key(self, email: str) -> dict[str, str]:
        """A new key for the service account `email`, as the JSON key file Google issues, whose
        `token_uri` is this server: google-auth given it (GOOGLE_APPLICATION_CREDENTIALS) gets its ID
        tokens here."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self._lock:
            self._accounts[email] = key.public_key()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": email.split("@")[-1].split(".")[0],
                "private_key_id": secrets.token_hex(20), "private_key": pem, "client_email": email,
                "client_id": str(int.from_bytes(email.encode()[:8], "big")), "token_uri": f"{self.url}/token"}

    def grant_id_token(self, assertion: str) -> str:
        """The JWT-bearer grant: an assertion signed by a known account's key, unexpired, naming a
        `target_audience`, is traded for an ID token with that audience; else ValueError."""
        header, claims, signed, signature = _jwt_parts(assertion)
        with self._lock:
            public = self._accounts.get(str(claims.get("iss")))
        if public is None or header.get("alg") != "RS256":
            raise ValueError("the assertion is not from a known service account (RS256)")
        try:
            public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise ValueError("the assertion's signature does not verify") from None
        now = int(time.time())
        if not isinstance(claims.get("exp"), int) or claims["exp"] < now:
            raise ValueError("the assertion has expired")
        audience = claims.get("target_audience")
        if not isinstance(audience, str) or not audience:
            raise ValueError("the assertion names no target_audience")
        id_claims = {"iss": self.url, "aud": audience, "sub": claims["iss"], "email": claims["iss"],
                     "email_verified": True, "iat": now, "exp": now + ID_TOKEN_TTL_S}
        token = self._sign({"typ": "JWT", "alg": "ES256"}, id_claims)
        self.count("id_tokens")
        return token

    def verify_id_token(self, token: str, audience: str) -> dict:
        """The claims of an ID token this server issued for `audience`, unexpired; else ValueError."""
        header, claims, signed, signature = _jwt_parts(token)
        if header.get("alg") != "ES256" or len(signature) != 64:
            raise ValueError("not an ID token of this server")
        try:
            self._key.public_key().verify(
                encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")),
                signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ValueError("the ID token's signature does not verify") from None
        if claims.get("aud") != audience:
            raise ValueError(f"the ID token is for {claims.get('aud')!r}, not {audience!r}")
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            raise ValueError("the ID token has expired")
        return claims

    def _sign(self, header: dict, claims: dict) -> str:
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _self_signed(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))

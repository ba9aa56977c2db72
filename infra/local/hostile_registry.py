"""A hostile OCI registry and an attacker host on 127.0.0.1, for the registry client's guards.

    with AttackerHost() as attacker, HostileRegistry(attacker) as reg:
        client.get_manifest(ImageRef(reg.host, "realm-elsewhere/app", "v1"))
        attacker.seen  # every request the attacker host received, with all its headers

Each repository is one trick (``CASES``); any other path answers 404. Both servers run in this
process on threads and are stopped by their object (``stop()`` or the ``with`` block).
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .procs import LOOPBACK

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
TEN_GB = 10 * 1024 ** 3
SLOW_BYTE_INTERVAL_S = 0.5
# Where a registry can point the metadata server at, spelled so that a string match misses it.
METADATA_FORMS = {
    "decimal": "2852039166",
    "hex": "0xa9.0xfe.0xa9.0xfe",
    "mapped": "[::ffff:169.254.169.254]",
    "dotted-name": "metadata.google.internal.",
}
CASES = ("wrong-types", "huge-number", "self-index", "digest-mismatch", "slowloris", "ten-gb", "redirect",
         "realm-elsewhere", "storage-challenge", "upload-elsewhere", *(f"metadata-{k}" for k in METADATA_FORMS))


def digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


CONFIG = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
MANIFEST = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                      "config": {"mediaType": OCI_CONFIG, "digest": digest(CONFIG), "size": len(CONFIG)}})


def wrong_types_index() -> bytes:
    """Children whose fields have the wrong types: annotations a string, mediaType a list, size a string."""
    return canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "annotations": {"base.digest": 5},
                      "manifests": [
                          {"mediaType": [OCI_MANIFEST], "digest": digest(MANIFEST), "size": len(MANIFEST),
                           "platform": {"os": "linux", "architecture": "amd64"}},
                          {"mediaType": OCI_MANIFEST, "digest": digest(MANIFEST), "size": "12",
                           "annotations": "vnd.docker.reference.type", "platform": "linux/amd64"}]})


def huge_number_manifest() -> bytes:
    doc = MANIFEST.decode().replace('"schemaVersion":2', '"schemaVersion":' + "9" * 5000)
    return doc.encode()


def self_index() -> bytes:
    """An index naming a child the server answers with this same index (so never the child's bytes)."""
    child = "sha256:" + "ab" * 32
    return canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": child, "size": 300, "platform": {"os": "linux", "architecture": "amd64"}}]})


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a fleet's workers asking at once overflowed it, and each
    # refused SYN is retried by the kernel only after 1 s (werkzeug's servers here listen with 128).
    request_queue_size = 128


class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port>, served from a thread, stopped by its object."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _Server((LOOPBACK, 0), handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> "LoopbackServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):  # noqa: ANN204 - the subclass
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def drain(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)


class _AttackerHandler(_Quiet):
    def handle_one(self) -> None:
        self.drain()
        self.owner.record(Seen(self.command, self.path, dict(self.headers.items())))
        if self.path.startswith("/token"):
            self.reply(200, canonical({"token": "attacker-issued", "expires_in": 300}))
            return
        self.reply(401, canonical({"errors": [{"code": "UNAUTHORIZED", "message": "show me"}]}),
                   {"WWW-Authenticate": f'Bearer realm="{self.owner.url}/token",service="attacker"',
                    "Content-Type": "application/json"})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one


class AttackerHost(LoopbackServer):
    """Records every request and every header it sees; asks for credentials at its own realm."""

    def __init__(self) -> None:
        super().__init__(_AttackerHandler)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def credentials_seen(self) -> list[Seen]:
        """Requests that carried anything credential-like."""
        return [s for s in self.seen if any(k.lower() in ("authorization", "cookie", "proxy-authorization")
                                            for k in s.headers)]


class _HostileHandler(_Quiet):
    def handle_one(self) -> None:
        started = time.monotonic()
        try:
            self._answer()
        finally:
            self.owner.record(self.command, self.path, time.monotonic() - started)

    def _answer(self) -> None:
        self.drain()
        path = self.path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            self.reply(200, b"{}", {"Content-Type": "application/json"})
            return
        case = path[len("/v2/"):].split("/", 1)[0] if path.startswith("/v2/") else ""
        answer = self.owner.answers.get(case)
        if answer is None:
            self.reply(404, canonical({"errors": [{"code": "NAME_UNKNOWN", "message": "no such repository"}]}))
            return
        answer(self, path)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one


def _manifest(raw: bytes, media_type: str, announced: str | None = None) -> Callable[[_Quiet, str], None]:
    def answer(h: _Quiet, path: str) -> None:
        if "/blobs/" in path:
            h.reply(200, CONFIG, {"Content-Type": "application/octet-stream"})
            return
        h.reply(200, raw, {"Content-Type": media_type, "Docker-Content-Digest": announced or digest(raw)})
    return answer


def _slowloris(h: _Quiet, path: str) -> None:
    h.send_response(200)
    h.send_header("Content-Type", OCI_MANIFEST)
    h.send_header("Content-Length", str(len(MANIFEST)))
    h.end_headers()
    if h.command == "HEAD":
        return
    try:
        for i in range(len(MANIFEST)):
            h.wfile.write(MANIFEST[i:i + 1])
            h.wfile.flush()
            time.sleep(SLOW_BYTE_INTERVAL_S)
    except OSError:
        pass  # the client gave up: that is the point


def _ten_gb(h: _Quiet, path: str) -> None:
    h.send_response(200)
    h.send_header("Content-Type", OCI_MANIFEST if "/manifests/" in path else "application/octet-stream")
    h.send_header("Content-Length", str(TEN_GB))
    h.end_headers()
    try:
        for _ in range(64):  # a little, then nothing: the length alone must be refused
            h.wfile.write(b"\0" * 1024)
    except OSError:
        pass
    h.close_connection = True


class HostileRegistry(LoopbackServer):
    """One repository per trick (``CASES``); redirects and realms point at ``attacker``."""

    def __init__(self, attacker: AttackerHost) -> None:
        super().__init__(_HostileHandler)
        self.attacker = attacker
        self.calls: list[tuple[str, str, float]] = []  # (method, path, seconds until answered or given up)
        self._lock = threading.Lock()
        index = self_index()
        self.answers: dict[str, Callable[[_Quiet, str], None]] = {
            "wrong-types": _manifest(wrong_types_index(), OCI_INDEX),
            "huge-number": _manifest(huge_number_manifest(), OCI_MANIFEST),
            "self-index": _manifest(index, OCI_INDEX, announced=digest(index)),
            "digest-mismatch": _manifest(MANIFEST, OCI_MANIFEST, announced="sha256:" + "0" * 64),
            "slowloris": _slowloris,
            "ten-gb": _ten_gb,
            "redirect": self._to(lambda path: f"{attacker.url}{path}"),
            "storage-challenge": self._to(lambda path: f"{attacker.url}/storage{path}"),
            "realm-elsewhere": self._challenge,
            "upload-elsewhere": self._upload_elsewhere,
            **{f"metadata-{k}": self._to(lambda path, f=form: f"http://{f}/computeMetadata/v1/instance/service-accounts/"
                                                               "default/token") for k, form in METADATA_FORMS.items()},
        }

    def record(self, method: str, path: str, seconds: float) -> None:
        with self._lock:
            self.calls.append((method, path, seconds))

    def longest_call(self) -> float:
        with self._lock:
            return max((s for _, _, s in self.calls), default=0.0)

    @staticmethod
    def _to(where: Callable[[str], str]) -> Callable[[_Quiet, str], None]:
        def answer(h: _Quiet, path: str) -> None:
            h.reply(307, b"", {"Location": where(path)})
        return answer

    def _challenge(self, h: _Quiet, path: str) -> None:
        h.reply(401, canonical({"errors": [{"code": "UNAUTHORIZED", "message": "authenticate"}]}),
                {"WWW-Authenticate": f'Bearer realm="{self.attacker.url}/token",service="hostile",'
                                     f'scope="repository:realm-elsewhere/app:pull"',
                 "Content-Type": "application/json"})

    def _upload_elsewhere(self, h: _Quiet, path: str) -> None:
        if h.command == "POST" and "/blobs/uploads/" in path:
            h.reply(202, b"", {"Location": f"{self.attacker.url}/upload/1?_state=x"})
        elif h.command == "HEAD":
            h.reply(404)
        else:
            _manifest(MANIFEST, OCI_MANIFEST)(h, path)


@dataclass
class Hostile:
    """Both servers together: ``with Hostile() as h: h.registry.host, h.attacker.seen``."""

    attacker: AttackerHost = field(default_factory=AttackerHost)
    registry: HostileRegistry | None = None

    def __enter__(self) -> "Hostile":
        self.attacker.start()
        self.registry = HostileRegistry(self.attacker).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.registry is not None:
            self.registry.stop()
        self.attacker.stop()

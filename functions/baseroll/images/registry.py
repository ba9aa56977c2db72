"""The registry client: the only code in baseroll that talks HTTP to registries (OCI Distribution).

One ``httpx.Client`` with timeouts and connection limits. Everything read is size-capped before
parsing and verified by sha256; everything wrong surfaces as ``RegistryError`` with the registry's
error code. Authentication follows the registry's own ``WWW-Authenticate`` challenge (Bearer token
or Basic), with credentials from a ``TokenSource``; nothing credential-like reaches a message.
"""
from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Iterator, Protocol

import httpx

from baseroll import log
from baseroll.images import oci
from baseroll.images.refs import ImageRef

USER_AGENT = "baseroll/0.1"
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 * 1024
MAX_TOKEN_BODY = 1024 * 1024
MAX_TAGS_BODY = 16 * 1024 * 1024
MAX_DRAIN = 64 * 1024  # an unread body up to this is read so its connection can be reused
SINGLE_POST_MAX = 64 * 1024  # blobs up to this go in one POST, without asking first whether they exist
DEFAULT_MAX_BLOB_BYTES = 10 * 1024 * 1024 * 1024  # a streamed copy; CUDA-sized layers exist
DEFAULT_GET_BLOB_BYTES = 64 * 1024 * 1024  # what get_blob holds in memory by default
CHUNK = 1024 * 1024
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_GOOGLE_HOST = re.compile(r"^(?:[a-z0-9-]+\.)?gcr\.io$|^[a-z0-9-]+-docker\.pkg\.dev$|^docker\.pkg\.dev$")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class RegistryError(Exception):
    """A registry call failed; ``code`` is the registry's error code when it sent one."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


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
    """Google access tokens (user ``oauth2accesstoken``) for gcr.io and ``*-docker.pkg.dev`` only.

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


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    raw: bytes
    data: dict[str, Any]
    size: int

    @property
    def is_index(self) -> bool:
        return self.media_type in oci.INDEX_TYPES


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
    blobs_fetched: list[str] = field(default_factory=list)  # digests whose bytes were read


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # "bearer" | "basic"
    realm: str = ""
    service: str | None = None
    scopes: tuple[str, ...] = ()
    error: str | None = None


def parse_challenge(header: str | None) -> _Challenge | None:
    """``Bearer realm="..",service="..",scope="a b"`` → _Challenge (scope split on spaces)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _CHALLENGE_PARAM.finditer(rest)}
    scheme = scheme.lower()
    if scheme == "basic":
        return _Challenge("basic")
    if scheme != "bearer" or not params.get("realm"):
        return None
    return _Challenge(
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


class _ManifestCache:
    """LRU of manifests read by digest (content-addressed, so never stale), bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[tuple[str, str, str], Manifest] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> Manifest | None:
        with self._lock:
            m = self._items.get(key)
            if m is not None:
                self._items.move_to_end(key)
            return m

    def put(self, key: tuple[str, str, str], m: Manifest) -> None:
        with self._lock:
            if key in self._items or m.size > self._max:
                return
            self._items[key] = m
            self._size += m.size
            while self._size > self._max:
                _, old = self._items.popitem(last=False)
                self._size -= old.size


# ---------------------------------------------------------------- client


class RegistryClient:
    """OCI Distribution client; close() it or use it as a context manager.

    Safe to share between threads (httpx.Client is; caches are locked), though the stats counters
    are only exact when one thread uses the client.
    """

    def __init__(
        self,
        *,
        plain_http_hosts: Iterable[str] = (),
        allowed_hosts: Iterable[str] | None = None,
        credentials: TokenSource | None = None,
        max_manifest_bytes: int = oci.MAX_MANIFEST_BYTES,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 30.0,
        manifest_cache_bytes: int = 32 * 1024 * 1024,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.plain_http_hosts = frozenset(h.lower() for h in plain_http_hosts)
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        # None: Google tokens for Google registries, anonymous elsewhere.
        self.credentials: TokenSource = credentials if credentials is not None else GoogleTokenSource()
        self.max_manifest_bytes = max_manifest_bytes
        self.max_blob_bytes = max_blob_bytes
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = RegistryStats()
        self._sleep = sleep
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            follow_redirects=False,  # manual: Authorization must not follow to storage hosts
            # identity: a compressed body could expand past our caps inside a single chunk.
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            transport=transport,
        )
        self._challenges: dict[str, _Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._manifests = _ManifestCache(manifest_cache_bytes)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ manifests

    def get_manifest(self, ref: ImageRef) -> Manifest:
        """The manifest or index ``ref`` names, verified against its digest (cached when by digest)."""
        if ref.digest:
            cached = self._manifests.get((ref.registry, ref.repository, ref.digest))
            if cached is not None:
                self.stats.manifest_cache_hits += 1
                return cached
        what = f"GET manifest {ref}"
        resp, raw = self._fetch(
            "GET", ref, f"/v2/{ref.repository}/manifests/{ref.reference}",
            scopes=(pull_scope(ref.repository),), headers=_accept(), cap=self.max_manifest_bytes, what=what,
        )
        self.stats.manifest_gets += 1
        digest = oci.sha256_digest(raw)
        announced = resp.headers.get("docker-content-digest")
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"{what}: digest mismatch: content is {digest}", code="DIGEST_INVALID")
        if announced and oci.is_digest(announced) and announced != digest:
            raise RegistryError(f"{what}: digest mismatch: registry announced {announced}, content is {digest}", code="DIGEST_INVALID")
        try:
            media_type, data = oci.parse_manifest_or_index(raw, resp.headers.get("content-type"), max_bytes=self.max_manifest_bytes)
        except oci.OCIError as e:
            raise RegistryError(f"{what}: {e}", code="MANIFEST_INVALID") from e
        m = Manifest(media_type, digest, raw, data, len(raw))
        self._manifests.put((ref.registry, ref.repository, digest), m)
        return m

    def head_manifest(self, ref: ImageRef) -> str | None:
        """Cheap tag → digest resolution; None when the manifest does not exist."""
        what = f"HEAD manifest {ref}"
        resp = self._request("HEAD", ref, f"/v2/{ref.repository}/manifests/{ref.reference}",
                             scopes=(pull_scope(ref.repository),), headers=_accept(), what=what)
        with _released(resp):
            self.stats.manifest_heads += 1
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise self._error(resp, what)
            digest = resp.headers.get("docker-content-digest")
        if oci.is_digest(digest):
            return digest
        return self.get_manifest(ref).digest  # registry without the header: read and hash

    def put_manifest(self, ref: ImageRef, raw: bytes, media_type: str) -> str:
        """PUT a manifest under ``ref``'s tag or digest; returns its digest (checked against the registry's)."""
        digest = oci.sha256_digest(raw)
        what = f"PUT manifest {ref}"
        if ref.digest and ref.digest != digest:
            raise RegistryError(f"{what}: content digest is {digest}", code="DIGEST_INVALID")
        if len(raw) > self.max_manifest_bytes:
            raise RegistryError(f"{what}: {len(raw)} bytes exceeds {self.max_manifest_bytes}", code="SIZE_INVALID")
        resp, _ = self._fetch("PUT", ref, f"/v2/{ref.repository}/manifests/{ref.reference}",
                              scopes=(push_scope(ref.repository),), headers={"Content-Type": media_type},
                              content=raw, cap=MAX_ERROR_BODY, what=what, ok=(200, 201))
        self.stats.manifest_puts += 1
        announced = resp.headers.get("docker-content-digest")
        if announced and announced != digest:
            raise RegistryError(f"{what}: registry stored {announced}, expected {digest}", code="DIGEST_INVALID")
        return digest

    def list_tags(self, repo: ImageRef, *, page_size: int = 1000, max_pages: int = 100) -> list[str]:
        """All tags of a repository, following ``Link: <..>; rel="next"`` for at most ``max_pages``."""
        tags: list[str] = []
        url: str = f"/v2/{repo.repository}/tags/list?n={page_size}"
        for _ in range(max_pages):
            resp, raw = self._fetch("GET", repo, url, scopes=(pull_scope(repo.repository),),
                                    cap=MAX_TAGS_BODY, what=f"list tags {repo.name}")
            try:
                page = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RegistryError(f"list tags {repo.name}: response is not JSON", code="TAG_INVALID") from None
            tags.extend(t for t in (page.get("tags") or []) if isinstance(t, str))
            nxt = _LINK_NEXT.search(resp.headers.get("link", ""))
            if not nxt:
                return tags
            url = nxt.group(1)
            if not url.startswith("/"):  # only same-host pagination: never follow a link elsewhere
                target = httpx.URL(url)
                if target.netloc.decode().lower() != repo.registry:
                    raise RegistryError(f"list tags {repo.name}: pagination link leaves the registry")
                url = target.raw_path.decode()
        log.warning("registry.tags_truncated", repository=repo.name, pages=max_pages, tags=len(tags))
        return tags

    # ------------------------------------------------------------ blobs

    def blob_exists(self, repo: ImageRef, digest: str) -> bool:
        what = f"HEAD blob {repo.name}@{digest}"
        resp = self._request("HEAD", repo, f"/v2/{repo.repository}/blobs/{digest}",
                             scopes=(pull_scope(repo.repository),), what=what)
        with _released(resp):
            if resp.status_code == 200:
                return True
            if resp.status_code == 404:
                return False
            raise self._error(resp, what)

    def get_blob(self, repo: ImageRef, digest: str, max_bytes: int = DEFAULT_GET_BLOB_BYTES) -> bytes:
        """A blob's bytes, at most ``max_bytes``, verified against ``digest``."""
        if not oci.is_digest(digest):
            raise RegistryError(f"GET blob {repo.name}: bad digest {digest!r}", code="DIGEST_INVALID")
        what = f"GET blob {repo.name}@{digest}"
        _, data = self._fetch("GET", repo, f"/v2/{repo.repository}/blobs/{digest}",
                              scopes=(pull_scope(repo.repository),), cap=max_bytes, what=what)
        self._count_download(digest, len(data))
        if oci.sha256_digest(data) != digest:
            raise RegistryError(f"{what}: digest mismatch", code="DIGEST_INVALID")
        return data

    def put_blob(self, repo: ImageRef, data: bytes) -> str:
        """Monolithic upload; returns the digest.

        A small blob (a config) is sent at once in a single POST with ``?digest=``: sending it costs
        less than asking whether it exists, and the registry answers 201 when it stored it. A registry
        without single-POST support answers 202 with a session, and the blob follows in a PUT (spec:
        "Single POST"). A larger blob is skipped when present, else uploaded by POST then PUT.
        """
        digest = oci.sha256_digest(data)
        if len(data) <= SINGLE_POST_MAX:
            location = self._post_blob(repo, digest, data)
            if location is None:
                return digest
        elif self.blob_exists(repo, digest):
            return digest
        else:
            location = self._start_upload(repo, scopes=(push_scope(repo.repository),))
        self._finish_upload(repo, location, digest, data, len(data))
        return digest

    def mount_blob(self, target: ImageRef, digest: str, source: ImageRef) -> str:
        """Make ``digest`` exist in ``target``'s repository; returns "exists", "mounted" or "uploaded".

        A cross-repository mount moves no bytes, and is asked for straight away: the registry answers
        201 whether or not the target had the blob, so a HEAD first would only add a round trip. When
        the registry declines (202, or still 401 after asking for pull on the source) or the source is
        on another registry, the target is checked first, then the blob is streamed from the source
        into an upload session, and the stats count it.
        """
        if source.registry != target.registry:
            if self.blob_exists(target, digest):
                return "exists"
            self._copy_blob(target, digest, source, location=None)
            return "uploaded"
        what = f"mount {digest} from {source.repository} into {target.name}"
        scopes = (push_scope(target.repository), pull_scope(source.repository))
        resp = self._request("POST", target, f"/v2/{target.repository}/blobs/uploads/",
                             params={"mount": digest, "from": source.repository}, scopes=scopes, what=what)
        with _released(resp):
            status, location = resp.status_code, resp.headers.get("location")
            if status not in (201, 202, 401):
                raise self._error(resp, what)
        if status == 201:
            with self._lock:
                self.stats.mounts += 1
            return "mounted"
        if self.blob_exists(target, digest):  # declined, but already there: no copy needed
            if status == 202 and location:
                self._abandon_upload(target, location)
            return "exists"
        with self._lock:
            self.stats.mount_fallbacks += 1
        log.info("registry.mount_fallback", target=target.name, source=source.name, digest=digest, status=status)
        self._copy_blob(target, digest, source, location=location if status == 202 else None)
        return "uploaded"

    # ------------------------------------------------------------ upload helpers

    def _start_upload(self, repo: ImageRef, scopes: tuple[str, ...]) -> str:
        what = f"start upload {repo.name}"
        resp, _ = self._fetch("POST", repo, f"/v2/{repo.repository}/blobs/uploads/", scopes=scopes,
                              cap=MAX_ERROR_BODY, what=what, ok=(202,))
        return _session_location(resp, what)

    def _post_blob(self, repo: ImageRef, digest: str, data: bytes) -> str | None:
        """Single-POST upload: None when the registry stored the blob (201), else the Location of the
        upload session it opened instead (202)."""
        what = f"upload {digest} to {repo.name}"
        resp, _ = self._fetch("POST", repo, f"/v2/{repo.repository}/blobs/uploads/",
                              scopes=(push_scope(repo.repository),), cap=MAX_ERROR_BODY, what=what,
                              params={"digest": digest}, content=data,
                              headers={"Content-Type": "application/octet-stream"}, ok=(201, 202))
        with self._lock:
            self.stats.bytes_uploaded += len(data)  # sent either way; a registry answering 202 drops it
            if resp.status_code == 201:
                self.stats.uploads += 1
                return None
        return _session_location(resp, what)

    def _finish_upload(self, repo: ImageRef, location: str, digest: str, content: bytes | Iterator[bytes],
                       length: int | None) -> None:
        url = httpx.URL(self._absolute(repo, location)).copy_add_param("digest", digest)  # keep its query
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Content-Length"] = str(length)
        self._fetch("PUT", repo, str(url), scopes=(push_scope(repo.repository),), headers=headers, content=content,
                    cap=MAX_ERROR_BODY, what=f"upload {digest} to {repo.name}", ok=(201, 204),
                    replayable=isinstance(content, bytes))
        with self._lock:
            self.stats.uploads += 1
            if isinstance(content, bytes):
                self.stats.bytes_uploaded += len(content)

    def _copy_blob(self, target: ImageRef, digest: str, source: ImageRef, location: str | None) -> None:
        """Stream a blob from ``source`` into an upload session of ``target`` (bounded, verified)."""
        for attempt in range(self.retries + 1):
            try:
                if location is None:
                    location = self._start_upload(target, scopes=(push_scope(target.repository),))
                self._stream_copy(target, digest, source, location)
                return
            except (RegistryError, httpx.TransportError) as e:
                transient = isinstance(e, httpx.TransportError) or (e.status in RETRYABLE if isinstance(e, RegistryError) else False)
                if location is not None:
                    self._abandon_upload(target, location)
                if not transient or attempt >= self.retries:
                    if isinstance(e, httpx.TransportError):
                        raise RegistryError(f"copy {digest} into {target.name}: {type(e).__name__}") from e
                    raise
                location = None  # a failed session is not reused
                self._backoff(attempt, None)

    def _abandon_upload(self, repo: ImageRef, location: str) -> None:
        """Best-effort DELETE of an upload session we will not finish, so it does not linger."""
        try:
            resp = self._request("DELETE", repo, location, scopes=(push_scope(repo.repository),),
                                 what=f"cancel upload {repo.name}", replayable=False)
            _discard(resp)
        except (RegistryError, httpx.HTTPError):
            pass

    def _stream_copy(self, target: ImageRef, digest: str, source: ImageRef, location: str) -> None:
        what = f"GET blob {source.name}@{digest}"
        resp = self._request("GET", source, f"/v2/{source.repository}/blobs/{digest}",
                             scopes=(pull_scope(source.repository),), what=what)
        with _released(resp):
            if resp.status_code != 200:
                raise self._error(resp, what)
            length = _content_length(resp)
            if length is not None and length > self.max_blob_bytes:
                raise RegistryError(f"{what}: {length} bytes exceeds {self.max_blob_bytes}", code="SIZE_INVALID")
            hasher, total = hashlib.sha256(), [0]

            def body() -> Iterator[bytes]:
                for chunk in resp.iter_bytes(CHUNK):
                    total[0] += len(chunk)
                    if total[0] > self.max_blob_bytes:
                        raise RegistryError(f"{what}: exceeds {self.max_blob_bytes} bytes", code="SIZE_INVALID")
                    hasher.update(chunk)
                    yield chunk

            # The registry checks ?digest= itself; the hash below catches a source that lied.
            self._finish_upload(target, location, digest, body(), length)
        self._count_download(digest, total[0])
        self.stats.bytes_uploaded += total[0]
        if "sha256:" + hasher.hexdigest() != digest:
            raise RegistryError(f"{what}: digest mismatch", code="DIGEST_INVALID")

    def _count_download(self, digest: str, n: int) -> None:
        with self._lock:
            self.stats.blob_gets += 1
            self.stats.bytes_downloaded += n
            self.stats.blobs_fetched.append(digest)

    # ------------------------------------------------------------ HTTP core

    def _check_host(self, host: str) -> None:
        if self.allowed_hosts is not None and host.lower() not in self.allowed_hosts:
            raise RegistryError(f"registry host {host!r} is not allowed", code="DENIED")

    def _base(self, host: str) -> str:
        scheme = "http" if host.lower() in self.plain_http_hosts else "https"
        return f"{scheme}://{host}"

    def _absolute(self, ref: ImageRef, path_or_url: str) -> str:
        if path_or_url.startswith("/"):
            return self._base(ref.registry) + path_or_url
        url = httpx.URL(path_or_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise RegistryError(f"{ref.registry}: unusable location returned by the registry")
        if url.scheme == "http" and url.netloc.decode().lower() not in self.plain_http_hosts:
            raise RegistryError(f"{ref.registry}: registry pointed at a plain-http location", code="DENIED")
        return path_or_url

    def _fetch(self, method: str, ref: ImageRef, path_or_url: str, *, scopes: tuple[str, ...], cap: int, what: str,
               headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
               content: bytes | Iterator[bytes] | None = None, ok: tuple[int, ...] = (200,),
               replayable: bool = True) -> tuple[httpx.Response, bytes]:
        """A request whose body is read whole (at most ``cap`` bytes); non-``ok`` statuses raise.

        Connection drops while reading the body are retried like failed requests.
        """
        for attempt in range(self.retries + 1):
            resp = self._request(method, ref, path_or_url, scopes=scopes, headers=headers, params=params,
                                 content=content, what=what, replayable=replayable)
            with _released(resp):
                if resp.status_code not in ok:
                    raise self._error(resp, what)
                try:
                    return resp, _read_capped(resp, cap, what)
                except httpx.TransportError as e:
                    if not replayable or attempt >= self.retries:
                        raise RegistryError(f"{what}: {type(e).__name__} while reading") from e
            self._backoff(attempt, None)
        raise AssertionError("unreachable")

    def _request(self, method: str, ref: ImageRef, path_or_url: str, *, scopes: tuple[str, ...], what: str,
                 headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
                 content: bytes | Iterator[bytes] | None = None, replayable: bool = True) -> httpx.Response:
        """One authorised call (open, streaming response): auth challenge, retries, manual redirects."""
        host = ref.registry
        self._check_host(host)
        url = httpx.URL(self._absolute(ref, path_or_url))
        if params:
            url = url.copy_merge_params(params)
        same_host = url.netloc.decode().lower() == host.lower()

        def send(extra: tuple[str, ...], force: bool) -> httpx.Response:
            h = dict(headers or {})
            auth = self._authorization(host, scopes + extra, force, scopes if extra else ()) if same_host else None
            if auth:
                h["Authorization"] = auth
            return self._with_retries(lambda: self._exchange(method, url, h, content), what, replayable)

        # A first call to a host goes anonymous and may meet two challenges: how to authenticate, then
        # (a mount, say) which scope the token lacks. Otherwise one challenge is all a retry can answer.
        rounds = 2 if same_host and host not in self._challenges else 1
        resp = send((), False)
        extra: tuple[str, ...] = ()
        for round_ in range(rounds):
            if resp.status_code != 401 or not replayable:
                return resp
            challenge = parse_challenge(resp.headers.get("www-authenticate"))
            if challenge is None or (round_ and challenge.error != "insufficient_scope"):
                return resp  # the caller turns 401 into a RegistryError
            _discard(resp)
            with self._lock:
                # Remember how this host authenticates, not the scope of this one request.
                self._challenges[host] = _Challenge(challenge.scheme, challenge.realm, challenge.service)
            # insufficient_scope: ask again with whatever scopes the registry named (e.g. pull on a mount source).
            extra += tuple(s for s in challenge.scopes if s not in scopes and s not in extra)
            resp = send(extra, True)
        return resp

    def _with_retries(self, call: Callable[[], httpx.Response], what: str, replayable: bool) -> httpx.Response:
        """Retry 408/429/5xx and connection errors with exponential backoff + jitter (Retry-After honoured)."""
        attempts = self.retries + 1 if replayable else 1
        for attempt in range(attempts):
            try:
                resp = call()
            except httpx.TransportError as e:
                if attempt + 1 >= attempts:
                    raise RegistryError(f"{what}: {type(e).__name__} after {attempt + 1} attempt(s)") from e
                self._backoff(attempt, None)
                continue
            if resp.status_code in RETRYABLE and attempt + 1 < attempts:
                _discard(resp)
                self._backoff(attempt, resp)
                continue
            return resp
        raise AssertionError("unreachable")

    def _exchange(self, method: str, url: httpx.URL, headers: dict[str, str],
                  content: bytes | Iterator[bytes] | None) -> httpx.Response:
        """Send, following redirects by hand: Authorization never goes to another host."""
        origin = url.netloc
        for _ in range(MAX_REDIRECTS + 1):
            req = self._http.build_request(method, url, headers=headers, content=content)
            resp = self._http.send(req, stream=True)
            with self._lock:
                self.stats.requests += 1
            if resp.status_code not in REDIRECTS or "location" not in resp.headers:
                return resp
            _discard(resp)
            target = url.join(resp.headers["location"])
            if target.scheme not in ("http", "https") or _forbidden_redirect(target):
                raise RegistryError(f"{method} redirected to a refused location", status=resp.status_code)
            if target.scheme == "http" and url.scheme == "https":
                raise RegistryError(f"{method} redirected from https to http", status=resp.status_code)
            if target.netloc != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if resp.status_code == 303 and method not in ("GET", "HEAD"):
                method, content = "GET", None
            url = target
        raise RegistryError(f"{method}: more than {MAX_REDIRECTS} redirects")

    def _backoff(self, attempt: int, resp: httpx.Response | None) -> None:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: spread retries of parallel callers
        if resp is not None:
            after = _retry_after(resp.headers.get("retry-after"))
            if after is not None:
                delay = min(self.max_backoff, max(delay, after))
        with self._lock:
            self.stats.retries += 1
        self._sleep(delay)

    # ------------------------------------------------------------ auth

    def _authorization(self, host: str, scopes: tuple[str, ...], force: bool,
                       base_scopes: tuple[str, ...] = ()) -> str | None:
        challenge = self._challenges.get(host)
        if challenge is None:
            return None  # first contact is anonymous; the 401 tells us how to authenticate
        if challenge.scheme == "basic":
            creds = self.credentials.basic_auth(host)
            return _basic(creds) if creds else None
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
            if base_scopes:  # a token with extra scopes also serves the request's own scopes next time
                self._tokens[(host, tuple(sorted(set(base_scopes))))] = entry
        return f"Bearer {token}"

    def _fetch_token(self, host: str, challenge: _Challenge, scopes: tuple[str, ...],
                     creds: tuple[str, str] | None) -> tuple[str, float]:
        realm = httpx.URL(challenge.realm)
        realm_host = realm.netloc.decode().lower()
        if realm.scheme != "https" and not (realm.scheme == "http" and realm_host in self.plain_http_hosts):
            raise RegistryError(f"{host}: token realm is not https", code="DENIED")
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", s) for s in scopes)  # repeated, one per scope
        headers = {"Authorization": _basic(creds)} if creds else {}
        what = f"token for {host}"
        resp = self._with_retries(lambda: self._exchange("GET", realm.copy_merge_params(params), headers, None), what, True)
        with _released(resp):
            if resp.status_code != 200:
                raise RegistryError(f"{what}: HTTP {resp.status_code}", status=resp.status_code, code="UNAUTHORIZED")
            try:
                body = json.loads(_read_capped(resp, MAX_TOKEN_BODY, what))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RegistryError(f"{what}: response is not JSON", code="UNAUTHORIZED") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: no token in response", code="UNAUTHORIZED")
        ttl = body.get("expires_in")
        return token, float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else 60.0

    # ------------------------------------------------------------ errors

    def _error(self, resp: httpx.Response, what: str) -> RegistryError:
        """RegistryError from an error response: status plus the registry's first error code and message."""
        code, message = None, ""
        if resp.request.method != "HEAD":
            try:
                body = json.loads(_read_capped(resp, MAX_ERROR_BODY, what))
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


# ---------------------------------------------------------------- small helpers


def _accept() -> dict[str, str]:
    return {"Accept": ", ".join(oci.ACCEPT_MANIFEST)}


def _basic(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


def _content_length(resp: httpx.Response) -> int | None:
    if resp.headers.get("content-encoding", "identity") != "identity":
        return None  # the length is of the encoded body, not of the blob
    try:
        return int(resp.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _session_location(resp: httpx.Response, what: str) -> str:
    location = resp.headers.get("location")
    if not location:
        raise RegistryError(f"{what}: 202 without Location", status=202)
    return location


def _discard(resp: httpx.Response) -> None:
    """Close a response we do not need, reading a small body to its end first.

    httpcore puts a connection back in the pool only when its response was read to the end; closing
    one unread (any HEAD, a 201 or 202 with an empty body) drops the connection, and the next request
    pays a new connect. A large unread body is not worth reading: that connection is dropped.
    """
    try:
        if not resp.is_stream_consumed:
            read = 0
            for chunk in resp.iter_raw():
                read += len(chunk)
                if read > MAX_DRAIN:
                    break
    except (httpx.HTTPError, httpx.StreamError):
        pass  # the connection is dropped, which is all a failed read can cost
    finally:
        resp.close()


@contextmanager
def _released(resp: httpx.Response) -> Iterator[httpx.Response]:
    """``with _released(resp):`` → ``_discard(resp)`` on the way out, whatever was read."""
    try:
        yield resp
    finally:
        _discard(resp)


def _read_capped(resp: httpx.Response, cap: int, what: str) -> bytes:
    """Read a streamed body, refusing before parsing anything when it exceeds ``cap``."""
    length = _content_length(resp)
    if length is not None and length > cap:
        raise RegistryError(f"{what}: {length} bytes exceeds the {cap}-byte limit", code="SIZE_INVALID")
    buf = bytearray()
    for chunk in resp.iter_bytes(CHUNK):
        buf += chunk
        if len(buf) > cap:
            raise RegistryError(f"{what}: body exceeds the {cap}-byte limit", code="SIZE_INVALID")
    return bytes(buf)


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


def _forbidden_redirect(url: httpx.URL) -> bool:
    """Never follow a registry's redirect to the metadata server (it would hand out tokens)."""
    host = (url.host or "").lower()
    return host in ("metadata.google.internal", "metadata") or host.startswith("169.254.")

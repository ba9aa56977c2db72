"""The registry client: the only code in baseroll that talks HTTP to registries (OCI Distribution).

The verbs (manifests, tags, blobs, mounts, uploads) over the transport and the authenticator.
Everything read is size-capped before parsing and verified by sha256, every call has a wall-clock
deadline; everything wrong surfaces as ``RegistryError`` with the registry's error code
(docs/OCI.md#distribution-api).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import re
import time
from typing import Callable, Iterable, Iterator, Mapping

import httpx

from baseroll import log
from baseroll.images import oci
from baseroll.images.refs import ImageRef
from baseroll.images.registry.auth import (
    Authenticator,
    GoogleTokenSource,
    TokenSource,
    pull_scope,
    push_scope,
)
from baseroll.images.registry.hosts import HostPolicy, Resolver, resolve_addresses
from baseroll.images.registry.manifest import Manifest, ManifestCache
from baseroll.images.registry.session import Session
from baseroll.images.registry.transport import (
    DEFAULT_DEADLINE,
    MAX_ERROR_BODY,
    RETRYABLE,
    RegistryError,
    RegistryStats,
    Transport,
    content_length,
    current_deadline,
    discard,
    error_from,
    released,
)

MAX_TAGS_BODY = 4 * 1024 * 1024  # one page of tags
MAX_TAGS_TOTAL = 16 * 1024 * 1024  # every page of one listing together
MAX_TAG_PAGES = 20
SINGLE_POST_MAX = 64 * 1024  # blobs up to this go in one POST, without asking first whether they exist
DEFAULT_MAX_BLOB_BYTES = 10 * 1024 * 1024 * 1024  # a streamed copy; CUDA-sized layers exist
DEFAULT_GET_BLOB_BYTES = 64 * 1024 * 1024  # what get_blob holds in memory by default
_VERSION_PARTS = re.compile(r"\d+|[^\d]+")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class RegistryClient:
    """OCI Distribution client; close() it or use it as a context manager.

    Safe to share between threads (httpx.Client is; caches are locked), though the stats counters
    are only exact when one thread uses the client. Registries on loopback addresses are reached
    over plain HTTP, as crane and docker do; any other host only when listed in ``plain_http_hosts``.
    ``token_hosts`` and ``storage_hosts`` name, per registry host, where its token realm and its
    redirects and upload locations may point besides itself (Google's are built in, see ``hosts``);
    ``deadline`` bounds each call in wall-clock seconds.
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
        token_hosts: Mapping[str, Iterable[str]] | None = None,
        storage_hosts: Mapping[str, Iterable[str]] | None = None,
        resolve: Resolver = resolve_addresses,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        policy = HostPolicy(token_hosts=token_hosts, storage_hosts=storage_hosts, resolve=resolve)
        self._net = Transport(plain_http_hosts=plain_http_hosts, allowed_hosts=allowed_hosts, retries=retries,
                              backoff=backoff, max_backoff=max_backoff, timeout=timeout, transport=transport,
                              sleep=sleep, policy=policy, deadline=deadline)
        # None: Google tokens for Google registries, anonymous elsewhere.
        self._auth = Authenticator(self._net, credentials if credentials is not None else GoogleTokenSource())
        self._session = Session(self._net, self._auth)
        self.max_manifest_bytes = max_manifest_bytes
        self.max_blob_bytes = max_blob_bytes
        self._lock = self._net.lock
        self._manifests = ManifestCache(manifest_cache_bytes)

    # The transport owns these; tests replace the counters and widen the host lists.
    @property
    def stats(self) -> RegistryStats:
        return self._net.stats

    @stats.setter
    def stats(self, value: RegistryStats) -> None:
        self._net.stats = value

    @property
    def plain_http_hosts(self) -> frozenset[str]:
        return self._net.plain_http_hosts

    @plain_http_hosts.setter
    def plain_http_hosts(self, hosts: Iterable[str]) -> None:
        self._net.plain_http_hosts = frozenset(h.lower() for h in hosts)

    @property
    def allowed_hosts(self) -> frozenset[str] | None:
        return self._net.allowed_hosts

    @allowed_hosts.setter
    def allowed_hosts(self, hosts: Iterable[str] | None) -> None:
        self._net.allowed_hosts = None if hosts is None else frozenset(h.lower() for h in hosts)

    @property
    def credentials(self) -> TokenSource:
        return self._auth.credentials

    def close(self) -> None:
        self._net.close()

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
        resp, raw = self._session.fetch(
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
        with self._net.call():
            digest = self._head_digest(ref, what)
        if digest is None:
            return None
        if oci.is_digest(digest):
            return digest
        return self.get_manifest(ref).digest  # registry without the header: read and hash

    def _head_digest(self, ref: ImageRef, what: str) -> str | None:
        """The digest a HEAD announced ("" when it announced none); None when the manifest does not exist."""
        resp = self._session.request("HEAD", ref, f"/v2/{ref.repository}/manifests/{ref.reference}",
                             scopes=(pull_scope(ref.repository),), headers=_accept(), what=what)
        with released(resp):
            self.stats.manifest_heads += 1
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise error_from(resp, what)
            return resp.headers.get("docker-content-digest") or ""

    def put_manifest(self, ref: ImageRef, raw: bytes, media_type: str) -> str:
        """PUT a manifest under ``ref``'s tag or digest; returns its digest (checked against the registry's)."""
        digest = oci.sha256_digest(raw)
        what = f"PUT manifest {ref}"
        if ref.digest and ref.digest != digest:
            raise RegistryError(f"{what}: content digest is {digest}", code="DIGEST_INVALID")
        if len(raw) > self.max_manifest_bytes:
            raise RegistryError(f"{what}: {len(raw)} bytes exceeds {self.max_manifest_bytes}", code="SIZE_INVALID")
        resp, _ = self._session.fetch("PUT", ref, f"/v2/{ref.repository}/manifests/{ref.reference}",
                              scopes=(push_scope(ref.repository),), headers={"Content-Type": media_type},
                              content=raw, cap=MAX_ERROR_BODY, what=what, ok=(200, 201))
        self.stats.manifest_puts += 1
        announced = resp.headers.get("docker-content-digest")
        if announced and announced != digest:
            raise RegistryError(f"{what}: registry stored {announced}, expected {digest}", code="DIGEST_INVALID")
        return digest

    # ------------------------------------------------------------ tags

    def list_tags(self, repo: ImageRef, *, page_size: int = 1000, max_pages: int = MAX_TAG_PAGES,
                  max_bytes: int = MAX_TAGS_TOTAL) -> list[str]:
        """The tags of a repository, following ``Link: <..>; rel="next"`` for at most ``max_pages``
        pages and ``max_bytes`` bytes of them all (a listing cut short is logged, not an error)."""
        tags: list[str] = []
        url: str = f"/v2/{repo.repository}/tags/list?n={page_size}"
        budget = max_bytes
        for _ in range(max_pages):
            try:
                resp, raw = self._session.fetch("GET", repo, url, scopes=(pull_scope(repo.repository),),
                                                cap=min(MAX_TAGS_BODY, budget), what=f"list tags {repo.name}")
            except RegistryError as e:
                if e.code != "SIZE_INVALID" or budget >= MAX_TAGS_BODY:
                    raise
                break  # this page does not fit what is left of the byte budget: keep the pages read
            budget -= len(raw)
            try:
                page = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError):
                raise RegistryError(f"list tags {repo.name}: response is not JSON", code="TAG_INVALID") from None
            listed = page.get("tags") if isinstance(page, dict) else None
            tags.extend(t for t in (listed if isinstance(listed, list) else []) if isinstance(t, str))
            nxt = _LINK_NEXT.search(resp.headers.get("link", ""))
            if not nxt:
                return tags
            url = nxt.group(1)
            if not url.startswith("/"):  # only same-host pagination: never follow a link elsewhere
                target = httpx.URL(url)
                if target.netloc.decode().lower() != repo.registry:
                    raise RegistryError(f"list tags {repo.name}: pagination link leaves the registry")
                url = target.raw_path.decode()
        log.warning("registry.tags_truncated", repository=repo.name, pages=max_pages, bytes=max_bytes - budget,
                    tags=len(tags))
        return tags

    # ------------------------------------------------------------ blobs

    def blob_exists(self, repo: ImageRef, digest: str) -> bool:
        what = f"HEAD blob {repo.name}@{digest}"
        with self._net.call(), released(self._session.request(
                "HEAD", repo, f"/v2/{repo.repository}/blobs/{digest}", scopes=(pull_scope(repo.repository),),
                what=what)) as resp:
            if resp.status_code == 200:
                return True
            if resp.status_code == 404:
                return False
            raise error_from(resp, what)

    def get_blob(self, repo: ImageRef, digest: str, max_bytes: int = DEFAULT_GET_BLOB_BYTES) -> bytes:
        """A blob's bytes, at most ``max_bytes``, verified against ``digest``."""
        if not oci.is_digest(digest):
            raise RegistryError(f"GET blob {repo.name}: bad digest {digest!r}", code="DIGEST_INVALID")
        what = f"GET blob {repo.name}@{digest}"
        _, data = self._session.fetch("GET", repo, f"/v2/{repo.repository}/blobs/{digest}",
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
        """Make ``digest`` exist in ``target``'s repository; returns "exists", "mounted" or "uploaded"."""
        return self.transfer_blob(target, digest, source)[0]

    def transfer_blob(self, target: ImageRef, digest: str, source: ImageRef) -> tuple[str, int]:
        """``mount_blob``'s outcome and the bytes streamed through this process (0 unless "uploaded").

        A cross-repository mount moves no bytes, and is asked for straight away: the registry answers
        201 whether or not the target had the blob, so a HEAD first would only add a round trip. When
        the registry declines (202, or still 401 after asking for pull on the source) the target is
        checked, then the blob is streamed from the source into an upload session, and the stats
        count it. The spec's mount names a repository of the target's own registry; for a source on
        another host, Google's registries also take ``origin=<source host>`` and mount from it
        (docs/OCI.md#blobs, go-containerregistry's cross-origin mount). Others ignore it and answer
        202: the copy is then logged with its bytes (``registry.cross_host_copy``).
        """
        across = source.registry != target.registry
        params = {"mount": digest, "from": source.repository}
        scopes: tuple[str, ...] = (push_scope(target.repository), pull_scope(source.repository))
        declined: tuple[int, ...] = (202, 401)
        if across:
            self._net.check_host(source.registry)  # never ask a registry to fetch from a host we may not use
            params["origin"] = source.registry
            scopes = scopes[:1]  # the target's token service has no say over the other host
            declined = (202, 400, 404)  # 400/404: a registry that refuses parameters it does not know
        what = f"mount {digest} from {source.name if across else source.repository} into {target.name}"
        with self._net.call(), released(self._session.request(
                "POST", target, f"/v2/{target.repository}/blobs/uploads/", params=params, scopes=scopes,
                what=what)) as resp:
            status, location = resp.status_code, resp.headers.get("location")
            if status != 201 and status not in declined:
                raise error_from(resp, what)
        if status == 201:
            with self._lock:
                self.stats.mounts += 1
            return "mounted", 0
        session = location if status == 202 else None
        if self.blob_exists(target, digest):  # declined, but already there: no copy needed
            if session:
                self._abandon_upload(target, session)
            return "exists", 0
        with self._lock:
            self.stats.mount_fallbacks += 1
        if not across:
            log.info("registry.mount_fallback", target=target.name, source=source.name, digest=digest, status=status)
        copied = self._copy_blob(target, digest, source, location=session)
        if across:
            log.warning("registry.cross_host_copy", target=target.name, source=source.name, digest=digest,
                        bytes=copied, status=status)
        return "uploaded", copied

    # ------------------------------------------------------------ uploads

    def _start_upload(self, repo: ImageRef, scopes: tuple[str, ...]) -> str:
        what = f"start upload {repo.name}"
        resp, _ = self._session.fetch("POST", repo, f"/v2/{repo.repository}/blobs/uploads/", scopes=scopes,
                              cap=MAX_ERROR_BODY, what=what, ok=(202,))
        return _session_location(resp, what)

    def _post_blob(self, repo: ImageRef, digest: str, data: bytes) -> str | None:
        """Single-POST upload: None when the registry stored the blob (201), else the Location of the
        upload session it opened instead (202)."""
        what = f"upload {digest} to {repo.name}"
        resp, _ = self._session.fetch("POST", repo, f"/v2/{repo.repository}/blobs/uploads/",
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
        url = httpx.URL(self._net.absolute(repo.registry, location)).copy_add_param("digest", digest)  # keep its query
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Content-Length"] = str(length)
        self._session.fetch("PUT", repo, str(url), scopes=(push_scope(repo.repository),), headers=headers, content=content,
                    cap=MAX_ERROR_BODY, what=f"upload {digest} to {repo.name}", ok=(201, 204),
                    replayable=isinstance(content, bytes))
        with self._lock:
            self.stats.uploads += 1
            if isinstance(content, bytes):
                self.stats.bytes_uploaded += len(content)

    def _copy_blob(self, target: ImageRef, digest: str, source: ImageRef, location: str | None) -> int:
        """Stream a blob from ``source`` into an upload session of ``target`` (bounded, verified); its size."""
        attempt = 0
        while True:
            try:
                if location is None:
                    location = self._start_upload(target, scopes=(push_scope(target.repository),))
                return self._stream_copy(target, digest, source, location)
            except (RegistryError, httpx.TransportError) as e:
                transient = isinstance(e, httpx.TransportError) or (e.status in RETRYABLE if isinstance(e, RegistryError) else False)
                if location is not None:
                    self._abandon_upload(target, location)
                if not transient or attempt >= self._net.retries:
                    if isinstance(e, httpx.TransportError):
                        raise RegistryError(f"copy {digest} into {target.name}: {type(e).__name__}") from e
                    raise
                location = None  # a failed session is not reused
                self._net.pause(attempt, None)
                attempt += 1

    def _abandon_upload(self, repo: ImageRef, location: str) -> None:
        """Best-effort DELETE of an upload session we will not finish, so it does not linger."""
        try:
            with self._net.call():
                discard(self._session.request("DELETE", repo, location, scopes=(push_scope(repo.repository),),
                                              what=f"cancel upload {repo.name}", replayable=False))
        except (RegistryError, httpx.HTTPError):
            pass

    def _stream_copy(self, target: ImageRef, digest: str, source: ImageRef, location: str) -> int:
        with self._net.call():
            return self._stream_copy_within(target, digest, source, location)

    def _stream_copy_within(self, target: ImageRef, digest: str, source: ImageRef, location: str) -> int:
        what = f"GET blob {source.name}@{digest}"
        resp = self._session.request("GET", source, f"/v2/{source.repository}/blobs/{digest}",
                             scopes=(pull_scope(source.repository),), what=what)
        with released(resp):
            if resp.status_code != 200:
                raise error_from(resp, what)
            length = content_length(resp)
            if length is not None and length > self.max_blob_bytes:
                raise RegistryError(f"{what}: {length} bytes exceeds {self.max_blob_bytes}", code="SIZE_INVALID")
            hasher, total, deadline = hashlib.sha256(), [0], current_deadline()

            def body() -> Iterator[bytes]:
                for chunk in resp.iter_bytes():
                    if deadline is not None:
                        deadline.check(what)
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
        return total[0]

    def _count_download(self, digest: str, n: int) -> None:
        with self._lock:
            self.stats.blob_gets += 1
            self.stats.bytes_downloaded += n
            self.stats.blobs_fetched.append(digest)


def _accept() -> dict[str, str]:
    return {"Accept": ", ".join(oci.ACCEPT_MANIFEST)}


def _session_location(resp: httpx.Response, what: str) -> str:
    location = resp.headers.get("location")
    if not location:
        raise RegistryError(f"{what}: 202 without Location", status=202)
    return location


def newest_tags(tags: Iterable[str], keep: int) -> list[str]:
    """The ``keep`` newest-looking tags, newest first: registries list tags lexically and without dates,
    so versions are compared with their numbers as numbers (``3.12.10`` after ``3.12.9``)."""
    return heapq.nlargest(keep, set(tags), key=_version_key)


def _version_key(tag: str) -> tuple[tuple[int, int, str], ...]:
    # A number compares by its length without leading zeros, then its digits: no int() of a 5,000-digit tag.
    return tuple((1, len(p.lstrip("0")), p.lstrip("0")) if p.isdigit() else (0, 0, p) for p in _VERSION_PARTS.findall(tag))

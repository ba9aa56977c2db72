"""Image references: parsing, normalisation and the registry allow-list check.

Grammar follows the distribution reference format: ``host[:port]/path[:tag][@sha256:<64 hex>]``.
baseroll only handles fully qualified references (an explicit registry host), because an
implicit Docker Hub default would let an event name a registry nobody configured.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

MAX_REF_LEN = 1024
_HOST = re.compile(
    r"^(?:localhost|(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?))*|\[[0-9a-f:]+\])(?::[0-9]{1,5})?$"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RefError(ValueError):
    """An image reference that is malformed or not fully qualified."""


@dataclass(frozen=True, order=True)
class ImageRef:
    registry: str  # host[:port], lower case
    repository: str  # path inside the registry, e.g. "proj/repo/img"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        if self.digest:
            return self.digest
        if self.tag:
            return self.tag
        raise RefError(f"{self.name} has neither tag nor digest")

    def with_digest(self, digest: str) -> "ImageRef":
        """The same image pinned by digest; the tag is dropped so the result is exact."""
        if not DIGEST.fullmatch(digest):
            raise RefError(f"not a sha256 digest: {digest!r}")
        return ImageRef(self.registry, self.repository, None, digest)

    def at(self, digest: str) -> "ImageRef":
        """The tag's image at `digest`: tag kept for naming (e.g. OCI base annotations), digest for fetching."""
        if not DIGEST.fullmatch(digest):
            raise RefError(f"not a sha256 digest: {digest!r}")
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def pinned(self) -> "ImageRef":
        """Exactly this digest, without the tag (what gets deployed)."""
        if not self.digest:
            raise RefError(f"{self} is not pinned by a digest")
        return ImageRef(self.registry, self.repository, None, self.digest)

    def with_tag(self, tag: str | None) -> "ImageRef":
        return ImageRef(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse(text: str) -> ImageRef:
    """Parse a fully qualified image reference, or raise RefError saying why."""
    if not isinstance(text, str):
        raise RefError(f"image reference must be a string, got {type(text).__name__}")
    return _parse(text)


# A fleet names the same few hundred images thousands of times: planning 10,000 services parsed
# each of them again and again (most of the pure planner's time). A refused text is not cached.
@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> ImageRef:
    if not text or len(text) > MAX_REF_LEN:
        raise RefError(f"image reference is empty or longer than {MAX_REF_LEN} characters")
    if any(c.isspace() for c in text) or "\x00" in text:
        raise RefError(f"image reference contains whitespace or control characters: {text!r}")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST.fullmatch(digest):
            raise RefError(f"bad digest in {text!r}: expected sha256:<64 lower-case hex>")
    host, sep, path = rest.partition("/")
    if not sep or not path:
        raise RefError(f"{text!r} is not fully qualified: expected host/path")
    host = host.lower()
    if not ("." in host or ":" in host or host == "localhost" or host.startswith("[")):
        raise RefError(f"{text!r} is not fully qualified: {host!r} is not a registry host")
    if not _HOST.fullmatch(host):
        raise RefError(f"bad registry host {host!r} in {text!r}")
    port_text = host.rsplit("]", 1)[1].lstrip(":") if host.startswith("[") else host.partition(":")[2]
    if port_text and not 0 < int(port_text) < 65536:
        raise RefError(f"bad port in {text!r}")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise RefError(f"bad tag {tag!r} in {text!r}")
    components = path.split("/")
    for comp in components:
        if not _PATH_COMPONENT.fullmatch(comp):
            raise RefError(f"bad repository path component {comp!r} in {text!r} (lower case, no '..')")
    if len(path) > 255:
        raise RefError(f"repository path too long in {text!r}")
    return ImageRef(host, path, tag, digest)


def is_allowed(ref: ImageRef, allowed_registries: frozenset[str] | set[str] | list[str]) -> bool:
    """True when the reference's registry host is on the allow-list (exact host[:port] match)."""
    return ref.registry in {h.lower() for h in allowed_registries}

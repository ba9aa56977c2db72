"""Every version of a base image in Artifact Registry, tagged or not (docs/GOOGLE_APIS.md#artifact-registry).

The OCI tags API only shows what tags point at now; once a base's track tag moves, the version an
app was built on may have no tag left. Artifact Registry's ListVersions still lists it, so
``Catalog(version_lister=...)`` reads its manifest digests besides the tags. A listed version is
evidence only: it counts as a version of a track when that track's tags or recorded history tie it
to it (``rollout.lineage``); one tied to no track is of unknown lineage, and an app on it is skipped.

The google-cloud-artifact-registry client is imported and created on first use, never at import,
so tests and non-Google registries never load it or touch Application Default Credentials.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from baseroll import log
from baseroll.images import oci
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryError

# LOCATION-docker.pkg.dev: "us", "europe-west1", ...
_AR_HOST = re.compile(r"^([a-z][a-z0-9-]*[a-z0-9])-docker\.pkg\.dev$")
MAX_PAGE_SIZE = 1000  # the API's own cap
DEFAULT_PAGE_SIZE = 500
DEFAULT_MAX_PAGES = 10
DEFAULT_MAX_VERSIONS = 2000
DEFAULT_TIMEOUT = 30.0  # seconds per RPC


class ArtifactRegistryError(RegistryError):
    """Artifact Registry could not be asked (auth, permission, quota, transport)."""


@dataclass(frozen=True)
class PackagePath:
    project: str
    location: str
    repository: str
    image: str  # unescaped, may contain "/"

    @property
    def repository_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/repositories/{self.repository}"

    @property
    def package_name(self) -> str:
        """``.../packages/IMAGE`` with every "/" of the image escaped as %2F."""
        return f"{self.repository_name}/packages/{self.image.replace('/', '%2F')}"


def is_artifact_registry(ref: ImageRef) -> bool:
    return bool(_AR_HOST.fullmatch(ref.registry))


def package_path(ref: ImageRef) -> PackagePath:
    """``LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE[/...]`` → its Artifact Registry package.

    A domain-scoped project (``example.com:proj``) appears in Docker paths as ``example.com/proj``;
    project IDs never contain a dot, so a first component with one is such a domain.
    """
    m = _AR_HOST.fullmatch(ref.registry)
    if not m:
        raise ValueError(f"{ref.name} is not on an Artifact Registry Docker host (LOCATION-docker.pkg.dev)")
    parts = ref.repository.split("/")
    if len(parts) >= 2 and "." in parts[0]:
        parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
    if len(parts) < 3:
        raise ValueError(f"{ref.name}: expected LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE")
    return PackagePath(project=parts[0], location=m.group(1), repository=parts[1], image="/".join(parts[2:]))


def default_retry() -> Any:
    """google-api-core retry for transient errors: exponential backoff, bounded by a deadline."""
    from google.api_core import exceptions, retry

    return retry.Retry(
        predicate=retry.if_exception_type(
            exceptions.ServiceUnavailable,
            exceptions.DeadlineExceeded,
            exceptions.InternalServerError,
            exceptions.TooManyRequests,
            exceptions.ResourceExhausted,
        ),
        initial=0.5,
        maximum=10.0,
        multiplier=2.0,
        timeout=60.0,
    )


class ArtifactRegistryVersions:
    """Callable ``(repo_ref) -> list[str]``: manifest digests of all versions of an image.

    Bounded: at most ``max_pages`` RPCs of ``page_size`` and ``max_versions`` digests per call
    (a warning is logged when the bound cuts the listing). ``client`` is any object with the
    ``list_versions`` method of ``artifactregistry_v1.ArtifactRegistryClient``;
    by default that client is created on first use.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        client_factory: Callable[[], Any] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = DEFAULT_MAX_PAGES,
        max_versions: int = DEFAULT_MAX_VERSIONS,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Any = None,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        if max_pages < 1 or max_versions < 1:
            raise ValueError("max_pages and max_versions must be positive")
        self._client = client
        self._factory = client_factory or _default_client
        self._lock = threading.Lock()
        self.page_size = page_size
        self.max_pages = max_pages
        self.max_versions = max_versions
        self.timeout = timeout
        self._retry = retry

    def __call__(self, repo_ref: ImageRef) -> list[str]:
        return self.versions(repo_ref)

    def versions(self, repo_ref: ImageRef) -> list[str]:
        """Digests of every version (ListVersions on the image's package), in the API's order, deduplicated.

        A package that does not exist has no versions: ``[]``.
        """
        pkg = package_path(repo_ref)
        found: list[str] = []
        for response in self._pages(pkg.package_name, repo_ref):
            for version in response.versions:
                digest = str(version.name).rsplit("/versions/", 1)[-1]
                if oci.is_digest(digest):
                    found.append(digest)
        return self._bounded(found, repo_ref)

    # ------------------------------------------------------------ internals

    def _api(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def _pages(self, parent: str, repo_ref: ImageRef) -> Iterator[Any]:
        """One ListVersions response per RPC, following next_page_token for at most max_pages (and max_versions).

        Each RPC is a separate call with its own page_token (only the first page of the returned
        pager is read), so every page gets the retry and the bound is exact.
        """
        import google.auth.exceptions  # lazy, like the client
        from google.api_core import exceptions

        token, pages, seen = "", 0, 0
        while True:
            request = {"parent": parent, "page_size": min(self.page_size, self.max_versions - seen), "page_token": token}
            try:
                response = self._api().list_versions(request=request, retry=self._retry or default_retry(),
                                                     timeout=self.timeout)
            except exceptions.NotFound:
                return
            except (exceptions.GoogleAPIError, google.auth.exceptions.GoogleAuthError) as e:
                status = getattr(e, "code", None)
                raise ArtifactRegistryError(f"list_versions {parent}: {type(e).__name__}: {e}",
                                            status=status if isinstance(status, int) else None) from e
            pages += 1
            seen += len(response.versions)
            yield response
            token = getattr(response, "next_page_token", "") or ""
            if not token:
                return
            if pages >= self.max_pages or seen >= self.max_versions:
                log.warning("artifact_registry.listing_truncated", image=repo_ref.name, method="list_versions",
                            pages=pages, items=seen, max_pages=self.max_pages, max_versions=self.max_versions)
                return

    def _bounded(self, digests: list[str], repo_ref: ImageRef) -> list[str]:
        unique = list(dict.fromkeys(digests))
        if len(unique) > self.max_versions:
            log.warning("artifact_registry.versions_truncated", image=repo_ref.name, found=len(unique),
                        max_versions=self.max_versions)
        return unique[: self.max_versions]


def _default_client() -> Any:
    try:
        from google.cloud import artifactregistry_v1
    except ImportError as e:  # pragma: no cover - the dependency is pinned in requirements.txt
        raise ArtifactRegistryError("google-cloud-artifact-registry is not installed") from e
    import google.auth.exceptions

    try:
        return artifactregistry_v1.ArtifactRegistryClient()
    except google.auth.exceptions.GoogleAuthError as e:
        raise ArtifactRegistryError(f"no Google credentials for Artifact Registry: {type(e).__name__}",
                                    code="UNAUTHORIZED") from None


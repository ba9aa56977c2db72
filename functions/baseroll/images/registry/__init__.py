"""The registry client (OCI Distribution), in layers: ``transport`` (HTTP, retries, redirects, caps),
``hosts`` (where a registry may send us), ``auth`` (challenges, credentials, tokens), ``session`` (one authorised call) and ``client`` (the verbs).

Callers import from here: ``from baseroll.images.registry import RegistryClient, RegistryError``.
"""
from baseroll.images.registry.auth import (
    GOOGLE_SCOPE,
    GoogleTokenSource,
    StaticCredentials,
    TokenSource,
    parse_challenge,
    pull_scope,
    push_scope,
)
from baseroll.images.registry.client import (
    DEFAULT_GET_BLOB_BYTES,
    DEFAULT_MAX_BLOB_BYTES,
    SINGLE_POST_MAX,
    RegistryClient,
    newest_tags,
)
from baseroll.images.registry.hosts import HostPolicy
from baseroll.images.registry.manifest import Manifest
from baseroll.images.registry.transport import (
    DEADLINE_EXCEEDED,
    RegistryError,
    RegistryStats,
    is_loopback,
)

__all__ = [
    "DEADLINE_EXCEEDED",
    "DEFAULT_GET_BLOB_BYTES",
    "DEFAULT_MAX_BLOB_BYTES",
    "GOOGLE_SCOPE",
    "SINGLE_POST_MAX",
    "GoogleTokenSource",
    "HostPolicy",
    "Manifest",
    "RegistryClient",
    "RegistryError",
    "RegistryStats",
    "StaticCredentials",
    "TokenSource",
    "is_loopback",
    "newest_tags",
    "parse_challenge",
    "pull_scope",
    "push_scope",
]

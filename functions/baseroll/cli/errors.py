"""Expected failures as one line: what failed, and what to try. Anything else is a bug and keeps its traceback.

A registry that lacks an image, missing Google credentials, an endpoint that does not answer: these
are the user's environment, not baseroll's code, so a traceback would only hide the one fact that
matters. `--debug` shows the traceback anyway.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from baseroll.cli.common import EXIT_FAILED, EXIT_INVALID

if TYPE_CHECKING:
    from baseroll.images.registry import RegistryError

_MISSING_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})
_AUTH_CODES = frozenset({"UNAUTHORIZED", "DENIED"})
CREDENTIALS_HINT = ("run `gcloud auth application-default login`, or, against the local stack, "
                    "export the lines `make up` prints")


def explain(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an expected failure; None for anything else."""
    # Imported here: on the error path only, so `publish` never loads the registry client.
    from baseroll.config import ConfigError
    from baseroll.fleet.view import FleetError
    from baseroll.images.refs import RefError
    from baseroll.images.registry import RegistryError

    if isinstance(exc, ConfigError):  # e.g. a registry password the configuration names is missing
        return EXIT_INVALID, f"config: {exc}"
    if isinstance(exc, RegistryError):
        return EXIT_FAILED, _registry(exc)
    if isinstance(exc, RefError):
        return EXIT_INVALID, str(exc)
    if isinstance(exc, FleetError):
        return EXIT_FAILED, f"Cloud Run: {exc}"
    module = type(exc).__module__
    if module.startswith("google."):
        return _google(exc)
    if module.startswith(("requests.", "urllib3.")) or isinstance(exc, ConnectionError):
        return EXIT_FAILED, _unreachable(exc)
    return None


def _unreachable(exc: BaseException) -> str:
    """The Cloud Run client's REST transport (requests) lets a refused connection through as is."""
    from urllib.parse import urlsplit

    url = getattr(getattr(exc, "request", None), "url", None)
    if not url:
        return f"cannot connect: {_first_line(exc)}"
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    return (f"cannot reach {origin} ({type(exc).__name__}): is cloud_run_endpoint in the config right, "
            "and the server running (`make up` starts the local stack)?")


def _registry(exc: "RegistryError") -> str:
    text = str(exc)
    if exc.status == 404 or exc.code in _MISSING_CODES or "not found" in text or "does not exist" in text:
        return f"registry: {text}; check the reference, or push the image first"
    if exc.status in (401, 403) or exc.code in _AUTH_CODES:
        return f"registry: {text}; {CREDENTIALS_HINT}"
    return f"registry: {text}"


def _google(exc: BaseException) -> tuple[int, str] | None:
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return EXIT_FAILED, f"no Google credentials: {CREDENTIALS_HINT}"
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return EXIT_FAILED, f"Google credentials refused ({_first_line(exc)}): {CREDENTIALS_HINT}"
    if isinstance(exc, (api_exceptions.Unauthenticated, api_exceptions.PermissionDenied)):
        return EXIT_FAILED, f"{type(exc).__name__}: {_first_line(exc)}; {CREDENTIALS_HINT}"
    if isinstance(exc, (api_exceptions.RetryError, api_exceptions.ServiceUnavailable,
                        api_exceptions.DeadlineExceeded)):
        return EXIT_FAILED, (f"{type(exc).__name__}: {_first_line(exc)}; is the endpoint reachable "
                             "(cloud_run_endpoint in the config, PUBSUB_EMULATOR_HOST)?")
    if isinstance(exc, api_exceptions.GoogleAPIError):
        return EXIT_FAILED, f"{type(exc).__name__}: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]

"""What every resource kind of the stand-in (services, jobs, worker pools, revisions, executions) checks
and pages the same way: reserved label keys, containers, etags, and list pages with their tokens
(docs/GOOGLE_APIS.md#cloud-run-admin-api-v2)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from google.cloud import run_v2

from .common import MAX_CONTAINERS, RESERVED_PREFIXES, ApiError, decode_token, encode_token, page_size
from .images import parse_image


def check_keys(where_mappings: Iterable[tuple[str, Mapping[str, str]]]) -> None:
    """v2 refuses labels and annotations in the system namespaces."""
    for where, mapping in where_mappings:
        for key in mapping:
            domain = key.split("/", 1)[0] if "/" in key else ""
            if any(domain == p or domain.endswith("." + p) for p in RESERVED_PREFIXES):
                raise ApiError(400, f"Invalid {where} key '{key}': system {where.split('.')[-1]} in the "
                                    f"'{domain}' namespace are not supported in the v2 API.")


def check_containers(containers: Iterable[run_v2.Container], where: str) -> None:
    containers = list(containers)
    if not 1 <= len(containers) <= MAX_CONTAINERS:
        raise ApiError(400, f"{where} must have between 1 and {MAX_CONTAINERS} entries.")
    for i, c in enumerate(containers):
        if not c.image:
            raise ApiError(400, f"{where}[{i}].image: must be set.")
        try:
            parse_image(c.image)
        except ValueError as e:
            raise ApiError(400, f"{where}[{i}].image: {e}") from None


def check_etag(given: str, current: str, rid: str) -> None:
    if given and given != current:
        raise ApiError(409, f"Precondition failed: etag '{given}' does not match the current etag of '{rid}'.")


def names_page(names: Iterable[str], project: str, location: str, collection: str, size: int,
               token: str) -> tuple[list[str], str]:
    """One page of the names under `projects/P/locations/L/{collection}/`, sorted; the token is the last
    name returned. A listing needs a concrete region."""
    if location == "-":
        raise ApiError(400, f"Cloud Run does not support listing {collection} across all regions (location '-').")
    parent = f"projects/{project}/locations/{location}"
    size = page_size(size)
    after = decode_token(parent, token)
    chosen = sorted(n for n in names if n.startswith(f"{parent}/{collection}/") and (after is None or n > after))
    return chosen[:size], encode_token(parent, chosen[size - 1]) if len(chosen) > size else ""


def newest_first_page(records: Sequence[Any], parent: str, size: int, token: str,
                      message: Callable[[Any], Any]) -> tuple[list[Any], str]:
    """One page of a parent's revisions or executions, newest first (like `gcloud run revisions list`):
    `records` carry a `seq`; the token is the last sequence number returned. Call under the lock."""
    size = page_size(size)
    after = decode_token(parent, token)
    recs = sorted(records, key=lambda r: -r.seq)
    if after is not None:
        recs = [r for r in recs if r.seq < int(after)]
    return [message(r) for r in recs[:size]], encode_token(parent, str(recs[size - 1].seq)) if len(recs) > size else ""

"""The registry client against a hostile registry and an attacker host, both real servers on 127.0.0.1
(infra/local/hostile_registry.py). Each guard test is built so that the guard it names is the only
one between the client and the attacker host: every other guard would let the request through.
The attacker host records every request and header it sees; "never contacted" means it saw none."""
from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from baseroll.images import oci
from baseroll.images.refs import ImageRef
from baseroll.images.registry import (
    DEADLINE_EXCEEDED,
    RegistryClient,
    RegistryError,
    StaticCredentials,
)

from infra.local.hostile_registry import METADATA_FORMS, SLOW_BYTE_INTERVAL_S, Hostile

SECRET = ("robot", "hostile-test-SECRET")
D1 = "sha256:" + "1" * 64


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    with Hostile() as h:
        yield h


@pytest.fixture(autouse=True)
def fresh_attacker(hostile: Hostile) -> None:
    hostile.attacker.seen.clear()


def client(h: Hostile, *, allowed: list[str] | None = None, **kw: Any) -> RegistryClient:
    reg = h.registry.host
    kw.setdefault("credentials", StaticCredentials({reg: SECRET, h.attacker.host: SECRET}))
    kw.setdefault("timeout", 5.0)
    return RegistryClient(allowed_hosts=[reg, *(allowed or [])], retries=1, backoff=0.01, **kw)


def app(h: Hostile, case: str, tag: str = "v1") -> ImageRef:
    return ImageRef(h.registry.host, f"{case}/app", tag)


def refused(call: Any, *args: Any) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        call(*args)
    return info.value


def untouched(h: Hostile) -> None:
    assert h.attacker.seen == [], [(s.method, s.path) for s in h.attacker.seen]


# ------------------------------------------------------------------ one guard at a time


def test_challenge_only_from_the_registry_itself(hostile):
    """The registry redirects to a storage host it may use; that host answers 401 naming itself as
    realm, and it is even a token host and allow-listed: only the challenge-origin check stops the
    client from sending the registry's credentials there."""
    a = hostile.attacker.host
    c = client(hostile, allowed=[a], storage_hosts={hostile.registry.host: [a]}, token_hosts={hostile.registry.host: [a]})
    err = refused(c.get_manifest, app(hostile, "storage-challenge"))
    assert err.status == 401
    assert [s.path.split("?")[0] for s in hostile.attacker.seen] == ["/storage/v2/storage-challenge/app/manifests/v1"]
    assert hostile.attacker.credentials_seen() == []


def test_realm_must_be_the_registry_or_one_of_its_token_hosts(hostile):
    """The realm's host is allow-listed and loopback named by a loopback registry (so plain http is
    fine): only the token-host list refuses it."""
    c = client(hostile, allowed=[hostile.attacker.host])
    err = refused(c.get_manifest, app(hostile, "realm-elsewhere"))
    assert err.code == "DENIED" and "realm" in str(err)
    untouched(hostile)


def test_a_token_host_must_also_be_allow_listed(hostile):
    """The realm is a named token host: only the allow-list refuses it."""
    c = client(hostile, token_hosts={hostile.registry.host: [hostile.attacker.host]})
    err = refused(c.get_manifest, app(hostile, "realm-elsewhere"))
    assert err.code == "DENIED" and "not an allowed registry host" in str(err)
    untouched(hostile)


def test_redirects_only_to_the_registry_or_its_storage_hosts(hostile):
    """A redirect to plain http on loopback from a loopback registry passes the scheme and address
    checks: only the storage-host list refuses it."""
    err = refused(client(hostile).get_manifest, app(hostile, "redirect"))
    assert err.code == "DENIED" and "storage hosts" in str(err)
    untouched(hostile)


def test_upload_locations_only_to_the_registry_or_its_storage_hosts(hostile):
    c = client(hostile)
    err = refused(c.put_blob, ImageRef(hostile.registry.host, "upload-elsewhere/app"), b"config bytes")
    assert err.code == "DENIED" and "storage hosts" in str(err)
    untouched(hostile)


@pytest.mark.parametrize("form", sorted(METADATA_FORMS))
def test_metadata_address_in_any_spelling_is_refused_even_when_named(hostile, form):
    """The registry names the metadata server as a storage host (misconfigured, or spelled to slip
    past a list): the address check alone refuses it, before any connection."""
    c = client(hostile, storage_hosts={hostile.registry.host: [METADATA_FORMS[form]]})
    err = refused(c.get_manifest, app(hostile, f"metadata-{form}"))
    assert err.code == "DENIED" and ("link-local" in str(err) or "metadata server" in str(err)), err
    assert c.stats.requests == 1  # the redirect itself, nothing after it


# ------------------------------------------------------------------ bounded in time and memory


def test_a_slowloris_registry_cannot_hold_a_call_past_its_deadline(hostile):
    deadline = 2.0
    c = client(hostile, deadline=deadline, timeout=30.0)
    started = time.monotonic()
    err = refused(c.get_manifest, app(hostile, "slowloris"))
    elapsed = time.monotonic() - started
    assert err.code == DEADLINE_EXCEEDED, err
    # Checked after every byte: past the deadline by at most the gap between two bytes.
    assert deadline <= elapsed <= deadline + SLOW_BYTE_INTERVAL_S + 0.3, elapsed


def test_a_ten_gigabyte_content_length_is_refused_before_reading(hostile):
    c = client(hostile)
    started = time.monotonic()
    err = refused(c.get_manifest, app(hostile, "ten-gb"))
    assert err.code == "SIZE_INVALID" and time.monotonic() - started < 2
    err = refused(c.get_blob, ImageRef(hostile.registry.host, "ten-gb/app"), D1)
    assert err.code == "SIZE_INVALID"


# ------------------------------------------------------------------ content that lies


def test_digest_mismatch_and_self_referencing_index_are_refused(hostile):
    c = client(hostile)
    assert refused(c.get_manifest, app(hostile, "digest-mismatch")).code == "DIGEST_INVALID"
    index = c.get_manifest(app(hostile, "self-index"))
    child = index.data["manifests"][0]["digest"]
    err = refused(c.get_manifest, ImageRef(hostile.registry.host, "self-index/app", digest=child))
    assert err.code == "DIGEST_INVALID"  # the server answers the child's digest with the index itself


def test_wrong_types_and_huge_numbers_are_read_as_bytes_not_trusted(hostile):
    c = client(hostile)
    try:  # refused as invalid, or read for the image model to check: never a TypeError out of the client
        c.get_manifest(app(hostile, "wrong-types"))
    except RegistryError as e:
        assert e.code == "MANIFEST_INVALID", e
    err = refused(c.get_manifest, app(hostile, "huge-number"))
    assert err.code == "MANIFEST_INVALID", err
    assert oci.MAX_MANIFEST_BYTES > 5000  # refused for the number, not for its size


def test_no_credential_ever_reaches_the_attacker_host(hostile):
    """Every trick, one after the other, with credentials configured for both hosts."""
    c = client(hostile)
    for case in ("redirect", "realm-elsewhere", "storage-challenge", "upload-elsewhere",
                 *(f"metadata-{k}" for k in METADATA_FORMS)):
        try:
            c.get_manifest(app(hostile, case))
            c.put_blob(ImageRef(hostile.registry.host, f"{case}/app"), b"x")
        except RegistryError:
            pass
    assert hostile.attacker.credentials_seen() == []

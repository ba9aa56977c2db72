"""Where a registry may send the client (images/registry/hosts.py), on mock transports that record
every host contacted. Each guard test is built so that the guard it names alone decides: the
registry is https with a named storage or token host, so the scheme, list and allow-list checks all
pass, and "never contacted" is the mock's record."""
from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from baseroll.images.refs import ImageRef
from baseroll.images.registry import (
    DEADLINE_EXCEEDED,
    HostPolicy,
    RegistryClient,
    RegistryError,
    RegistryStats,
    StaticCredentials,
    newest_tags,
)
from baseroll.images.registry.hosts import address, normal_host, normal_netloc
from baseroll.images.registry.transport import MAX_FETCHED_RECORDED

REG = "reg.example"
STORAGE = "storage.example"
D1 = "sha256:" + "1" * 64
PUBLIC = "142.250.1.1"


@pytest.mark.parametrize("spelled, canonical", [
    ("2852039166", "169.254.169.254"), ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"), ("[::ffff:169.254.169.254]", "169.254.169.254"),
    ("::ffff:a9fe:a9fe", "169.254.169.254"), ("METADATA.google.internal.", "metadata.google.internal"),
    ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("reg.example.", "reg.example"),
    ("deadbeef.example", "deadbeef.example"), ("1.2.3.4.example", "1.2.3.4.example"),
])
def test_hosts_are_normalised_the_way_a_resolver_reads_them(spelled, canonical):
    assert normal_host(spelled) == canonical
    assert normal_netloc("[::ffff:7f00:1]:5000") == "127.0.0.1:5000"
    assert address("reg.example") is None and address("") is None


@pytest.mark.parametrize("target, why", [
    ("2852039166", "link-local"), ("0xa9.0xfe.0xa9.0xfe", "link-local"), ("[::ffff:169.254.169.254]", "link-local"),
    ("metadata.google.internal.", "metadata server"), ("[fe80::1]", "link-local"), ("10.1.2.3", "private"),
    ("192.168.0.1", "private"), ("127.0.0.1", "loopback"), ("0x7f000001", "loopback"), ("0.0.0.0", "reserved"),
])
def test_named_storage_hosts_still_pass_the_address_checks(target, why):
    policy = HostPolicy(storage_hosts={REG: [target]}, resolve=lambda h: [PUBLIC])
    assert why in (policy.refusal(target, REG, "storage") or "")
    assert policy.refusal(target, "127.0.0.1:5000", "storage") != policy.refusal(target, REG, "storage") or why != "loopback"


def test_names_are_resolved_and_every_address_checked():
    policy = HostPolicy(storage_hosts={REG: [STORAGE]}, resolve=lambda h: [PUBLIC, "169.254.169.254"])
    assert "resolves to 169.254.169.254" in policy.refusal(STORAGE, REG, "storage")
    assert "does not resolve" in HostPolicy(storage_hosts={REG: [STORAGE]}, resolve=lambda h: []).refusal(
        STORAGE, REG, "storage")
    assert HostPolicy(storage_hosts={REG: [STORAGE]}, resolve=lambda h: [PUBLIC]).refusal(STORAGE, REG, "storage") is None
    # Loopback only for a loopback registry; the registry itself always.
    loop = HostPolicy(storage_hosts={"127.0.0.1:5000": ["localhost:6000"]}, resolve=lambda h: ["127.0.0.1"])
    assert loop.refusal("localhost:6000", "127.0.0.1:5000", "storage") is None
    assert loop.refusal("2130706433:5000", "127.0.0.1:5000", "storage") is None  # the registry, spelled otherwise


def test_google_registries_have_known_token_and_storage_hosts():
    policy = HostPolicy(resolve=lambda h: [PUBLIC])
    assert policy.token_hosts("eu.gcr.io") == {"gcr.io"} and policy.token_hosts("us-docker.pkg.dev") == set()
    assert policy.storage_hosts("us-docker.pkg.dev") == {"storage.googleapis.com"} == policy.storage_hosts("gcr.io")
    assert policy.refusal("storage.googleapis.com", "gcr.io", "storage") is None
    assert policy.refusal("storage.googleapis.com", "gcr.io", "realm") is not None
    assert policy.storage_hosts("reg.example") == set()


# ------------------------------------------------------------------ guards on a mock network


class Net:
    """A registry at REG that hands out ``location`` (redirect) or ``realm``, and records every host asked."""

    def __init__(self, *, redirect: str | None = None, realm: str | None = None) -> None:
        self.redirect, self.realm = redirect, realm
        self.hosts: list[str] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.hosts.append(req.url.netloc.decode())
        if req.url.host != REG:
            return httpx.Response(200, json={"token": "t"})
        if self.realm and "authorization" not in req.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{self.realm}",service="s"'})
        return httpx.Response(307, headers={"Location": self.redirect}) if self.redirect else httpx.Response(404)


def mock(net: Net, **kw: Any) -> RegistryClient:
    kw.setdefault("credentials", StaticCredentials({REG: ("u", "p")}))
    return RegistryClient(transport=httpx.MockTransport(net), retries=0, sleep=lambda s: None, **kw)


@pytest.mark.parametrize("resolved", ["169.254.169.254", "::ffff:169.254.169.254", "127.0.0.1", "10.0.0.7"])
def test_address_guard_alone_refuses_a_named_https_storage_host(resolved):
    net = Net(redirect=f"https://{STORAGE}/blob")
    c = mock(net, storage_hosts={REG: [STORAGE]}, resolve=lambda h: [resolved])
    with pytest.raises(RegistryError, match="refused location"):
        c.get_blob(ImageRef(REG, "a"), D1)
    assert net.hosts == [REG]


@pytest.mark.parametrize("spelled", ["2852039166", "0xa9.0xfe.0xa9.0xfe", "[::ffff:169.254.169.254]",
                                     "metadata.google.internal."])
def test_metadata_spellings_are_refused_even_when_listed(spelled):
    net = Net(redirect=f"https://{spelled}/computeMetadata/v1/token")
    c = mock(net, storage_hosts={REG: [spelled]}, resolve=lambda h: [PUBLIC])
    with pytest.raises(RegistryError, match="refused location"):
        c.get_blob(ImageRef(REG, "a"), D1)
    assert net.hosts == [REG]


def test_scheme_guard_alone_refuses_https_to_http():
    net = Net(redirect=f"http://{STORAGE}/blob")
    c = mock(net, storage_hosts={REG: [STORAGE]}, resolve=lambda h: [PUBLIC])
    with pytest.raises(RegistryError, match="from https to http"):
        c.get_blob(ImageRef(REG, "a"), D1)
    assert net.hosts == [REG]


def test_realm_address_guard_alone_refuses_a_listed_allowed_token_host():
    net = Net(realm="https://auth.example/token")
    c = mock(net, allowed_hosts=[REG, "auth.example"], token_hosts={REG: ["auth.example"]},
             resolve=lambda h: ["169.254.169.254"])
    with pytest.raises(RegistryError, match="refused token realm"):
        c.get_manifest(ImageRef(REG, "a", "t"))
    assert net.hosts == [REG]


def test_a_listed_public_token_host_gets_the_credentials():
    net = Net(realm="https://auth.example/token")
    c = mock(net, token_hosts={REG: ["auth.example"]}, resolve=lambda h: [PUBLIC])
    with pytest.raises(RegistryError):  # the mock answers 307 to nowhere after the token: only the realm matters
        c.get_manifest(ImageRef(REG, "a", "t"))
    assert net.hosts[:2] == [REG, "auth.example"]


# ------------------------------------------------------------------ bounded


def test_backoff_never_sleeps_past_the_deadline():
    slept: list[float] = []
    c = RegistryClient(transport=httpx.MockTransport(lambda r: httpx.Response(503, headers={"Retry-After": "30"})),
                       credentials=StaticCredentials({}), retries=4, sleep=slept.append, deadline=5.0)
    with pytest.raises(RegistryError) as info:
        c.get_manifest(ImageRef(REG, "a", "t"))
    assert info.value.code == DEADLINE_EXCEEDED and slept == []


def test_tag_listing_is_bounded_in_pages_and_bytes():
    pages = {"n": 0}

    def handler(req: httpx.Request) -> httpx.Response:
        pages["n"] += 1
        body = json.dumps({"tags": [f"t{pages['n']}-{i}" for i in range(100)]}).encode()
        return httpx.Response(200, content=body, headers={"Link": f'</v2/a/tags/list?last=x{pages["n"]}>; rel="next"'})

    c = RegistryClient(transport=httpx.MockTransport(handler), credentials=StaticCredentials({}), sleep=lambda s: None)
    assert len(c.list_tags(ImageRef(REG, "a"), max_pages=3)) == 300 and pages["n"] == 3
    pages["n"] = 0
    tags = c.list_tags(ImageRef(REG, "a"), max_pages=1000, max_bytes=5000)
    assert len(tags) == 500 and pages["n"] == 6  # five pages of ~900 bytes fit; the sixth is cut, not an error


def test_newest_tags_compare_numbers_as_numbers():
    tags = ["3.9", "3.10", "3.12.9", "3.12.10", "latest", "3.12", "1" * 5000, "3.2-slim"]
    assert newest_tags(tags, 4) == ["1" * 5000, "3.12.10", "3.12.9", "3.12"]
    assert newest_tags([f"1.{i}" for i in range(300)], 2) == ["1.299", "1.298"]


def test_stats_keep_only_the_latest_fetched_digests():
    stats = RegistryStats()
    stats.blobs_fetched.extend(f"sha256:{i:064x}" for i in range(MAX_FETCHED_RECORDED + 50))
    assert len(stats.blobs_fetched) == MAX_FETCHED_RECORDED and stats.blobs_fetched[-1].endswith(f"{MAX_FETCHED_RECORDED + 49:x}")

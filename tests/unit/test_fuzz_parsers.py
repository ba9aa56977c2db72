"""Hostile input at the edge: property-based fuzzing of every parser baseroll runs on an event.

Each parser gets >= 10,000 generated inputs that are *structured* to reach deep code: valid
Eventarc envelopes whose fields are mutated one by one, JSON-ish recursive values in every slot,
odd image references (ports, IPv6, upper case, `..`, `%2e`, unicode, short/upper-case digests,
huge strings), deep nesting and huge integers in the raw bytes. The property is the contract of
`events.py`: a malformed event raises the documented exception (`EventError`; `RefError` for
`refs.parse`) and nothing else, so the entry point can acknowledge it instead of crashing (a crash
is a 500, a redelivery, and a poison message that comes back until it is dead-lettered).

Beside the fuzzers: size caps, the SSRF guard (a forged `gcr` event naming a host outside the
allow-list never becomes a RollRequest; RegistryClient refuses such a host before any network
I/O), strict validation (what a parser accepts is well-formed), and log redaction.
"""
from __future__ import annotations

import base64
import io
import json
import random
import re
import string
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from baseroll import log
from baseroll.contracts import messages, pubsub, requests
from baseroll.contracts.parsing import EventError
from baseroll.contracts.pubsub import PubSubMessage
from baseroll.contracts.roll import RollRequest
from baseroll.edge import artifact_push as pushes
from baseroll.edge import builds, handlers
from baseroll.edge import envelope as envelopes
from baseroll.edge.artifact_push import ArtifactPush, Ignored
from baseroll.images import refs
from baseroll.images.refs import ImageRef, RefError
from baseroll.images.registry import RegistryClient, RegistryError, StaticCredentials
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

# Cheap strategies, no example database, reproducible in CI: 10,000 examples per parser.
FUZZ = settings(max_examples=10_000, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
SOME = settings(max_examples=2_000, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

ALLOWED = "us-docker.pkg.dev"
TRACK = ImageRef(ALLOWED, "platform/bases/python", "3.12")
TRACKED = {TRACK, ImageRef(ALLOWED, "platform/bases/node", "22")}
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64

# Full-string versions of the grammars the parsers document (re.fullmatch: no trailing newline).
FULL_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
FULL_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
FULL_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

# ------------------------------------------------------------------------------------------ generators
#
# Hypothesis draws one 64-bit seed per example (plus explicit @examples); a seeded `random.Random`
# builds the structured input from pools of odd parts. One draw per example instead of dozens keeps
# 10,000 examples per parser cheap (the whole file runs in about a minute on 2 cores), and a failure
# is still reproducible: Hypothesis prints the generated input itself.

ODD_HOSTS = [
    ALLOWED, "US-DOCKER.PKG.DEV", "Us-Docker.Pkg.Dev", "us-docker.pkg.dev:443", "us-docker.pkg.dev.", "localhost",
    "LOCALHOST:5000", "127.0.0.1", "127.0.0.1:5000", "[::1]", "[::1]:5000", "[::1]:99999", "[::1]:0", "[:]",
    "[fe80::1%25eth0]", "[FE80::1]", "::1", "host:0", "host:65536", "host:-1", "host:+80", "a..b", "-a.io", "a-.io",
    "xn--bcher-kva.example", "bücher.example", "\u212a.io", "ｅｘａｍｐｌｅ.com", "evil.example.com",
    "metadata.google.internal", "169.254.169.254", "169.254.169.254:80", "gcr.io", "registry:5000", "", ".", "..",
    "a" * 64 + ".io", "a" * 300 + ".io", "a.io:", "a.io:5000:1", "user:pass@a.io", "a.io#frag", "a.io?x=1",
    "a.io\\b", "a.io%2f", "0x7f.0.0.1", "2130706433", "a.io:٥٠٠٠", "us-docker.pkg.dev\n", "us-docker.pkg.dev ",
]
ODD_COMPONENTS = [
    "a", "apps", "bases", "python", "platform", "..", ".", "%2e", "%2e%2e", "%2F", "A", "Ab", "a_b", "a__b", "a___b",
    "a-b", "a--b", "a.b", "a..b", "-a", "a-", "_a", "a_", "é", "ａ", "", " ", "a b", "a\nb", "a\x00b", "\u202e",
    "a" * 256, "\u0130", "ß", "١", "a:b", "a@b",
]
ODD_TAGS = ["v1", "3.12", "22", "latest", "V1", "_x", ".x", "-x", "a" * 128, "a" * 129, "", "a:b", "ü", "v1\n", "v1 "]
ODD_DIGESTS = [
    D1, "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha512:" + "a" * 128, "sha256:",
    "sha256:" + "g" * 64, D1 + "\n", "SHA256:" + "1" * 64, "1" * 64, "", "sha256:" + "١" * 64, "sha256::" + "1" * 63,
]
HUGE_REFS = [f"{ALLOWED}/" + "a" * n for n in (200, 255, 256, 1000, 1024, 1025, 4096, 70_000)] + [
    "a" * 1025, f"{ALLOWED}/a:" + "t" * 2000, f"{ALLOWED}/" + "/".join(["a"] * 600), "a" * 70_000]
ODD_CHARS = "aAzZ09._-:/@%[]\\ \n\t\x00é²١ａK\u202e\ud7ff\U0001f600\"{}"
SAFE_CHARS = "abz09.-_"
LEAVES: list[Any] = [None, True, False, 0, -1, 1, 2**53 + 1, -(2**63), 10**30, 0.5, -0.0, 1e308, float("nan"),
                     float("inf"), "", "a", "INSERT", "SUCCESS", "3.12", "\n", "\x00", "é", "😀", "\ud800", " " * 3,
                     "x" * 300, *ODD_DIGESTS[:4], *ODD_HOSTS[:6], f"{ALLOWED}/platform/bases/python:3.12"]
KEYS = ["", "a", "action", "tag", "digest", "message", "data", "schema", "kind", "images", "name", "0", "é", "\n"]

Rng = random.Random


def seeded(build) -> st.SearchStrategy:
    return st.integers(0, 2**64 - 1).map(lambda seed: build(random.Random(seed)))


def odd_text(rng: Rng, n: int = 12, chars: str = ODD_CHARS) -> str:
    return "".join(rng.choices(chars, k=rng.randint(0, n)))


def odd_json(rng: Rng, depth: int = 0) -> Any:
    """A JSON-ish value: nested lists and objects of odd leaves."""
    roll = rng.random()
    if depth >= 3 or roll < 0.55:
        return rng.choice(LEAVES) if rng.random() < 0.8 else odd_text(rng, 8)
    if roll < 0.8:
        return [odd_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS) if rng.random() < 0.7 else odd_text(rng, 4): odd_json(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def pick(rng: Rng, pool: list[Any], *, odd: float = 0.3, chars: str = ODD_CHARS) -> Any:
    """Mostly from `pool`, sometimes random text, sometimes any JSON value."""
    roll = rng.random()
    if roll < 1 - odd:
        return rng.choice(pool)
    if roll < 1 - odd / 2:
        return odd_text(rng, 16, chars)
    return odd_json(rng)


def odd_host(rng: Rng) -> str:
    return rng.choice(ODD_HOSTS) if rng.random() < 0.8 else odd_text(rng, 16, SAFE_CHARS + ":[]@%")


def odd_digest(rng: Rng) -> str:
    return rng.choice(ODD_DIGESTS) if rng.random() < 0.7 else "sha256:" + odd_text(rng, 70, "0123456789abcdefA")


def odd_ref(rng: Rng) -> str:
    """An image reference from odd parts; often a near miss of a tracked tag."""
    roll = rng.random()
    if roll < 0.1:
        return odd_text(rng, 40)  # anything at all
    if roll < 0.15:
        return rng.choice(HUGE_REFS)  # around the 1,024- and 255-character caps
    if roll < 0.4:
        host = ALLOWED if rng.random() < 0.5 else odd_host(rng)
        tag = rng.choice(["3.12", "22"]) if rng.random() < 0.6 else rng.choice(ODD_TAGS)
        repo = rng.choice(["platform/bases/python", "platform/bases/node", "apps/a"])
        return f"{host}/{repo}:{tag}" + (f"@{odd_digest(rng)}" if rng.random() < 0.4 else "")
    parts = [rng.choice(ODD_COMPONENTS) if rng.random() < 0.6 else odd_text(rng, 8, SAFE_CHARS)
             for _ in range(rng.randint(0, 4))]
    s = odd_host(rng) + ("/" if rng.random() < 0.9 else "") + "/".join(parts)
    if rng.random() < 0.5:
        s += ":" + (rng.choice(ODD_TAGS) if rng.random() < 0.7 else odd_text(rng, 10, SAFE_CHARS + ":"))
    if rng.random() < 0.5:
        s += "@" + odd_digest(rng)
    return s


def hostile_json_bytes(rng: Rng) -> bytes:
    """Bodies that stress the JSON layer itself: deep nesting, huge numbers, junk, odd encodings."""
    roll = rng.randint(0, 5)
    depth = rng.choice([1, 10, 500, 990, 1000, 1100, 3000, 20_000])
    if roll == 0:
        return b"[" * depth + b"]" * depth
    if roll == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    if roll == 2:
        return b'{"action": ' + b"9" * rng.choice([10, 4300, 4301, 6000]) + b"}"
    if roll == 3:
        return rng.randbytes(rng.randint(0, 32))
    if roll == 4:
        return odd_text(rng, 32).encode("utf-8", "surrogatepass")
    return rng.choice([b"", b"null", b"[]", b'""', b"NaN", b"-Infinity", b'{"a":1,"a":2}', b"\xff\xfe",
                       b"\xef\xbb\xbf{}", b'{"\\ud800": 1}', b'"\\ud800"', b"{" + b" " * 1000 + b"}"])


def json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def envelope(data: bytes, attributes: dict[str, str] | None = None, message_id: str = "m-1") -> dict[str, Any]:
    return {"message": {"data": b64(data), "attributes": attributes or {}, "messageId": message_id,
                        "publishTime": "2024-01-01T00:00:00Z"},
            "subscription": "projects/p/subscriptions/s"}


ENVELOPE_SLOTS = ["data", "attributes", "messageId", "message_id", "publishTime", "subscription", "message",
                  "envelope", "extra"]
ATTRIBUTE_KEYS = ["schema", "kind", "buildId", "status", "action", "rollout_id", "x"]


def odd_envelope(rng: Rng, data: bytes, attributes: dict[str, str] | None = None) -> Any:
    """A valid Eventarc envelope around `data`; about half the time with 1-3 fields replaced or removed."""
    if attributes is None:
        attributes = {rng.choice(ATTRIBUTE_KEYS): odd_text(rng) for _ in range(rng.randint(0, 2))}
    env = envelope(data, attributes, rng.choice(["m-1", "", "1234567890"]))
    if rng.random() < 0.5:
        return env
    for _ in range(rng.randint(1, 3)):
        where = rng.choice(ENVELOPE_SLOTS)
        value = odd_json(rng) if rng.random() < 0.7 else rng.choice(["AAA", "====", "A" * 5, "*", "", "e30=", "e30"])
        if where == "envelope":
            return value
        if where in ("message", "subscription"):
            env[where] = value
        elif where == "extra":
            env[odd_text(rng, 6)] = value
        elif isinstance(env["message"], dict):
            if rng.random() < 0.7:
                env["message"][where] = value
            else:
                env["message"].pop(where, None)
    return env


def odd_doc(rng: Rng, fields: dict[str, Any], *, keep: float = 0.6) -> dict[str, Any]:
    """An object with each field present with probability `keep`; a field's value is built by its
    function (or is any JSON value 15% of the time); sometimes an unknown field is added."""
    doc = {}
    for key, make in fields.items():
        if rng.random() < keep:
            doc[key] = odd_json(rng) if rng.random() < 0.15 else make(rng)
    if rng.random() < 0.1:
        doc[odd_text(rng, 6) or "unknown"] = odd_json(rng)
    return doc


def expect_only(exc_type: type[BaseException], fn, *args: Any) -> Any:
    """Call fn: it returns, or raises exc_type. Anything else propagates and fails the property."""
    try:
        return fn(*args)
    except exc_type:
        return None


# ------------------------------------------------------------------------------------------ refs.parse


@FUZZ
@given(seeded(odd_ref))
@example("[::1]:5000/a")
@example("\u212a.io/a")
@example(f"{ALLOWED}/a/../b")
@example(f"{ALLOWED}/%2e%2e/b")
@example("a" * 70_000)
def test_refs_parse_raises_only_referror(text: str) -> None:
    ref = expect_only(RefError, refs.parse, text)
    if ref is None:
        return
    assert isinstance(ref, ImageRef)
    assert len(text) <= refs.MAX_REF_LEN
    assert ref.registry == ref.registry.lower()
    assert not any(c.isspace() for c in str(ref)) and "\x00" not in str(ref)
    assert refs.parse(str(ref)) == ref  # canonical form round-trips
    parts = ref.repository.split("/")
    assert all(FULL_COMPONENT.fullmatch(p) for p in parts) and ".." not in parts
    assert ref.digest is None or FULL_DIGEST.fullmatch(ref.digest)
    assert ref.tag is None or FULL_TAG.fullmatch(ref.tag)


def _port(registry: str) -> int | None:
    m = re.fullmatch(r"(?:\[[^\]]*\]|[^:\[\]]*)(?::([0-9]+))?", registry)
    return int(m.group(1)) if m and m.group(1) is not None else None


@SOME
@given(st.sampled_from(["[::1]", "[fe80::1]", "localhost", "127.0.0.1", "registry.io"]), st.integers(0, 200_000))
@example("[::1]", 99999)
@example("[::1]", 0)
def test_refs_parse_accepts_only_real_ports(host: str, port: int) -> None:
    """A port outside 1..65535 is not a registry: `host:0` and `host:99999` are refused, IPv6 hosts too."""
    ref = expect_only(RefError, refs.parse, f"{host}:{port}/a/b:v1")
    if ref is not None:
        assert 0 < _port(ref.registry) < 65536, f"accepted port {port} in {ref}"


# ------------------------------------------------------------------------------------------ events


def odd_pubsub_envelope(rng: Rng) -> Any:
    data = json_bytes(odd_json(rng)) if rng.random() < 0.5 else hostile_json_bytes(rng)
    return odd_envelope(rng, data)


@FUZZ
@given(seeded(odd_pubsub_envelope))
@example({"message": {"data": "A" * (400 * 1024)}})
@example({"message": {"data": "", "attributes": {"a": "b" * 2_000_000}}})
def test_pubsub_message_raises_only_eventerror(env: Any) -> None:
    msg = expect_only(EventError, envelopes.pubsub_message, env)
    if msg is None:
        return
    assert isinstance(msg, PubSubMessage)
    assert isinstance(msg.message_id, str) and isinstance(msg.data, bytes)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in msg.attributes.items())
    assert msg.publish_time is None or isinstance(msg.publish_time, str)
    assert msg.subscription is None or isinstance(msg.subscription, str)
    assert len(msg.data) <= envelopes.MAX_DATA_BYTES
    assert len(msg.attributes) <= pubsub.MAX_ATTRIBUTES


GCR_FIELDS = {
    "action": lambda rng: pick(rng, ["INSERT", "INSERT", "DELETE", "insert", "UPDATE", ""]),
    "digest": lambda rng: odd_ref(rng).split(":")[0] + "@" + odd_digest(rng) if rng.random() < 0.3 else odd_ref(rng),
    "tag": odd_ref,
}


def odd_gcr_envelope(rng: Rng) -> Any:
    roll = rng.random()
    if roll < 0.15:
        data = hostile_json_bytes(rng)
    elif roll < 0.5:  # the common shape: a tracked tag (or a near miss) and a digest of the same name
        host = ALLOWED if rng.random() < 0.5 else odd_host(rng)
        repo = rng.choice(["platform/bases/python", "platform/bases/node", "apps/a"])
        tag = rng.choice(["3.12", "22"]) if rng.random() < 0.7 else rng.choice(ODD_TAGS)
        data = json_bytes({"action": rng.choice(["INSERT", "INSERT", "DELETE"]), "tag": f"{host}/{repo}:{tag}",
                           "digest": f"{host}/{repo}@{odd_digest(rng) if rng.random() < 0.3 else D1}"})
    else:
        data = json_bytes(odd_doc(rng, GCR_FIELDS))
    return odd_envelope(rng, data)


@FUZZ
@given(seeded(odd_gcr_envelope))
@example(envelope(b"[" * 5000))
@example(envelope(b'{"action": "INSERT", "tag": ' + b"1" * 5000 + b"}"))
def test_artifact_push_and_roll_request_raise_only_eventerror(env: Any) -> None:
    try:
        msg = envelopes.pubsub_message(env)
        push = pushes.artifact_push(msg)
    except EventError:
        return
    assert isinstance(push, ArtifactPush) and push.action in ("INSERT", "DELETE")
    assert push.digest is not None or push.tag is not None
    assert push.digest is None or FULL_DIGEST.fullmatch(push.digest.digest or "")
    assert push.tag is None or push.tag.tag is not None
    if push.digest is not None and push.tag is not None:
        assert push.digest.name == push.tag.name
    decision = pushes.roll_request_from_push(push, TRACKED, msg.message_id)
    assert isinstance(decision, (RollRequest, Ignored))
    if isinstance(decision, RollRequest):
        assert decision.image in TRACKED and decision.image.registry == ALLOWED
        assert decision.kind == "base" and decision.source == "artifact-push"
        assert decision.digest is None or FULL_DIGEST.fullmatch(decision.digest)
    else:
        assert decision.reason


# ------------------------------------------------------------------------------------------ SSRF guard


def forged_push(rng: Rng) -> tuple[str, bytes]:
    """The tracked tag's repository and tag, on a host that is not the allow-listed one."""
    host = odd_host(rng)
    while host.lower() == ALLOWED:
        host = odd_host(rng)
    repo, tag = rng.choice([("platform/bases/python", "3.12"), ("platform/bases/node", "22")])
    return host, json_bytes({"action": "INSERT", "tag": f"{host}/{repo}:{tag}", "digest": f"{host}/{repo}@{D1}"})


@FUZZ
@given(seeded(forged_push))
@example(("evil.example.com", json_bytes({"action": "INSERT", "tag": "evil.example.com/platform/bases/python:3.12"})))
@example(("us-docker.pkg.dev:443",
          json_bytes({"action": "INSERT", "tag": "us-docker.pkg.dev:443/platform/bases/python:3.12"})))
@example(("169.254.169.254", json_bytes({"action": "INSERT", "tag": "169.254.169.254/platform/bases/node:22"})))
def test_forged_push_naming_another_host_never_becomes_a_roll_request(forged: tuple[str, bytes]) -> None:
    """A `gcr` event naming a tracked repository and tag on any host outside the allow-list is
    Ignored (or refused as malformed): it never starts a rollout that would fetch from that host."""
    _, data = forged
    try:
        push = pushes.artifact_push(envelopes.pubsub_message(envelope(data)))
    except EventError:
        return
    decision = pushes.roll_request_from_push(push, TRACKED, "m-1")
    assert isinstance(decision, Ignored), decision
    assert "not followed" in decision.reason


class _Network:
    """A MockTransport that records every request; requests to hosts outside `allowed` fail the test."""

    def __init__(self, allowed: str) -> None:
        self.allowed = allowed
        self.seen: list[str] = []
        self.outside: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        netloc = request.url.netloc.decode().lower()
        self.seen.append(f"{request.method} {request.url}")
        if netloc != self.allowed:
            self.outside.append(str(request.url))
            raise AssertionError(f"network I/O to a host outside the allow-list: {request.url}")
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST" and request.url.path.endswith("/blobs/uploads/"):
            return httpx.Response(202, headers={"Location": "/v2/x/blobs/uploads/u1?_state=s"})
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND", "message": "nope"}]})


_NET = _Network(ALLOWED)
_GUARDED = RegistryClient(allowed_hosts=[ALLOWED], transport=httpx.MockTransport(_NET), retries=0,
                          credentials=StaticCredentials({}), sleep=lambda s: None)


def _denied(fn, *args: Any) -> None:
    with pytest.raises(RegistryError) as info:
        fn(*args)
    assert info.value.code == "DENIED", info.value


@SOME
@given(seeded(odd_ref))
@example("evil.example.com/platform/bases/python:3.12")
@example("169.254.169.254/computemetadata/v1:x")
@example("us-docker.pkg.dev:443/platform/bases/python:3.12")
@example("[::1]:5000/a:b")
def test_registry_client_refuses_other_hosts_before_any_network_io(text: str) -> None:
    try:
        ref = refs.parse(text)
    except RefError:
        return
    if ref.registry == ALLOWED:
        return
    before = len(_NET.seen)
    tagged = ref if (ref.tag or ref.digest) else ref.with_tag("v1")
    _denied(_GUARDED.get_manifest, tagged)
    _denied(_GUARDED.head_manifest, tagged)
    _denied(_GUARDED.get_blob, ref, D1)
    _denied(_GUARDED.blob_exists, ref, D1)
    _denied(_GUARDED.put_blob, ref, b"x")
    _denied(_GUARDED.put_manifest, ref.with_tag("v1"), b"{}", "application/vnd.oci.image.manifest.v1+json")
    _denied(_GUARDED.list_tags, ref)
    assert len(_NET.seen) == before and not _NET.outside, _NET.seen[before:]
    # A mount into an allowed repository from a foreign source: the foreign host is never contacted.
    with pytest.raises(RegistryError):
        _GUARDED.mount_blob(ImageRef(ALLOWED, "apps/a"), D1, ref.with_tag(None))
    assert not _NET.outside, _NET.outside


def test_registry_client_never_follows_a_redirect_to_the_metadata_server() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if request.url.host == ALLOWED:
            return httpx.Response(307, headers={"Location": "http://169.254.169.254/computeMetadata/v1/token"})
        raise AssertionError(f"followed a redirect to {request.url}")

    client = RegistryClient(allowed_hosts=[ALLOWED], transport=httpx.MockTransport(handler), retries=0,
                            credentials=StaticCredentials({}), sleep=lambda s: None)
    with pytest.raises(RegistryError):
        client.get_blob(ImageRef(ALLOWED, "apps/a"), D1)
    assert calls and all(ALLOWED in c for c in calls)


# ------------------------------------------------------------------------------------------ Cloud Build


def odd_build_image(rng: Rng) -> Any:
    return odd_doc(rng, {"name": odd_ref, "digest": odd_digest, "pushTiming": odd_json}, keep=0.85)


BUILD_FIELDS = {
    "id": lambda rng: pick(rng, ["b-1", "B_2", "", "-x", "a" * 129, "b 1", "b-1\n"]),
    "projectId": lambda rng: pick(rng, ["tenants-prod-a", "example.com:proj-a", "Tenants", "p", "a" * 40, "proj-a\n"]),
    "status": lambda rng: pick(rng, ["SUCCESS", "FAILURE", "QUEUED", "success", "", "SUCCESS\n", "NEW_STATUS"]),
    "results": lambda rng: {"images": [odd_build_image(rng) for _ in range(rng.randint(0, 3))]}
    if rng.random() < 0.8 else odd_doc(rng, {"images": odd_json}),
    "substitutions": lambda rng: {odd_text(rng, 6): (odd_text(rng) if rng.random() < 0.9 else odd_json(rng))
                                  for _ in range(rng.randint(0, 3))},
    "tags": lambda rng: [odd_text(rng) if rng.random() < 0.9 else odd_json(rng) for _ in range(rng.randint(0, 3))],
    "logUrl": lambda rng: odd_text(rng), "buildTriggerId": lambda rng: odd_text(rng),
    "finishTime": lambda rng: odd_text(rng), "images": odd_json,
}


def odd_build_envelope(rng: Rng) -> Any:
    data = hostile_json_bytes(rng) if rng.random() < 0.15 else json_bytes(odd_doc(rng, BUILD_FIELDS, keep=0.75))
    attributes = {}
    if rng.random() < 0.5:
        attributes["buildId"] = pick(rng, ["b-1", "other", "", "b-1\n"], chars=SAFE_CHARS + "\n")
    if rng.random() < 0.5:
        attributes["status"] = pick(rng, ["SUCCESS", "WORKING", "success", ""], chars="SUCESW_\n")
    attributes = {k: v for k, v in attributes.items() if isinstance(v, str)}  # Pub/Sub attributes are strings
    return odd_envelope(rng, data, attributes)


@FUZZ
@given(seeded(odd_build_envelope))
@example(envelope(b"[" * 5000))
@example(envelope(b'{"id": ' + b"1" * 5000 + b"}"))
def test_parse_build_raises_only_eventerror(env: Any) -> None:
    try:
        ev = builds.parse_build(envelopes.pubsub_message(env))
    except EventError:
        return
    assert isinstance(ev, builds.BuildEvent)
    assert isinstance(ev.build_id, str) and isinstance(ev.status, str) and isinstance(ev.project_id, str)
    for img in ev.images:
        assert isinstance(img.name_ref, ImageRef) and img.name_ref.digest is None
        assert refs.DIGEST.match(img.digest)
        assert img.pinned.digest == img.digest
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in ev.substitutions.items())
    assert all(isinstance(t, str) for t in ev.tags)
    assert builds.is_success(ev) == (ev.status == "SUCCESS")


# ------------------------------------------------------------------------------------------ roll requests


SVC = "projects/tenants-prod-a/locations/us-central1/services/shop"


def _odd_list(pool: list[str]):
    return lambda rng: [pick(rng, pool, odd=0.2) for _ in range(rng.randint(0, 3))]


FILTER_FIELDS = {
    "projects": _odd_list(["tenants-prod-a", "123", "Tenants", "a", "tenants-prod-a\n"]),
    "regions": _odd_list(["us-central1", "moon", "US-CENTRAL1", "us-central1\n"]),
    "labels": lambda rng: {(rng.choice(["team", "Team", "a" * 70, "team\n"]) if rng.random() < 0.8
                            else odd_text(rng, 8)):
                           pick(rng, ["shop", "", "Shop", "shop\n"], odd=0.2) for _ in range(rng.randint(0, 3))},
    "services": _odd_list([SVC, SVC + "/x", "projects//locations//services/", SVC + "\n",
                           "projects/123/locations/us-central1/services/a"]),
}
REQUEST_FIELDS = {
    "schema": lambda rng: pick(rng, [requests.SCHEMA] * 6 + ["baseroll.dev/roll-request/v2", ""], odd=0.1),
    "action": lambda rng: pick(rng, list(requests.ACTIONS) * 2 + ["ROLL", "delete"], odd=0.1),
    "base": odd_ref,
    "app": odd_ref,
    "digest": odd_digest,
    "filter": lambda rng: odd_doc(rng, FILTER_FIELDS),
    "dry_run": lambda rng: pick(rng, [True, False], odd=0.2),
    "rollout_id": lambda rng: pick(rng, ["python-111111111111", "-x", "A", "a" * 64, "abc\n"]),
    "reason": lambda rng: pick(rng, ["", "CVE-2024-0001", "x" * 500, "x" * 501]),
}


def odd_request_envelope(rng: Rng) -> Any:
    data = hostile_json_bytes(rng) if rng.random() < 0.15 else json_bytes(odd_doc(rng, REQUEST_FIELDS, keep=0.5))
    attributes = {}
    if rng.random() < 0.3:
        attributes["schema"] = rng.choice([requests.SCHEMA, "x"])
    if rng.random() < 0.3:
        attributes["action"] = rng.choice(["roll", "sweep", "abort", "x"])
    return odd_envelope(rng, data, attributes)


@FUZZ
@given(seeded(odd_request_envelope))
@example(envelope(b'{"schema": "baseroll.dev/roll-request/v1", "filter": ' + b"[" * 5000 + b"]" * 5000 + b"}"))
def test_parse_request_raises_only_eventerror(env: Any) -> None:
    req = expect_only(EventError, lambda e: requests.parse_request(envelopes.pubsub_message(e)), env)
    if req is None:
        return
    assert isinstance(req, requests.Request) and req.action in requests.ACTIONS
    if req.action == "roll":
        assert req.kind in ("base", "app") and isinstance(req.image, ImageRef) and req.image.digest is None
        assert req.digest is None or FULL_DIGEST.fullmatch(req.digest)
        scoped = requests.to_roll_request(req, "e-1")
        assert scoped.roll.image == req.image
    # The canonical form parses back to the same request.
    assert requests.parse_request(requests.message(requests.to_message(req), requests.attributes(req))) == req


# ------------------------------------------------------------------------------------------ baseroll messages


RO = messages.Rollout("python-111111111111", "python", f"{ALLOWED}/platform/bases/python:3.12", D1)
APP1 = f"{ALLOWED}/apps/a@{D2}"


def _valid_messages() -> list[dict[str, Any]]:
    out = []
    for msg in (messages.Task(RO, SVC, 1, (APP1,), {"0": APP1}),
                messages.Result(RO, SVC, 1, "updated", "", (APP1,), (APP1,)),
                messages.Step(RO, 2, 3, 1700000000.5, 7, 1)):
        data, _ = messages.encode(msg)
        out.append(json.loads(data))
    return out


VALID_MESSAGES = _valid_messages()
MESSAGE_SLOTS = ["schema", "kind", "rollout", "service", "wave", "expected", "targets", "base_uris", "outcome",
                 "reason", "before", "after", "cursor", "released_at", "seq", "halted_failures"]
ROLLOUT_SLOTS = ["rollout_id", "track", "track_image", "base_digest", "kind", "scope"]


def odd_message_value(rng: Rng) -> Any:
    roll = rng.random()
    if roll < 0.3:
        return odd_json(rng)
    if roll < 0.45:
        return odd_ref(rng)
    if roll < 0.55:
        return odd_digest(rng)
    if roll < 0.7:
        return rng.choice([0, 1, -1, 2**70, 1.5, True, None, "1"])
    if roll < 0.85:
        return [odd_ref(rng) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["0", "1", "²", "-1", "01", "a", " 0"]): odd_ref(rng) for _ in range(rng.randint(0, 2))}


def odd_message_envelope(rng: Rng) -> Any:
    if rng.random() < 0.15:
        data = hostile_json_bytes(rng)
    else:
        doc = json.loads(json.dumps(rng.choice(VALID_MESSAGES)))
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.25 and isinstance(doc.get("rollout"), dict):
                target, key = doc["rollout"], rng.choice(ROLLOUT_SLOTS)
            else:
                target, key = doc, rng.choice(MESSAGE_SLOTS)
            if rng.random() < 0.2:
                target.pop(key, None)
            else:
                target[key] = odd_message_value(rng)
        data = json_bytes(doc)
    attributes = {k: odd_text(rng) for k in ("schema", "kind", "rollout_id") if rng.random() < 0.2}
    return odd_envelope(rng, data, attributes)


@FUZZ
@given(seeded(odd_message_envelope))
@example(envelope(b"[" * 5000))
@example(envelope(b'{"schema": "baseroll.dev/v1", "wave": ' + b"1" * 5000 + b"}"))
def test_messages_decode_raises_only_eventerror(env: Any) -> None:
    try:
        msg = messages.decode(envelopes.pubsub_message(env))
    except EventError:
        return
    assert isinstance(msg, (messages.Task, messages.Result, messages.Step))
    assert isinstance(msg.rollout, messages.Rollout) and isinstance(msg.wave, int) and msg.wave >= 0
    if isinstance(msg, messages.Task):
        assert msg.targets and all(refs.parse(t).digest for t in msg.targets.values())
    # Encoding a decoded message and decoding it again gives the same encoding (NaN-safe comparison).
    data, attrs = messages.encode(msg)
    assert messages.encode(messages.decode(requests.message(data, attrs)))[0] == data


# ------------------------------------------------------------------------------------------ size caps


OVERSIZED = 512 * 1024 + 1


@pytest.mark.parametrize("parser", [
    lambda m: pushes.artifact_push(m), builds.parse_build, requests.parse_request, messages.decode,
], ids=["artifact_push", "parse_build", "parse_request", "messages.decode"])
@pytest.mark.parametrize("size", [OVERSIZED, 600 * 1024, 2 * 1024 * 1024])
def test_oversized_events_are_rejected(parser, size: int) -> None:
    """An event over Eventarc's 512 KiB is refused with EventError, as valid JSON or as junk."""
    pad = json.dumps({"action": "INSERT", "tag": TRACK.name + ":3.12", "pad": "x" * size}).encode()
    for data in (pad, b"x" * size):
        with pytest.raises(EventError, match="larger"):
            parser(envelopes.pubsub_message(envelope(data)))


def test_oversized_event_is_rejected_before_decoding() -> None:
    """The size check runs before base64/JSON decoding: a 2 MiB junk body costs nothing to refuse."""
    env = {"message": {"data": "*" * (2 * 1024 * 1024), "messageId": "m"}}
    with pytest.raises(EventError, match="larger"):
        envelopes.pubsub_message(env)


# ------------------------------------------------------------------------------------------ poison messages


class _Boom:
    """A deps factory that must not be called: the event is malformed and has to be refused first."""

    def __call__(self) -> Any:
        raise AssertionError("a malformed event reached the core")


@pytest.mark.parametrize("data", [
    b'{"action": "INSERT", "tag": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"action": ' + b"1" * 5000 + b"}",
], ids=["deep-nesting", "huge-int"])
@pytest.mark.parametrize("entry", ["on_artifact_push", "roll_service", "on_roll_result"])
def test_hostile_json_is_acknowledged_not_a_crash(entry: str, data: bytes) -> None:
    """Deeply nested JSON or a 5,000-digit number (a few KiB, far under every size cap) must be
    refused as malformed (`status: rejected`, acknowledged). An exception here is an HTTP 500:
    Pub/Sub redelivers the message again and again (a poison message)."""
    out = getattr(handlers, entry)(envelope(data), "e-1", _Boom())
    assert out["status"] == "rejected"


@dataclass
class _FakeFleet:
    svc: Any = None
    updates: list = field(default_factory=list)

    def get_service(self, name: str) -> Any:
        return self.svc

    def update_images(self, current, images, *, annotations, timeout):  # pragma: no cover - must not happen
        self.updates.append(images)
        raise AssertionError("a forged task must not update anything")


class _Registry:
    def head_manifest(self, ref: ImageRef) -> str:
        return D1


class _Records:
    def get(self, rollout_id: str) -> None:
        return None


class _Bus:
    def __init__(self) -> None:
        self.sent: list = []

    def publish(self, topic: str, items) -> list[str]:
        self.sent.extend(items)
        return ["1"]


@pytest.mark.parametrize("targets, expected", [
    ({"²": APP1}, [APP1]),  # "²".isdigit() is True, int("²") raises ValueError
    ({"1": APP1}, [APP1]),  # index past `expected`: IndexError in the worker
    ({"0": APP1}, []),
], ids=["superscript-index", "index-past-expected", "empty-expected"])
def test_forged_task_is_refused_not_a_crash(targets: dict, expected: list) -> None:
    """A task that decodes must be applicable: its target indexes are container indexes that
    `expected` covers. Otherwise the worker raises (HTTP 500) and the task is redelivered forever."""
    from baseroll.fleet.view import ServiceView
    from baseroll.rollout.deps import Deps

    doc = VALID_MESSAGES[0] | {"targets": targets, "expected": expected}
    svc = ServiceView(SVC, (f"{ALLOWED}/apps/a@{D1}", f"{ALLOWED}/apps/b@{D1}"), etag="e", generation=1,
                      observed_generation=1)
    fleet, bus = _FakeFleet(svc), _Bus()
    deps = Deps(config=None, fleet=fleet, registry=_Registry(), bus=bus, records=_Records(),  # type: ignore[arg-type]
                rebase=None, lineage=None)  # type: ignore[arg-type]
    out = handlers.roll_service(envelope(json_bytes(doc)), "e-1", lambda: deps)
    assert out["status"] in ("rejected", "skipped", "failed"), out
    assert not fleet.updates


# ------------------------------------------------------------------------------------------ strict validation


@pytest.mark.parametrize("doc", [
    {"schema": requests.SCHEMA, "action": "resume", "rollout_id": "python-111111111111\n"},
    {"schema": requests.SCHEMA, "action": "sweep", "filter": {"regions": ["us-central1\n"]}},
    {"schema": requests.SCHEMA, "action": "sweep", "filter": {"projects": ["tenants-prod-a\n"]}},
    {"schema": requests.SCHEMA, "action": "sweep", "filter": {"labels": {"team\n": "shop"}}},
    {"schema": requests.SCHEMA, "action": "sweep", "filter": {"labels": {"team": "shop\n"}}},
    {"schema": requests.SCHEMA, "action": "roll", "base": TRACK.name + ":3.12", "digest": D1 + "\n"},
], ids=["rollout_id", "region", "project", "label-key", "label-value", "digest"])
def test_request_fields_with_a_trailing_newline_are_refused(doc: dict) -> None:
    """`re.match(r"^...$")` accepts a trailing newline (`$` matches before it): the documented
    grammars (docs/REQUESTS.md) must hold for the whole string."""
    with pytest.raises(EventError):
        requests.parse_request(requests.message(json_bytes(doc)))


@pytest.mark.parametrize("path, value", [
    (("rollout", "rollout_id"), "python-111111111111\n"),
    (("rollout", "base_digest"), D1 + "\n"),
    (("service",), SVC + "\n"),
], ids=["rollout_id", "base_digest", "service"])
def test_message_fields_with_a_trailing_newline_are_refused(path: tuple[str, ...], value: str) -> None:
    doc = json.loads(json.dumps(VALID_MESSAGES[0]))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(EventError):
        messages.decode(requests.message(json_bytes(doc)))


@pytest.mark.parametrize("body, attributes", [
    ({"id": "b-1\n", "status": "SUCCESS", "projectId": "tenants-prod-a"}, {}),
    ({"id": "b-1", "status": "SUCCESS\n", "projectId": "tenants-prod-a"}, {}),
    ({"id": "b-1", "status": "SUCCESS", "projectId": "tenants-prod-a\n"}, {}),
    ({"id": "b-1", "status": "SUCCESS", "projectId": "tenants-prod-a",
      "results": {"images": [{"name": f"{ALLOWED}/apps/a:v1", "digest": D1 + "\n"}]}}, {}),
], ids=["id", "status", "projectId", "image-digest"])
def test_build_fields_with_a_trailing_newline_are_refused(body: dict, attributes: dict) -> None:
    with pytest.raises(EventError):
        builds.parse_build(requests.message(json_bytes(body), attributes))


# ------------------------------------------------------------------------------------------ logs


def _emit(**fields: Any) -> str:
    out = io.StringIO()
    log.emit("test.event", stream=out, **fields)
    return out.getvalue()


def test_emit_redacts_credential_fields_and_bearer_strings() -> None:
    line = _emit(
        authorization="Basic dXNlcjpTRUNSRVQx", Authorization="Bearer SECRET2", token="SECRET3",
        access_token="SECRET4", password="SECRET5", client_secret="SECRET6",
        headers={"Authorization": "Bearer SECRET7", "Accept": "application/json"},
        nested=[{"x-registry-token": "SECRET8"}, ("Bearer SECRET9", "ok")],
        reason="GET https://r/v2/a: HTTP 401 (sent Authorization: Bearer SECRET10)",
        basic="login with basic U0VDUkVUMTE6eA==",
    )
    record = json.loads(line)
    assert "SECRET" not in line and "dXNlcjpTRUNSRVQx" not in line and "U0VDUkVUMTE6eA==" not in line, line
    assert record["headers"]["Accept"] == "application/json" and record["nested"][1][1] == "ok"
    assert record["severity"] == "INFO" and record["message"] == "test.event"


@SOME
@given(st.text(alphabet=string.ascii_letters + string.digits + "._~+/-", min_size=8, max_size=40),
       st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "basic"]), st.text(max_size=20), st.text(max_size=20))
def test_emit_never_prints_a_bearer_or_basic_credential(secret: str, scheme: str, before: str, after: str) -> None:
    line = _emit(reason=f"{before} {scheme} {secret} {after}", detail={"msg": f"{scheme} {secret}"})
    assert f"{scheme} {secret}" not in line
    assert json.loads(line)["message"] == "test.event"


def test_emit_redacts_credentials_inside_non_string_values() -> None:
    """log.py promises "never let a credential reach a log line, whatever a caller passes in", but
    only str/dict/list/tuple values are scrubbed: an exception, bytes or any object is rendered by
    `json.dumps(default=str)` after scrubbing, so a Bearer token inside it is printed verbatim."""
    line = _emit(reason=RuntimeError("GET /v2/: 401 (Authorization: Bearer SECRET1)"), raw=b"Bearer SECRET2")
    assert "SECRET" not in line, line


def test_registry_client_token_flow_leaks_nothing_to_logs_or_errors(capsys) -> None:
    """Token auth end to end against a mock registry: the password and the token it earns appear
    in no log line and in no error message, including on failures and mount fallbacks."""
    password, token = "pw-SECRET-1", "tok-SECRET-2"
    seen_auth: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        seen_auth.append(auth)
        if request.url.host == "auth.test":
            expected = "Basic " + base64.b64encode(f"robot:{password}".encode()).decode()
            return httpx.Response(200, json={"token": token, "expires_in": 300}) if auth == expected else \
                httpx.Response(401)
        if auth != f"Bearer {token}":
            return httpx.Response(401, headers={"WWW-Authenticate":
                                                'Bearer realm="https://auth.test/token",service="reg",scope="x"'})
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "POST" and request.url.params.get("mount"):
            return httpx.Response(202, headers={"Location": "/v2/apps/a/blobs/uploads/u1?_state=s"})
        if request.method == "GET" and "/blobs/" in request.url.path:
            return httpx.Response(500, json={"errors": [{"code": "UNKNOWN", "message": "storage down"}]})
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no such manifest"}]})

    client = RegistryClient(allowed_hosts=[ALLOWED, "auth.test"], transport=httpx.MockTransport(handler), retries=1,
                            credentials=StaticCredentials({ALLOWED: ("robot", password)}), sleep=lambda s: None,
                            token_hosts={ALLOWED: ["auth.test"]}, resolve=lambda host: ["142.250.1.1"])
    errors: list[str] = [repr(client.credentials)]
    for call in (lambda: client.get_manifest(ImageRef(ALLOWED, "apps/a", "v1")),
                 lambda: client.mount_blob(ImageRef(ALLOWED, "apps/a"), D1, ImageRef(ALLOWED, "bases/b"))):
        with pytest.raises(RegistryError) as info:
            call()
        errors.append(str(info.value))
        log.warning("registry.failed", reason=str(info.value))
    assert f"Bearer {token}" in seen_auth, "the mock registry's token flow was not exercised"
    out = capsys.readouterr()
    everything = out.out + out.err + "\n".join(errors)
    assert "registry.mount_fallback" in out.out
    for secret in (password, token, base64.b64encode(f"robot:{password}".encode()).decode()):
        assert secret not in everything, everything


# ------------------------------------------------------------------------------------------ OCI validators
#
# What a hostile registry sends: a valid manifest, index or config with 1-3 fields replaced by a value
# of the wrong type (a string for an object, a list for a string, a 5,000-digit number, NaN). Each
# validator raises OCIError and nothing else, and what it accepts the readers after it can read.

import copy  # noqa: E402

from baseroll.images import match as matching  # noqa: E402
from baseroll.images import oci  # noqa: E402
from baseroll.images import rebase as rebasing  # noqa: E402

HOSTILE = settings(max_examples=1_000, deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))
HUGE_NUMBER = "9" * 5000
WRONG: list[Any] = [None, True, 5, -1, 2**64, 1.5, "", "x", [], ["x"], [oci.DOCKER_SCHEMA1], {}, {"a": 1},
                    {"os": "linux"}, HUGE_NUMBER, "NaN"]
OCI_LAYER_DESC = {"mediaType": oci.OCI_LAYER_GZIP, "digest": D1, "size": 10}
PLATFORM = {"os": "linux", "architecture": "amd64"}
MANIFEST_DOC = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                "config": {"mediaType": oci.OCI_CONFIG, "digest": D2, "size": 5},
                "layers": [OCI_LAYER_DESC], "annotations": {oci.ANNOTATION_BASE_NAME: str(TRACK)}}
INDEX_DOC = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "annotations": {oci.ANNOTATION_BASE_DIGEST: D1},
             "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": D1, "size": 10, "platform": dict(PLATFORM)},
                           {"mediaType": oci.OCI_MANIFEST, "digest": D2, "size": 10,
                            "platform": {"os": "unknown", "architecture": "unknown"},
                            "annotations": {oci.ANNOTATION_REFERENCE_TYPE: oci.ATTESTATION_MANIFEST}}]}
CONFIG_DOC = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [D1]},
              "history": [{"created_by": "x"}], "config": {"Env": ["A=1"], "Labels": {"a": "b"}}}


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON document (keys and list indexes), the document itself excluded."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out.append(prefix + (key,))
        out.extend(_paths(value, prefix + (key,)))
    return out


def wrong_typed(rng: Rng, template: dict[str, Any]) -> bytes:
    """`template` with 1-3 fields (at any depth) set to a wrong-typed value; raw bytes, so a
    5,000-digit number or NaN reaches the decoder as a registry would send it."""
    doc = json.loads(json.dumps(template))
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        if not paths:
            break
        *parent, key = rng.choice(paths)
        holder = doc
        for step in parent:
            holder = holder[step]
        holder[key] = copy.deepcopy(rng.choice(WRONG)) if rng.random() < 0.8 else odd_json(rng)
    text = json.dumps(doc, allow_nan=True)
    return text.replace(f'"{HUGE_NUMBER}"', HUGE_NUMBER).replace('"NaN"', "NaN").encode()


def hostile_manifest(rng: Rng) -> bytes:
    return wrong_typed(rng, MANIFEST_DOC if rng.random() < 0.5 else INDEX_DOC)


@HOSTILE
@given(seeded(hostile_manifest))
@example(json.dumps({**INDEX_DOC, "manifests": [{**INDEX_DOC["manifests"][0], "annotations": "s"}]}).encode())
@example(json.dumps({**INDEX_DOC, "manifests": [{**INDEX_DOC["manifests"][0], "mediaType": ["x"]}]}).encode())
@example(json.dumps({**MANIFEST_DOC, "mediaType": [oci.DOCKER_SCHEMA1]}).encode())
@example(json.dumps(MANIFEST_DOC).replace('"size": 10', '"size": ' + HUGE_NUMBER).encode())
def test_manifest_validators_raise_only_ocierror_on_wrong_typed_fields(raw: bytes) -> None:
    parsed = expect_only(oci.OCIError, oci.parse_manifest_or_index, raw)
    if parsed is None:
        return
    media_type, data = parsed
    # What was accepted, the readers after the validator read without a TypeError/AttributeError.
    if media_type in oci.INDEX_TYPES:
        for child in data["manifests"]:
            oci.is_attestation(child)
            oci.Platform.from_dict(child.get("platform"))
        oci.select_platform(data, oci.Platform("linux", "amd64"))
    else:
        assert all(isinstance(d["digest"], str) for d in data["layers"])
    annotations = data.get("annotations") or {}
    assert all(isinstance(v, str) for v in annotations.values())


@HOSTILE
@given(seeded(lambda rng: wrong_typed(rng, CONFIG_DOC)))
@example(json.dumps(CONFIG_DOC).replace('"x"', HUGE_NUMBER).encode())
def test_config_validator_raises_only_ocierror_on_wrong_typed_fields(raw: bytes) -> None:
    config = expect_only(oci.OCIError, oci.parse_config, raw)
    if config is not None:
        oci.config_platform(config)


@HOSTILE
@given(seeded(lambda rng: {rng.choice([oci.ANNOTATION_BASE_NAME, oci.ANNOTATION_BASE_DIGEST, "x"]):
                           rng.choice(WRONG + [str(TRACK), D1]) for _ in range(rng.randint(0, 3))}))
@example({oci.ANNOTATION_BASE_NAME: str(TRACK), oci.ANNOTATION_BASE_DIGEST: 5})
def test_matching_never_raises_on_wrong_typed_base_annotations(annotations: dict[str, Any]) -> None:
    app = matching.ImageFacts(TRACK.with_digest(D1), ("sha256:" + "a" * 64,), annotations)
    new = matching.BaseVersion(D2, ("sha256:" + "b" * 64,))
    assert matching.match_image(app, TRACK, new, [new]).verdict in ("outdated", "current", "other")


def _parts(rng: Rng) -> tuple[rebasing.ImageParts, rebasing.ImageParts, rebasing.ImageParts]:
    def one(layers: list[str]) -> rebasing.ImageParts:
        manifest = {**MANIFEST_DOC, "layers": [{**OCI_LAYER_DESC, "digest": d} for d in layers]}
        config = {**CONFIG_DOC, "rootfs": {"type": "layers", "diff_ids": list(layers)}, "history": []}
        return rebasing.ImageParts(manifest, oci.OCI_MANIFEST, config)

    a, b, c = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64
    parts = [one([a, c]), one([a]), one([b])]
    i = rng.randrange(3)
    which = rng.choice(["manifest", "config", "media_type"])
    if which == "media_type":
        parts[i] = rebasing.ImageParts(parts[i].manifest, rng.choice(WRONG), parts[i].config)
    else:
        doc = json.loads(wrong_typed(rng, getattr(parts[i], which)).replace(HUGE_NUMBER.encode(), b"1e3"))
        parts[i] = rebasing.ImageParts(**{**parts[i].__dict__, which: doc})
    return parts[0], parts[1], parts[2]


@HOSTILE
@given(seeded(_parts))
def test_rebase_raises_only_rebaseerror_on_wrong_typed_fields(parts: tuple) -> None:
    original, old, new = parts
    expect_only(rebasing.RebaseError, lambda: rebasing.rebase(original, old, new, new_base_name=str(TRACK),
                                                              new_base_digest=D2))

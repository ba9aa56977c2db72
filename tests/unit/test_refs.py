import pytest
from baseroll.images import refs
from baseroll.images.refs import ImageRef, RefError

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "text, expected",
    [
        ("us-docker.pkg.dev/p/r/img:1.2", ImageRef("us-docker.pkg.dev", "p/r/img", "1.2")),
        (f"us-docker.pkg.dev/p/r/img@{D}", ImageRef("us-docker.pkg.dev", "p/r/img", None, D)),
        (f"127.0.0.1:5000/bases/python:3.12@{D}", ImageRef("127.0.0.1:5000", "bases/python", "3.12", D)),
        ("localhost/a", ImageRef("localhost", "a")),
        ("GCR.IO/proj/img", ImageRef("gcr.io", "proj/img")),
        ("[::1]:5000/a/b", ImageRef("[::1]:5000", "a/b")),
    ],
)
def test_parse_valid(text, expected):
    assert refs.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "python:3.12", "library/python", "gcr.io", "gcr.io/", "gcr.io/UPPER/img", "gcr.io/a/../b",
        "gcr.io/a//b", f"gcr.io/a@{D[:-1]}", "gcr.io/a@md5:abc", "gcr.io/a:", "gcr.io/a:bad tag", "gcr.io:99999/a",
        "gcr.io/a\x00b", "host_with_underscore.io/a", "-bad.io/a", "gcr.io/a:" + "t" * 200, "x" * 2000,
    ],
)
def test_parse_rejects(text):
    with pytest.raises(RefError):
        refs.parse(text)


def test_round_trip_and_helpers():
    ref = refs.parse(f"eu.gcr.io/p/img:tag@{D}")
    assert str(ref) == f"eu.gcr.io/p/img:tag@{D}"
    assert ref.reference == D
    assert str(ref.with_digest(D)) == f"eu.gcr.io/p/img@{D}"
    assert ref.with_tag("x").reference == "x"
    with pytest.raises(RefError):
        ImageRef("gcr.io", "a").reference
    with pytest.raises(RefError):
        ref.with_digest("sha256:short")


def test_allow_list_is_exact_host_and_port():
    assert refs.is_allowed(refs.parse("127.0.0.1:5000/a"), {"127.0.0.1:5000"})
    assert not refs.is_allowed(refs.parse("127.0.0.1:5001/a"), {"127.0.0.1:5000"})
    assert not refs.is_allowed(refs.parse("evil.gcr.io.attacker.com/a"), {"gcr.io"})

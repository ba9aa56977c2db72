"""A registry on a loopback address is reached over plain HTTP without being listed, as crane and
docker do: the real registry server, a client given no plain-http hosts at all."""
from __future__ import annotations

import pytest
from baseroll.images.rebaser import rebase_image
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient, StaticCredentials

from tests.integration.conftest import make_layer, push_image

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_rebase_against_a_loopback_registry_needs_no_plain_http_flag(registry, name):
    host = f"{name}:{registry.port}"
    with RegistryClient(allowed_hosts=[host], credentials=StaticCredentials({}), retries=1, backoff=0.01) as c:
        assert c.plain_http_hosts == frozenset()
        bases, apps = ImageRef(host, f"bases/{name}"), ImageRef(host, f"apps/{name}")
        v1 = push_image(c, bases, [make_layer({"b": b"1"})], tag="v1")
        v2 = push_image(c, bases, [make_layer({"b": b"2"})], tag="v2")
        push_image(c, apps, v1.layers + [make_layer({"app": b"1"})], tag="1")
        result = rebase_image(c, apps.with_tag("1"), bases.with_tag("v1"), bases.with_tag("v2"),
                              target=apps.with_tag("1-rebased"))
        assert result.pushed and c.head_manifest(apps.with_tag("1-rebased")) == result.digest
        assert c.get_manifest(result.ref).data["layers"][0]["digest"] == v2.layers[0].digest

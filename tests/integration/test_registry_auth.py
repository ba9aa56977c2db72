"""The real registry requiring auth as Artifact Registry does (infra/local/token_server.py): 401 with a
Bearer realm on a loopback token server that takes Basic credentials (a known secret) and issues
short-lived tokens. The client really authenticates, and neither the secret nor any issued token
appears in a log line or an error message."""
from __future__ import annotations

import base64
from typing import Iterator

import pytest
from baseroll import log
from baseroll.images.rebaser import rebase_image
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryClient, RegistryError, StaticCredentials

from infra.local.registry_server import RegistryServer
from infra.local.token_server import TokenServer
from tests.integration.conftest import make_layer, push_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def authed() -> Iterator[tuple[RegistryServer, TokenServer]]:
    with TokenServer() as tokens, RegistryServer(token_server=tokens) as reg:
        yield reg, tokens


def client(reg: RegistryServer, tokens: TokenServer, creds: tuple[str, str] | None) -> RegistryClient:
    """The token server is another host: named as the registry's token host, and allow-listed."""
    return RegistryClient(allowed_hosts=[reg.host, tokens.host], token_hosts={reg.host: [tokens.host]},
                          credentials=StaticCredentials({reg.host: creds} if creds else {}), retries=1, backoff=0.01)


def test_anonymous_and_wrong_secret_are_refused(authed):
    reg, tokens = authed
    with pytest.raises(RegistryError) as anonymous:
        client(reg, tokens, None).get_manifest(ImageRef(reg.host, "apps/a", "v1"))
    assert anonymous.value.status == 401
    refused_before = tokens.counts["refused"]
    with pytest.raises(RegistryError) as wrong:
        client(reg, tokens, (tokens.username, "not-the-secret")).get_manifest(ImageRef(reg.host, "apps/a", "v1"))
    assert wrong.value.code == "UNAUTHORIZED" and tokens.counts["refused"] > refused_before
    assert "not-the-secret" not in str(wrong.value)


def test_push_rebase_and_read_with_tokens_leak_nothing(authed, capsys):
    reg, tokens = authed
    issued_before = tokens.counts["issued"]
    errors: list[str] = []
    with client(reg, tokens, (tokens.username, tokens.secret)) as c:
        bases, apps = ImageRef(reg.host, "bases/auth"), ImageRef(reg.host, "apps/auth")
        v1 = push_image(c, bases, [make_layer({"b": b"1"})], tag="v1")
        push_image(c, bases, [make_layer({"b": b"2"})], tag="v2")
        push_image(c, apps, v1.layers + [make_layer({"app": b"1"})], tag="1")
        result = rebase_image(c, apps.with_tag("1"), bases.with_tag("v1"), bases.with_tag("v2"),
                              target=apps.with_tag("1-rebased"))  # mounts across repositories: push + pull scopes
        assert result.pushed and c.head_manifest(apps.with_tag("1-rebased")) == result.digest
        assert sorted(c.list_tags(bases)) == ["v1", "v2"]
        try:
            c.get_manifest(ImageRef(reg.host, "apps/auth", "missing"))
        except RegistryError as e:
            errors.append(str(e))
            log.warning("registry.failed", reason=str(e))
    assert tokens.counts["issued"] > issued_before  # auth exchanges really happened
    written = capsys.readouterr()
    everything = written.out + written.err + "\n".join(errors)
    basic = base64.b64encode(f"{tokens.username}:{tokens.secret}".encode()).decode()
    assert errors and tokens.secret not in everything and basic not in everything
    assert not [t for t in tokens.issued if t in everything or t.split(".")[2] in everything]

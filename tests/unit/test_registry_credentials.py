"""`registry_credentials` in the configuration (config.py) and the client runtime builds from them
(runtime.registry_client): a password from an env var or a file, never from the configuration;
token hosts named explicitly and allow-listed; Google's registries keep their own tokens."""
from __future__ import annotations

from pathlib import Path

import pytest
from baseroll import config, runtime
from baseroll.cli.common import CliState
from baseroll.config import ConfigError
from baseroll.images.registry import GoogleTokenSource

REG, AUTH = "registry.example.com", "auth.example.com"


def doc(*credentials: dict, allowed: tuple[str, ...] = (REG, AUTH)) -> dict:
    return {"projects": ["tenants-prod"], "regions": ["us-central1"], "allowed_registries": list(allowed),
            "base_tracks": [{"name": "python", "image": f"{REG}/bases/python:3.12"}],
            "registry_credentials": list(credentials)}


def test_an_entry_parses_with_its_token_hosts():
    cfg = config.parse(doc({"host": REG.upper(), "username": "u", "password_env": "REG_PW", "token_hosts": [AUTH]}))
    (cred,) = cfg.registry_credentials
    assert (cred.host, cred.username, cred.password_env, cred.password_file) == (REG, "u", "REG_PW", None)
    assert cfg.token_hosts == {REG: (AUTH,)}
    assert config.parse(doc()).registry_credentials == () and config.parse(doc()).token_hosts == {}


@pytest.mark.parametrize("entry, needle", [
    ({"host": "other.example.com", "username": "u", "password_env": "X"}, ".host: 'other.example.com' is not in"),
    ({"host": REG, "password_env": "X"}, ".username: required"),
    ({"host": REG, "username": "u"}, "exactly one of password_env"),
    ({"host": REG, "username": "u", "password_env": "X", "password_file": "/x"}, "exactly one of password_env"),
    ({"host": REG, "username": "u", "password_env": "not a name"}, "exactly one of password_env"),
    ({"host": REG, "username": "u", "password_file": "relative/path"}, "exactly one of password_env"),
    ({"host": REG, "username": "u", "password": "inline"}, ".password: unknown setting"),
    ({"host": REG, "username": "u", "password_env": "X", "token_hosts": ["elsewhere.example.com"]},
     "token_hosts: 'elsewhere.example.com' must also be in allowed_registries"),
])
def test_bad_entries_are_refused_naming_the_field(entry, needle):
    with pytest.raises(ConfigError) as err:
        config.parse(doc(entry))
    assert needle in str(err.value) and "registry_credentials[0]" in str(err.value)


def test_one_entry_per_host():
    entry = {"host": REG, "username": "u", "password_env": "X"}
    with pytest.raises(ConfigError, match="one entry per host"):
        config.parse(doc(entry, entry))


def test_passwords_come_from_the_environment_or_a_file(tmp_path: Path):
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")  # a hand-written file's newline is not part of the password
    cfg = config.parse(doc({"host": REG, "username": "u", "password_env": "REG_PW"},
                           {"host": AUTH, "username": "v", "password_file": str(secret)}))
    creds = runtime.registry_credentials(cfg, {"REG_PW": "from-env"})
    assert creds.basic_auth(REG) == ("u", "from-env") and creds.basic_auth(AUTH) == ("v", "from-a-file")
    assert "from-env" not in repr(creds) and "from-a-file" not in repr(creds)
    assert creds.basic_auth("unlisted.example.com") is None  # the Google fallback: anonymous off Google's hosts
    assert GoogleTokenSource.handles("us-docker.pkg.dev")


def test_a_missing_secret_is_a_config_error_naming_it_not_its_value(tmp_path: Path):
    by_env = config.parse(doc({"host": REG, "username": "u", "password_env": "REG_PW"}))
    with pytest.raises(ConfigError, match="environment variable REG_PW is not set"):
        runtime.registry_credentials(by_env, {})
    absent = tmp_path / "absent"
    by_file = config.parse(doc({"host": REG, "username": "u", "password_file": str(absent)}))
    with pytest.raises(ConfigError, match="cannot read password_file"):
        runtime.registry_credentials(by_file, {})
    absent.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        runtime.registry_credentials(by_file, {})


def test_the_client_names_the_token_hosts_and_the_cli_allows_them_for_its_hosts(tmp_path: Path, monkeypatch):
    import yaml

    cfg = config.parse(doc({"host": REG, "username": "u", "password_env": "REG_PW", "token_hosts": [AUTH]}))
    with runtime.registry_client(cfg, {"REG_PW": "pw"}) as client:
        assert client.credentials.basic_auth(REG) == ("u", "pw")
        assert client._net.policy.token_hosts(REG) == frozenset({AUTH})
    path = tmp_path / "baseroll.yaml"
    path.write_text(yaml.safe_dump(doc({"host": REG, "username": "u", "password_env": "REG_PW",
                                        "token_hosts": [AUTH]})))
    monkeypatch.setenv("REG_PW", "pw")
    with CliState(str(path), json_output=False).registry_client({REG}, ()) as client:
        assert client.allowed_hosts == frozenset({REG, AUTH}) and client.credentials.basic_auth(REG) == ("u", "pw")
    monkeypatch.delenv("BASEROLL_CONFIG", raising=False)
    monkeypatch.delenv("BASEROLL_CONFIG_YAML", raising=False)
    with CliState(None, json_output=False).registry_client({REG}, ()) as client:  # no configuration: as before
        assert client.allowed_hosts == frozenset({REG}) and client.credentials.basic_auth(REG) is None

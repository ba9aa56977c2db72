"""`registry_credentials:` for registries other than Google's: where the password comes from, never the password."""
from __future__ import annotations

import re
from typing import Any, Mapping

from baseroll.config.fields import _known, _list
from baseroll.config.model import ConfigError, RegistryCredential

CREDENTIAL_KEYS = ("host", "username", "password_env", "password_file", "token_hosts")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _credentials(items: list[Any], allowed: frozenset[str]) -> tuple[RegistryCredential, ...]:
    out = []
    for i, item in enumerate(items):
        where = f"registry_credentials[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: a mapping with host, username and password_env or password_file")
        _known(item, f"{where}.", CREDENTIAL_KEYS)
        host, user = item.get("host"), item.get("username")
        if not isinstance(host, str) or host.lower() not in allowed:
            raise ConfigError(f"{where}.host: {host!r} is not in allowed_registries")
        if not isinstance(user, str) or not user:
            raise ConfigError(f"{where}.username: required")
        env, path = item.get("password_env"), item.get("password_file")
        usable = isinstance(env, str) and _ENV_NAME.fullmatch(env) if path is None else (
            env is None and isinstance(path, str) and path.startswith("/"))
        if not usable:
            raise ConfigError(f"{where}: exactly one of password_env (an environment variable name) and "
                              "password_file (an absolute path)")
        token_hosts = _list(item, "token_hosts", required=False)
        for token_host in token_hosts:  # credentials go to a token host: it must be named twice, on purpose
            if not isinstance(token_host, str) or token_host.lower() not in allowed:
                raise ConfigError(f"{where}.token_hosts: {token_host!r} must also be in allowed_registries")
        out.append(RegistryCredential(host.lower(), user, env, path, tuple(h.lower() for h in token_hosts)))
    if len({c.host for c in out}) != len(out):
        raise ConfigError("registry_credentials: one entry per host")
    return tuple(out)

"""What every command shares: the exit codes, the global options' state, and the output helpers."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, NoReturn, Sequence

import click

from baseroll import config as configuration

if TYPE_CHECKING:
    from baseroll.images.registry import RegistryClient

# Exit codes are part of the interface (scripts and Cloud Build steps branch on them).
EXIT_OK = 0
EXIT_FAILED = 1  # a registry, Cloud Run or credentials problem, or `roll` did not finish in time
EXIT_INVALID = 2  # bad option, request or configuration; a refused rebase (also click's usage errors)
EXIT_PUBLISH_FAILED = 3  # Pub/Sub did not accept the message
EXIT_HALTED = 4  # roll: the rollout halted, was aborted or superseded

# How long a command waits for Cloud Run's endpoint to accept a connection before it says it cannot reach
# it; the functions keep their retries (docs/GOOGLE_APIS.md#transports). A refusal is reported at once.
CONNECT_TIMEOUT_S = 10.0


@dataclass
class CliState:
    config_path: str | None
    json_output: bool
    debug: bool = False
    _config: configuration.Config | None = field(default=None, repr=False)

    def config(self) -> configuration.Config:
        """The configuration: --config / BASEROLL_CONFIG, else BASEROLL_CONFIG_YAML. Exit 2 when invalid."""
        if self._config is None:
            env = dict(os.environ)
            if self.config_path:  # an explicit path wins over an inline document in the environment
                env.pop("BASEROLL_CONFIG_YAML", None)
                env["BASEROLL_CONFIG"] = self.config_path
            try:
                self._config = configuration.load(env)
            except configuration.ConfigError as exc:
                fail(EXIT_INVALID, f"config: {exc}" if self.config_path or "BASEROLL_CONFIG" in env or
                     "BASEROLL_CONFIG_YAML" in env else f"config: {exc}; pass --config PATH (`make up` prints one)")
        return self._config

    def has_config(self) -> bool:
        return bool(self.config_path or os.environ.get("BASEROLL_CONFIG") or os.environ.get("BASEROLL_CONFIG_YAML"))

    def registry_client(self, hosts: set[str], plain_http: Iterable[str]) -> "RegistryClient":
        """A client for a command on `hosts` alone: with the configuration's `registry_credentials`
        (their token hosts allowed too) when there is a configuration, else Google's tokens or anonymous."""
        from baseroll import runtime
        from baseroll.images.registry import RegistryClient

        if not self.has_config():
            return RegistryClient(plain_http_hosts=plain_http, allowed_hosts=hosts)
        cfg = self.config()
        token_hosts = {t for h in hosts for t in cfg.token_hosts.get(h.lower(), ())}
        try:
            return runtime.registry_client(cfg, plain_http_hosts=plain_http, allowed_hosts=hosts | token_hosts)
        except configuration.ConfigError as exc:
            fail(EXIT_INVALID, f"config: {exc}")


def fail(code: int, message: str) -> NoReturn:
    """Print `error: ...` on stderr (one line) and exit with `code`."""
    click.echo(f"error: {' '.join(message.split())}", err=True)
    raise click.exceptions.Exit(code)


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def emit_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A rich table on stdout (for commands whose --json output is the same rows as objects)."""
    from rich.console import Console  # imported on use: `publish` never pays for it
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)

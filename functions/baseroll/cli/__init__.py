"""The `baseroll` console script (also `python -m baseroll.cli`).

    baseroll [--config PATH] [--json] [--debug] COMMAND ...

Exit codes are part of the interface (scripts and Cloud Build steps branch on them):
0 done; 1 a registry, Cloud Run or credentials problem (or `roll` not finished in time);
2 invalid input (bad option, request or configuration; a refused rebase); 3 publishing failed;
4 `roll`: the rollout halted, was aborted or superseded.

An expected failure prints one line, `error: <what failed>; <what to try>`, on stderr; `--debug`
adds the traceback. With `--json`, stdout holds only JSON and stderr only errors.

Commands share one `CliState` (ctx.obj): the global options and a lazily loaded configuration,
so a command that needs no configuration (`publish`) works without one. Each group of commands
lives in its own module and is registered below, so every way in sees every command.
"""
from __future__ import annotations

from typing import Any

import click

from baseroll.cli.common import (
    EXIT_FAILED,
    EXIT_HALTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_PUBLISH_FAILED,
    CliState,
    fail,
)
from baseroll.cli.publishing import approve, publish
from baseroll.cli.rebasing import rebase
from baseroll.cli.rollouts import plan, roll
from baseroll.cli.status import status

__all__ = ["main", "CliState", "EXIT_OK", "EXIT_FAILED", "EXIT_INVALID", "EXIT_PUBLISH_FAILED", "EXIT_HALTED"]


class _Baseroll(click.Group):
    """The command group, turning an expected failure into one line and its exit code (see module doc)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            from baseroll.cli.errors import explain

            explained = explain(exc)
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if explained is None or (state is not None and state.debug):
                raise
            fail(*explained)


@click.group(cls=_Baseroll, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="BASEROLL_CONFIG",
              help="Configuration YAML (default: $BASEROLL_CONFIG, else $BASEROLL_CONFIG_YAML).")
@click.option("--json", "json_output", is_flag=True, help="Only JSON on stdout, only errors on stderr.")
@click.option("--debug", is_flag=True, help="Show the traceback of a failure.")
@click.version_option(package_name="baseroll", prog_name="baseroll")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, json_output: bool, debug: bool) -> None:
    """Roll Cloud Run fleets onto new base image digests."""
    from baseroll import log

    log.to_stderr()  # stdout is for tables and --json; the decision log goes to stderr
    log.only_from("ERROR" if json_output else "DEBUG")
    # Put the log back as it was when the command ends, for in-process callers (tests).
    ctx.call_on_close(lambda: (log.to_stderr(False), log.only_from("DEBUG")))
    ctx.obj = CliState(config_path=config_path, json_output=json_output, debug=debug)


@click.command()
def demo() -> None:
    """Run the local demo (needs a checkout: it starts the local stack from infra/local)."""
    try:
        from infra.local import demo as demo_mod  # type: ignore[import-not-found]
    except ImportError:
        fail(EXIT_INVALID, "the demo runs from a baseroll checkout: `make demo`")
    raise click.exceptions.Exit(demo_mod.main([]))


for _command in (publish, approve, plan, roll, status, rebase, demo):
    main.add_command(_command)

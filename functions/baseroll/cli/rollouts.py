"""`baseroll plan` and `roll`: the functions' pipeline, run in-process with the configured clients.

`roll` plans here and hands the rollout to the deployed coordinator (one step on the results topic),
then follows its record. `plan` (like `status`, cli.status) publishes nothing, so it never creates a
Pub/Sub client (that would need Google credentials, or PUBSUB_EMULATOR_HOST, for nothing).
"""
from __future__ import annotations

from typing import Any, Iterable

import click

from baseroll import config as configuration
from baseroll.cli.common import (
    CONNECT_TIMEOUT_S,
    EXIT_FAILED,
    EXIT_HALTED,
    EXIT_INVALID,
    CliState,
    emit_json,
    emit_table,
    fail,
)


class NoBus:
    """The bus of a command that publishes nothing: building it creates no Pub/Sub client."""

    def publish(self, topic: str, items: Iterable[tuple[bytes, dict[str, str]]]) -> list[str]:
        raise RuntimeError(f"this command publishes nothing, yet tried to publish to {topic}")


def _deps(state: CliState, projects: tuple[str, ...], regions: tuple[str, ...], *, publishes: bool) -> Any:
    """The functions' wiring for this configuration; with the Pub/Sub bus only when the command publishes."""
    import dataclasses

    from baseroll import runtime

    cfg = state.config()
    if projects:
        cfg = dataclasses.replace(cfg, projects=projects)
    if regions:
        cfg = dataclasses.replace(cfg, regions=regions)
    deps = runtime.build(cfg) if publishes else runtime.build(cfg, bus=NoBus())
    deps.fleet.check_reachable(CONNECT_TIMEOUT_S)  # a person waits: fail now, not after the reads' retries
    return deps


def _roll_request(cfg: configuration.Config, base: str | None, app: str | None, digest: str | None,
                  dry_run: bool) -> Any:
    from baseroll.contracts.roll import RollRequest
    from baseroll.images import refs

    if bool(base) == bool(app):
        fail(EXIT_INVALID, "give exactly one of --base or --app")
    try:
        ref = refs.parse(base or app or "")
    except refs.RefError as exc:
        fail(EXIT_INVALID, str(exc))
    image = refs.ImageRef(ref.registry, ref.repository, ref.tag)
    if base and cfg.track_for(image) is None:
        fail(EXIT_INVALID, f"--base: {base} is not a configured base track (host/repo:tag)")
    if app and not (digest or ref.digest):
        fail(EXIT_INVALID, "--app: needs a digest (in the reference or --digest)")
    return RollRequest("app" if app else "base", image, digest or ref.digest, "cli", "cli", dry_run)


location_options = [
    click.option("--project", "projects", multiple=True, help="Override the configured projects."),
    click.option("--region", "regions", multiple=True, help="Override the configured regions."),
]


def with_locations(fn: Any) -> Any:
    for option in reversed(location_options):
        fn = option(fn)
    return fn


@click.command()
@click.option("--base", metavar="REF", help="A configured base track, host/repo:tag.")
@click.option("--app", metavar="REF", help="An app image to redeploy, host/repo[:tag]@sha256:...")
@click.option("--digest", help="The digest to roll to (default: what the tag points at now).")
@with_locations
@click.pass_obj
def plan(state: CliState, base: str | None, app: str | None, digest: str | None,
         projects: tuple[str, ...], regions: tuple[str, ...]) -> None:
    """Show what a rollout would do, changing nothing (a dry run of the whole pipeline)."""
    from baseroll.contracts import ids
    from baseroll.rollout import planner

    deps = _deps(state, projects, regions, publishes=False)
    report = planner.start(deps, _roll_request(deps.config, base, app, digest, dry_run=True))
    # Every row names its workload's kind (a service, job or worker pool: its name says which).
    report = {**report, "services": [{**r, "kind": ids.workload_kind(r["service"])} for r in report["services"]]}
    if state.json_output:
        emit_json(report)
        return
    windowed = any("window" in r for r in report["services"])  # rollout.windows: each one's window now
    rows = [(r["service"].rsplit("/", 1)[-1], r["kind"], "/".join(r["service"].split("/")[1:4:2]), r["action"],
             r.get("strategy", ""), r.get("wave", ""), _short(next(iter((r.get("targets") or r.get("base_uris") or {}).values()), "")),
             r["reason"], *([r.get("window", "")] if windowed else [])) for r in report["services"]]
    emit_table(f"plan {report['rollout_id']} -> {report['target']}",
               ("workload", "kind", "project/region", "action", "strategy", "wave", "target", "reason",
                *(["window"] if windowed else [])), rows)
    click.echo(f"{report['to_roll']} to roll in {len(report['waves'])} waves, {report['skipped']} skipped")


def _awaiting_approval(state: CliState, record: Any) -> None:
    """The rollout waits for an operator: say how to approve it, and exit EXIT_HALTED (not finished)."""
    if state.json_output:
        emit_json({**record.__dict__, "approve": f"baseroll approve {record.rollout_id}"})
    else:
        click.echo(f"{record.rollout_id}: {record.status}: {record.reason}")
        click.echo(f"approve with: baseroll approve {record.rollout_id} --project PROJECT (or abort it)")
    raise click.exceptions.Exit(EXIT_HALTED)


def _short(image: str) -> str:
    name, _, digest = image.partition("@")
    return f"{name.rsplit('/', 1)[-1]}@{digest[7:19]}" if digest else name


@click.command()
@click.option("--base", metavar="REF", help="A configured base track, host/repo:tag.")
@click.option("--app", metavar="REF", help="An app image to redeploy, host/repo[:tag]@sha256:...")
@click.option("--digest", help="The digest to roll to (default: what the tag points at now).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the rollout until it ends.")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True)
@with_locations
@click.pass_obj
def roll(state: CliState, base: str | None, app: str | None, digest: str | None, wait: bool, timeout: float,
         projects: tuple[str, ...], regions: tuple[str, ...]) -> None:
    """Start a rollout (planned here, executed by the deployed coordinator and workers) and follow it
    until it ends, or until it waits for an approval (then the command to approve it is printed)."""
    import time

    from rich.progress import Progress

    from baseroll.contracts.records import AWAITING_APPROVAL, TERMINAL
    from baseroll.rollout import planner

    deps = _deps(state, projects, regions, publishes=True)
    started = planner.start(deps, _roll_request(deps.config, base, app, digest, dry_run=False))
    rollout_id, total = started["rollout_id"], max(1, started["to_roll"])
    if not wait or started.get("status") == "nothing-to-do":
        emit_json(started) if state.json_output else click.echo(f"{rollout_id}: {started.get('status')}")
        return
    deadline = time.monotonic() + timeout
    record = None
    with Progress(disable=state.json_output) as progress:
        bar = progress.add_task(rollout_id, total=total)
        while time.monotonic() < deadline:
            record = deps.records.get(rollout_id)
            if record is not None:
                done = sum(w.get("done", 0) + w.get("failed", 0) + w.get("skipped", 0) for w in record.waves)
                progress.update(bar, completed=done, description=f"{rollout_id} wave {record.wave} {record.status}")
                if record.status in (*TERMINAL, AWAITING_APPROVAL):  # a person acts next: stop following
                    break
            time.sleep(2.0)
    if record is not None and record.status == AWAITING_APPROVAL:
        _awaiting_approval(state, record)
    if record is None or record.status not in TERMINAL:
        fail(EXIT_FAILED, f"{rollout_id}: not finished within {timeout:.0f}s (still {record.status if record else 'unknown'})")
    if state.json_output:
        emit_json(record.__dict__)
    else:
        click.echo(f"{rollout_id}: {record.status} {record.reason}".rstrip())
    if record.status != "finished":
        raise click.exceptions.Exit(EXIT_HALTED)

"""The `baseroll` console script.

    baseroll [--config PATH] [--json] COMMAND ...

Exit codes are part of the interface (scripts and Cloud Build steps branch on them):
0 done, 2 invalid input (bad option, request or configuration), 3 publishing failed.

Commands share one `CliState` (ctx.obj): the global options and a lazily loaded configuration,
so a command that needs no configuration (`publish`) works without one.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, NoReturn, Sequence

import click

from baseroll import config as configuration
from baseroll.contracts import requests, topics
from baseroll.contracts.parsing import EventError

EXIT_OK = 0
EXIT_INVALID = 2  # also what click itself uses for usage errors
EXIT_PUBLISH_FAILED = 3

DEFAULT_PUBLISH_TIMEOUT_S = 30.0
# Pub/Sub topic ids (https://cloud.google.com/pubsub/docs/create-topic#resource_names).
_TOPIC_ID = re.compile(r"^(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
_TOPIC_PATH = re.compile(r"^projects/[^/]+/topics/(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")


# --------------------------------------------------------------------------------------------- shared state


@dataclass
class CliState:
    config_path: str | None
    json_output: bool
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
                fail(EXIT_INVALID, f"config: {exc}")
        return self._config


def fail(code: int, message: str) -> NoReturn:
    """Print `error: ...` on stderr and exit with `code`."""
    click.echo(f"error: {message}", err=True)
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


# --------------------------------------------------------------------------------------------- group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="BASEROLL_CONFIG",
              help="Configuration YAML (default: $BASEROLL_CONFIG, else $BASEROLL_CONFIG_YAML).")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")
@click.version_option(package_name="baseroll", prog_name="baseroll")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, json_output: bool) -> None:
    """Roll Cloud Run fleets onto new base image digests."""
    from baseroll import log

    log.to_stderr()  # stdout is for tables and --json; the decision log goes to stderr
    ctx.obj = CliState(config_path=config_path, json_output=json_output)


# --------------------------------------------------------------------------------------------- publish


@main.command()
@click.option("--project", envvar="GOOGLE_CLOUD_PROJECT", help="Project of the topic ($GOOGLE_CLOUD_PROJECT).")
@click.option("--topic", default=topics.REQUESTS, show_default=True, help="Topic id or projects/P/topics/T.")
@click.option("--action", type=click.Choice(requests.ACTIONS), default="roll", show_default=True)
@click.option("--base", metavar="REF", help="Base track tag, host/repo:tag[@sha256:...].")
@click.option("--app", metavar="REF", help="App image, host/repo[:tag][@sha256:...] (digest required).")
@click.option("--digest", help="The new digest (sha256:...), when not in the reference.")
@click.option("--dry-run", is_flag=True, help="Plan and report only; change nothing.")
@click.option("--filter-project", multiple=True, metavar="PROJECT", help="Only services in these projects.")
@click.option("--filter-region", multiple=True, metavar="REGION", help="Only services in these regions.")
@click.option("--filter-service", multiple=True, metavar="NAME",
              help="Only these services (projects/P/locations/R/services/S).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Only services with this label.")
@click.option("--rollout-id", help="The rollout to resume or abort.")
@click.option("--reason", help="Free text carried into the logs (at most 500 characters).")
@click.option("--timeout", type=click.FloatRange(min=1.0, max=600.0), default=DEFAULT_PUBLISH_TIMEOUT_S,
              show_default=True, help="Seconds to wait for Pub/Sub to accept the message.")
@click.option("--json", "json_output", is_flag=True, help="Print {message_id, topic, request} as JSON.")
@click.pass_obj
def publish(state: CliState, project: str | None, topic: str, action: str, base: str | None, app: str | None,
            digest: str | None, dry_run: bool, filter_project: tuple[str, ...], filter_region: tuple[str, ...],
            filter_service: tuple[str, ...], labels: tuple[str, ...], rollout_id: str | None,
            reason: str | None, timeout: float, json_output: bool) -> None:
    """Publish a roll request (schema baseroll.dev/roll-request/v1) to the requests topic.

    \b
    baseroll publish --project P --base us-docker.pkg.dev/p/bases/python:3.12 --dry-run
    baseroll publish --project P --app us-docker.pkg.dev/p/apps/shop@sha256:... --filter-region us-central1
    baseroll publish --project P --action sweep
    baseroll publish --project P --action abort --rollout-id python-0123456789ab
    """
    topic_path = _topic_path(project, topic)
    filter_doc = {k: list(v) for k, v in (("projects", filter_project), ("regions", filter_region),
                                          ("services", filter_service)) if v}
    if labels:
        filter_doc["labels"] = _label_map(labels)
    raw = requests.to_message(action=action, base=base, app=app, digest=digest, filter=filter_doc or None,
                              dry_run=dry_run, rollout_id=rollout_id, reason=reason)
    request = _validated(raw, action)
    data, attributes = requests.to_message(request), requests.attributes(request)
    try:
        message_id = publish_message(topic_path, data, attributes, timeout)
    except PublishError as exc:
        fail(EXIT_PUBLISH_FAILED, f"publishing to {topic_path} failed: {exc}")
    if json_output or state.json_output:
        emit_json({"message_id": message_id, "topic": topic_path, "request": requests.to_document(request)})
    else:
        click.echo(message_id)


def _topic_path(project: str | None, topic: str) -> str:
    if _TOPIC_PATH.fullmatch(topic):
        return topic
    if not _TOPIC_ID.fullmatch(topic):
        fail(EXIT_INVALID, f"--topic: {topic!r} is not a topic id or projects/P/topics/T")
    if not project:
        fail(EXIT_INVALID, "--project: required (or $GOOGLE_CLOUD_PROJECT, or a full --topic path)")
    if "/" in project:
        fail(EXIT_INVALID, f"--project: {project!r} is not a project id")
    return f"projects/{project}/topics/{topic}"


def _label_map(pairs: Iterable[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(EXIT_INVALID, f"--label: expected KEY=VALUE, got {pair!r}")
        if labels.get(key, value) != value:
            fail(EXIT_INVALID, f"--label: {key!r} given twice with different values")
        labels[key] = value
    return labels


def _validated(raw: bytes, action: str) -> requests.Request:
    """Run the message through the same parser the function uses, so what the CLI accepts is
    exactly what the function accepts."""
    try:
        return requests.parse_request(requests.message(raw, {"schema": requests.SCHEMA, "action": action}))
    except EventError as exc:
        fail(EXIT_INVALID, f"invalid request: {exc}")


# --------------------------------------------------------------------------------------------- Pub/Sub


class PublishError(RuntimeError):
    """Pub/Sub did not accept the message in time (unreachable, refused, no credentials...)."""


def publish_message(topic_path: str, data: bytes, attributes: dict[str, str], timeout: float) -> str:
    """Publish one message and return its id. Honours PUBSUB_EMULATOR_HOST (the client does)."""
    from google.api_core import (
        exceptions as api_exceptions,  # heavy imports: only when publishing
    )
    from google.api_core import retry as api_retry
    from google.auth import exceptions as auth_exceptions
    from google.cloud import pubsub_v1

    # The client retries UNAVAILABLE for up to 10 minutes by default; a CLI must give up sooner.
    retry = api_retry.Retry(
        predicate=api_retry.if_exception_type(api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
                                              api_exceptions.InternalServerError, api_exceptions.Aborted),
        initial=0.1, maximum=2.0, multiplier=2.0, timeout=timeout,
    )
    failures = (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError,
                concurrent.futures.TimeoutError, TimeoutError, OSError)
    client = None
    try:
        # One message: publish it now instead of waiting for a batch to fill.
        client = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        future = client.publish(topic_path, data, retry=retry, timeout=timeout, **attributes)
        return future.result(timeout=timeout + 5.0)
    except failures as exc:
        raise PublishError(f"{type(exc).__name__}: {exc}".strip()) from exc
    finally:
        if client is not None:
            _close(client)


def _close(client: Any) -> None:
    """Stop batching and close the gRPC channel, so an in-process caller (tests) leaks nothing."""
    try:
        client.stop()
    except RuntimeError:  # already stopped
        pass
    client.transport.close()


if __name__ == "__main__":  # python -m baseroll.cli
    main()


# --------------------------------------------------------------------------------------------- operator commands
# plan, roll and status run the same pipeline as the functions, in-process, with the configured
# clients (Cloud Run, the registry, Pub/Sub); roll hands the rollout to the deployed coordinator.

EXIT_HALTED = 4  # roll: the rollout halted, was aborted or superseded
EXIT_FAILED = 1


def _deps(state: CliState, projects: tuple[str, ...], regions: tuple[str, ...]) -> Any:
    import dataclasses

    from baseroll import runtime

    cfg = state.config()
    if projects:
        cfg = dataclasses.replace(cfg, projects=projects)
    if regions:
        cfg = dataclasses.replace(cfg, regions=regions)
    return runtime.build(cfg)


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


@main.command()
@click.option("--base", metavar="REF", help="A configured base track, host/repo:tag.")
@click.option("--app", metavar="REF", help="An app image to redeploy, host/repo[:tag]@sha256:...")
@click.option("--digest", help="The digest to roll to (default: what the tag points at now).")
@with_locations
@click.pass_obj
def plan(state: CliState, base: str | None, app: str | None, digest: str | None,
         projects: tuple[str, ...], regions: tuple[str, ...]) -> None:
    """Show what a rollout would do, changing nothing (a dry run of the whole pipeline)."""
    from baseroll.rollout import planner

    deps = _deps(state, projects, regions)
    report = planner.start(deps, _roll_request(deps.config, base, app, digest, dry_run=True))
    if state.json_output:
        emit_json(report)
        return
    rows = [(r["service"].split("/services/")[-1], "/".join(r["service"].split("/")[1:4:2]), r["action"],
             r.get("strategy", ""), r.get("wave", ""), _short(next(iter((r.get("targets") or r.get("base_uris") or {}).values()), "")),
             r["reason"]) for r in report["services"]]
    emit_table(f"plan {report['rollout_id']} -> {report['target']}",
               ("service", "project/region", "action", "strategy", "wave", "target", "reason"), rows)
    click.echo(f"{report['to_roll']} to roll in {len(report['waves'])} waves, {report['skipped']} skipped")


def _short(image: str) -> str:
    name, _, digest = image.partition("@")
    return f"{name.rsplit('/', 1)[-1]}@{digest[7:19]}" if digest else name


@main.command()
@click.option("--base", metavar="REF", help="A configured base track, host/repo:tag.")
@click.option("--app", metavar="REF", help="An app image to redeploy, host/repo[:tag]@sha256:...")
@click.option("--digest", help="The digest to roll to (default: what the tag points at now).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the rollout until it ends.")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True)
@with_locations
@click.pass_obj
def roll(state: CliState, base: str | None, app: str | None, digest: str | None, wait: bool, timeout: float,
         projects: tuple[str, ...], regions: tuple[str, ...]) -> None:
    """Start a rollout (planned here, executed by the deployed coordinator and workers) and follow it."""
    import time

    from rich.progress import Progress

    from baseroll.contracts.records import TERMINAL
    from baseroll.rollout import planner

    deps = _deps(state, projects, regions)
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
                if record.status in TERMINAL:
                    break
            time.sleep(2.0)
    if record is None or record.status not in TERMINAL:
        fail(EXIT_FAILED, f"{rollout_id}: not finished within {timeout:.0f}s (still {record.status if record else 'unknown'})")
    if state.json_output:
        emit_json(record.__dict__)
    else:
        click.echo(f"{rollout_id}: {record.status} {record.reason}".rstrip())
    if record.status != "finished":
        raise click.exceptions.Exit(EXIT_HALTED)


@main.command()
@click.option("--base", "track_names", multiple=True, metavar="TRACK", help="Only these base tracks (by name).")
@click.option("--services", "show_services", is_flag=True, help="List every service, not only the counts.")
@with_locations
@click.pass_obj
def status(state: CliState, track_names: tuple[str, ...], show_services: bool,
           projects: tuple[str, ...], regions: tuple[str, ...]) -> None:
    """Per base track and base digest: how many services are on it, in flight, failed, opted out."""
    from baseroll.rollout import pipeline
    from baseroll.rollout import plan as planning
    from baseroll.rollout import status as status_mod

    deps = _deps(state, projects, regions)
    cfg = deps.config
    unknown = set(track_names) - {t.name for t in cfg.base_tracks}
    if unknown:
        fail(EXIT_INVALID, f"--base: unknown track(s) {', '.join(sorted(unknown))}")
    services = pipeline.discover(deps.fleet, cfg, quiet=True)
    catalog = deps.catalog()
    facts = catalog.facts_many(planning.images_to_inspect(services, cfg.labels, cfg.allowed_registries,
                                                          include_opted_out=True))
    out = []
    for track in cfg.base_tracks:
        if track_names and track.name not in track_names:
            continue
        current = catalog.version(track.image)
        st = status_mod.summarize(track.name, track.image, current, catalog.base_versions(track.image),
                                  services, facts, cfg.labels)
        out.append(st)
    if state.json_output:
        emit_json([{"track": s.track, "current_digest": s.current_digest, "on_digest": dict(s.on_digest),
                    "on_current": s.on_current, "outdated": s.outdated, "in_flight": s.in_flight,
                    "failed": s.failed, "opted_out": s.opted_out,
                    **({"services": s.services} if show_services else {})} for s in out])
        return
    rows = [(s.track, d[:19] + (" (current)" if d == s.current_digest else ""), n, "", "", "")
            for s in out for d, n in sorted(s.on_digest.items(), key=lambda kv: -kv[1])]
    rows += [(s.track, "total", sum(s.on_digest.values()), s.in_flight, s.failed, s.opted_out) for s in out]
    emit_table("fleet status", ("track", "base digest", "services", "in flight", "failed", "opted out"), rows)
    if show_services:
        emit_table("services", ("service", "base digest", "state", "rollout", "reason"),
                   [(r["service"], r["base_digest"][:19], r["state"], r.get("rollout_id"), r.get("reason"))
                    for s in out for r in s.services])


@main.command()
@click.argument("app")
@click.option("--old-base", required=True, metavar="REF", help="The base the app was built on (tag or digest).")
@click.option("--new-base", required=True, metavar="REF", help="The base to move it onto (tag or digest).")
@click.option("--tag", help="Also tag the result in the app's repository.")
@click.option("--platform", help="Rebase only this platform (os/arch[/variant]) of a multi-platform app.")
@click.option("--drift-policy", type=click.Choice(configuration.DRIFT_POLICIES), default="apply-or-refuse",
              show_default=True, help="When the new base changed Env/Entrypoint/Cmd/User/WorkingDir/ExposedPorts.")
@click.option("--plain-http", "plain_http", multiple=True, metavar="HOST[:PORT]",
              help="Registries to reach over plain HTTP (local registries only).")
@click.option("--dry-run", is_flag=True, help="Compute the result and its digest; push nothing.")
@click.pass_obj
def rebase(state: CliState, app: str, old_base: str, new_base: str, tag: str | None, platform: str | None,
           drift_policy: str, plain_http: tuple[str, ...], dry_run: bool) -> None:
    """Rebase APP from --old-base onto --new-base in the registry (like `crane rebase`, but
    multi-platform, drift-aware, verified, and moving no layer: only manifests and configs)."""
    from baseroll.images import rebaser, refs
    from baseroll.images.oci import OCIError
    from baseroll.images.rebase import RebaseError
    from baseroll.images.registry import RegistryClient, RegistryError

    try:
        app_ref, old_ref, new_ref = refs.parse(app), refs.parse(old_base), refs.parse(new_base)
    except refs.RefError as exc:
        fail(EXIT_INVALID, str(exc))
    hosts = {app_ref.registry, old_ref.registry, new_ref.registry}
    client = RegistryClient(plain_http_hosts=plain_http, allowed_hosts=hosts)
    target = refs.ImageRef(app_ref.registry, app_ref.repository, tag) if tag else None
    try:
        result = rebaser.rebase_image(client, app_ref, old_ref, new_ref, target=target, platform=platform,
                                      dry_run=dry_run, drift_policy=drift_policy)
    except (RebaseError, OCIError, ValueError) as exc:
        fail(EXIT_INVALID, f"refused: {exc}")
    except RegistryError as exc:
        fail(EXIT_FAILED, f"registry: {exc}")
    stats = client.stats
    payload = {"image": str(result.ref), "digest": result.digest, "platforms": list(result.platforms),
               "pushed": result.pushed, "mounted_layers": result.mounted_layers, "warnings": list(result.warnings),
               "bytes_downloaded": stats.bytes_downloaded, "bytes_uploaded": stats.bytes_uploaded, "dry_run": dry_run}
    if state.json_output:
        emit_json(payload)
    else:
        click.echo(str(result.ref))
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)


@main.command()
def demo() -> None:
    """Run the local demo (needs a checkout: it starts the local stack from infra/local)."""
    try:
        from infra.local import demo as demo_mod  # type: ignore[import-not-found]
    except ImportError:
        fail(EXIT_INVALID, "the demo runs from a baseroll checkout: `make demo`")
    raise click.exceptions.Exit(demo_mod.main([]))

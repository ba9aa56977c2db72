"""`baseroll status`: the fleet per base track and base digest, read from the live fleet.

`--watch` follows the current rollouts (their waves) and each project x region until they end;
`--html FILE` also writes the fleet by base digest as a self-contained page. Like `plan`, it
publishes nothing, so it never creates a Pub/Sub client. What is shown is built by the pure
modules rollout.status, rollout.status_view and rollout.status_page; here is only the reading.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from baseroll.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    CliState,
    emit_json,
    emit_table,
    fail,
)
from baseroll.cli.rollouts import _deps, with_locations

if TYPE_CHECKING:  # types only: every command is loaded with the CLI, so each imports what it uses on use
    from baseroll.config import BaseTrack
    from baseroll.fleet.view import ServiceView
    from baseroll.images.match import BaseVersion, ImageFacts
    from baseroll.rollout.lineage import TrackLineage
    from baseroll.rollout.status import RolloutProgress, TrackStatus


@dataclass
class _Track:
    config: BaseTrack
    current: BaseVersion
    lineage: TrackLineage
    status: TrackStatus


@dataclass
class _Reading:
    tracks: list[_Track]
    services: list[ServiceView]
    facts: dict[str, ImageFacts | str]


def _read(deps: Any, track_names: tuple[str, ...]) -> _Reading:
    """One pass over the fleet: every workload, its images' facts, each shown track's status."""
    from baseroll.rollout import pipeline
    from baseroll.rollout import plan as planning
    from baseroll.rollout import status as status_mod

    cfg = deps.config
    services = pipeline.discover(deps.fleet, cfg, quiet=True)
    catalog = deps.catalog()
    facts = catalog.facts_many(planning.images_to_inspect(services, cfg.labels, cfg.allowed_registries,
                                                          include_opted_out=True))
    tracks = []
    for track in cfg.base_tracks:
        if track_names and track.name not in track_names:
            continue
        current = catalog.version(track.image)
        lineage = pipeline.track_lineage(cfg, catalog, track.image, current, quiet=True)
        st = status_mod.summarize(track.name, track.image, current, lineage.own, services, facts, cfg.labels)
        tracks.append(_Track(track, current, lineage, st))
    return _Reading(tracks, services, facts)


def _rollouts(deps: Any, reading: _Reading) -> list[RolloutProgress]:
    """The progress of each shown track's rollout(s) of its current digest that have a record."""
    from baseroll.rollout import status as status_mod

    out = []
    for t in reading.tracks:
        for rollout_id in status_mod.rollout_ids_to_watch(t.config.name, t.current.digest, t.status):
            record = deps.records.get(rollout_id)
            if record is None or record.kind != "base" or record.track != t.config.name \
                    or record.base_digest != t.current.digest:
                continue
            assigned = status_mod.assigned_waves(deps.config, record, t.config.image, t.current, t.lineage,
                                                 reading.services, reading.facts)
            out.append(status_mod.rollout_progress(record, assigned, reading.services))
    return out


@click.command()
@click.option("--base", "track_names", multiple=True, metavar="TRACK", help="Only these base tracks (by name).")
@click.option("--services", "show_services", is_flag=True, help="List every workload, not only the counts.")
@click.option("--watch", is_flag=True,
              help="Redraw the current rollouts' waves and each project x region until the rollouts end.")
@click.option("--interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="--watch: seconds between refreshes.")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="--watch: stop after this many seconds.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the fleet by base digest as a self-contained HTML page.")
@with_locations
@click.pass_obj
def status(state: CliState, track_names: tuple[str, ...], show_services: bool, watch: bool, interval: float,
           timeout: float, html_path: Path | None, projects: tuple[str, ...], regions: tuple[str, ...]) -> None:
    """Per base track and base digest: how many workloads are on it, in flight, failed, opted out."""
    if watch and (state.json_output or html_path or show_services):
        fail(EXIT_INVALID, "--watch draws its own view: it takes no --json, --html or --services")
    if html_path is not None and not html_path.parent.is_dir():
        fail(EXIT_INVALID, f"--html: no directory {html_path.parent}")
    deps = _deps(state, projects, regions, publishes=False)
    unknown = set(track_names) - {t.name for t in deps.config.base_tracks}
    if unknown:
        fail(EXIT_INVALID, f"--base: unknown track(s) {', '.join(sorted(unknown))}")
    if watch:
        _watch(deps, track_names, interval, timeout)
        return
    reading = _read(deps, track_names)
    out = [t.status for t in reading.tracks]
    windowed = _add_windows(deps.config, reading, out)
    if html_path is not None:
        _write_html(html_path, out)
    if state.json_output:
        emit_json([{"track": s.track, "current_digest": s.current_digest, "on_digest": dict(s.on_digest),
                    "on_current": s.on_current, "outdated": s.outdated, "in_flight": s.in_flight,
                    "failed": s.failed, "opted_out": s.opted_out,
                    **({"services": s.services} if show_services else {})} for s in out])
        return
    _tables(out, show_services, windowed)
    if html_path is not None:
        click.echo(f"wrote {html_path}: {sum(sum(s.on_digest.values()) for s in out)} workloads "
                   f"on {sum(len(s.on_digest) for s in out)} base digests")


def _add_windows(cfg: Any, reading: _Reading, out: list[TrackStatus]) -> bool:
    """With `rollout.windows`: each listed workload's maintenance window now (open until, or closed
    and when it opens), as dry runs show it. False (nothing added) without windows."""
    from baseroll.clock import SYSTEM as clock
    from baseroll.rollout import windows

    if not cfg.rollout.windows:
        return False
    views = {v.name: v for v in reading.services}
    now = windows.at(clock.now())
    for s in out:
        for row in s.services:
            if row["service"] in views:
                row["window"] = windows.describe(cfg.rollout.windows, views[row["service"]], now)
    return True


def _tables(out: list[TrackStatus], show_services: bool, windowed: bool = False) -> None:
    rows = [(s.track, d[:19] + (" (current)" if d == s.current_digest else ""), n, "", "", "")
            for s in out for d, n in sorted(s.on_digest.items(), key=lambda kv: -kv[1])]
    rows += [(s.track, "total", sum(s.on_digest.values()), s.in_flight, s.failed, s.opted_out) for s in out]
    emit_table("fleet status", ("track", "base digest", "services", "in flight", "failed", "opted out"), rows)
    if show_services:
        window = ("window",) if windowed else ()
        emit_table("services", ("service", "kind", "base digest", "state", "rollout", "reason", *window),
                   [(r["service"], r["kind"], r["base_digest"][:19], r["state"], r.get("rollout_id"), r.get("reason"),
                     *((r.get("window", ""),) if windowed else ())) for s in out for r in s.services])


def _write_html(path: Path, tracks: list[TrackStatus]) -> None:
    """Written whole or not at all: a page open in a browser never shows half a fleet."""
    from datetime import datetime, timezone

    from baseroll.rollout import status_page

    page = status_page.render(tracks, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        fail(EXIT_INVALID, f"--html: cannot write {path}: {exc.strerror or exc}")


def _watch(deps: Any, track_names: tuple[str, ...], interval: float, timeout: float) -> None:
    """Live on a terminal; elsewhere one plain snapshot per refresh (a pipe or a log gets no escape
    codes). Ends when every shown rollout has ended (exit 0), on Ctrl-C (exit 0), or at `timeout`
    (exit 1 while a shown rollout still runs)."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # a pipe or a log: whole project and region names, not 80 columns' worth
    try:
        if console.is_terminal:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                running = _refresh_until_done(deps, track_names, interval, timeout,
                                              lambda view: live.update(view, refresh=True))
        else:
            running = _refresh_until_done(deps, track_names, interval, timeout,
                                          lambda view: (console.print(view), console.print()))
    except KeyboardInterrupt:
        return
    if running:
        fail(EXIT_FAILED, f"--watch: {', '.join(running)} still running after {timeout:.0f}s")


def _refresh_until_done(deps: Any, track_names: tuple[str, ...], interval: float, timeout: float,
                        show: Callable[[Any], Any]) -> list[str]:
    """Refresh at most timeout/interval + 1 times; the ids of shown rollouts still running at the end."""
    from datetime import datetime, timezone

    from baseroll.clock import SYSTEM as clock
    from baseroll.rollout.status_view import watch_view

    deadline = clock.monotonic() + timeout
    while True:
        reading = _read(deps, track_names)
        progress = _rollouts(deps, reading)
        show(watch_view([t.status for t in reading.tracks], progress,
                        datetime.now(timezone.utc).strftime("%H:%M:%S UTC")))
        running = [p.rollout_id for p in progress if not p.terminal]
        if progress and not running:
            return []
        if clock.monotonic() + interval > deadline:
            return running
        clock.sleep(interval)

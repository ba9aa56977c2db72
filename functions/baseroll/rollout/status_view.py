"""Pure: the live view of `baseroll status --watch` as rich renderables, from plain status data.

Per rollout a headline (id, status, wave N of M) and a table of its waves; per track a table of
its project x region locations. The CLI draws it with rich.live.Live on a terminal and prints it
once per refresh elsewhere (a pipe gets plain text: rich writes no escape codes when not a TTY).
"""
from __future__ import annotations

from typing import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from baseroll.rollout.status import RolloutProgress, TrackStatus, by_location

_STATUS_STYLE = {"running": "cyan", "finished": "green", "halted": "red", "aborted": "yellow", "superseded": "yellow",
                 "awaiting-approval": "magenta"}
_WAVE_STYLE = {"settled": "green", "rolling": "cyan", "waiting": "dim", "not-released": "dim"}


def rollout_table(progress: RolloutProgress) -> RenderableType:
    headline = Text(progress.headline, style=f"bold {_STATUS_STYLE.get(progress.status, '')}".strip())
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    for column in ("wave", "size", "done", "failed", "skipped", "state"):
        table.add_column(column, justify="left" if column == "state" else "right")
    for w in progress.waves:
        table.add_row(str(w.index + 1), str(w.size), str(w.done), str(w.failed), str(w.skipped),
                      Text(w.state, style=_WAVE_STYLE.get(w.state, "")))
    return Group(headline, table)


def locations_table(st: TrackStatus) -> RenderableType:
    table = Table(title=f"{st.track} by location (current {st.current_digest[:19]})", title_justify="left",
                  box=box.SIMPLE, show_edge=False, pad_edge=False)
    for column in ("project", "region", "current", "outdated", "in flight", "failed", "opted out"):
        table.add_column(column, justify="left" if column in ("project", "region") else "right")
    for loc in by_location(st):
        table.add_row(loc.project, loc.region, str(loc.current), str(loc.outdated), str(loc.in_flight),
                      Text(str(loc.failed), style="red" if loc.failed else ""), str(loc.opted_out))
    return table


def watch_view(tracks: Sequence[TrackStatus], rollouts: Sequence[RolloutProgress], at: str) -> RenderableType:
    """One frame: when it was read, every shown rollout, then every shown track's locations."""
    parts: list[RenderableType] = [Text(f"baseroll status at {at}", style="bold")]
    if not rollouts:
        parts.append(Text("no rollout of a current digest", style="dim"))
    parts += [rollout_table(p) for p in rollouts]
    parts += [locations_table(st) for st in tracks]
    return Group(*parts)

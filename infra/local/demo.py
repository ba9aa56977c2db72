"""`make demo`: seed a fleet on the local stack, push a new base, deliver the push event to the
function over HTTP, watch it roll, print a per-service table and a summary.

Exit 0 only when every eligible service is on the new base and every other service is untouched;
the apps on the repository's other track (python:3.11 beside 3.12) must have been skipped for
that reason, which the summary prints.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Console
from rich.table import Table

from . import scenario
from .stack import LocalStack


def short(image: str) -> str:
    name, _, digest = image.partition("@")
    name = name.split("/", 1)[-1]
    return f"{name}@{digest[7:19]}" if digest else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.demo")
    parser.add_argument("--services", type=int, default=40)
    parser.add_argument("--base", default="python", choices=["python", "node"])
    args = parser.parse_args(argv)
    console = Console(width=150)
    started = time.monotonic()
    with LocalStack() as stack:
        console.print(f"[bold]local stack[/] registry {stack.registry.url}  cloud run {stack.cloudrun.url}  "
                      f"pubsub {stack.pubsub.host}  functions: {', '.join(stack.targets)}")
        fleet = scenario.seed_fleet(stack, args.services)
        console.print(f"seeded {len(fleet.services)} services over 2 projects x 2 regions, "
                      f"{len(fleet.apps)} app images on {len(fleet.base_versions)} bases "
                      "(python 3.11 + 3.12 in one repository, node 20 + 22 in another, debian 12)")
        new_base = scenario.push_new_base(stack, fleet, args.base)
        track = fleet.base_track(args.base)
        console.print(f"pushed {track} -> {new_base.digest[:19]}; publishing the Artifact Registry event on `gcr`")
        t0 = time.monotonic()
        scenario.publish_push(stack, new_base, track.tag)
        rollout_id = scenario.rollout_id(args.base, new_base)
        with console.status(f"rolling out {rollout_id} (planner -> waves of tasks -> workers -> coordinator)"):
            record = scenario.wait_rollout(stack, rollout_id, timeout=240)
        roll_s = time.monotonic() - t0
        for w in record["waves"]:
            console.print(f"wave {w['wave']}: {w['size']} services, {w['done']} done, {w['failed']} failed, "
                          f"{w['skipped']} skipped")
        console.print(f"rollout {rollout_id}: [bold]{record['status']}[/] {record['reason']}")
        rows = scenario.results(stack, fleet)
        planned = scenario.planned_reasons(stack)
        other_tracks: dict[str, str] = {}  # app on another track of the rolled repository -> why it was skipped
        table = Table(title=f"rollout of {track}")
        for col in ("service", "project/region", "app", "base", "before", "after", "outcome"):
            table.add_column(col, no_wrap=True)
        ok = True
        counts: dict[str, int] = {}
        for r in rows:
            eligible = r.seeded.eligible_for(args.base)
            if eligible:
                good = r.changed and scenario.on_base(stack, r.image, new_base) and r.updates == 1
                outcome = "rolled" if good else f"NOT ROLLED {r.state} {r.reason}"
            elif scenario.other_track(r.seeded, args.base):
                # Never rebased onto the other track, and skipped for that reason (not by chance).
                reason = planned.get(r.seeded.name, "no plan logged")
                good = not r.changed and r.updates == 0 and "another track of this repository" in reason
                other_tracks[r.seeded.app] = reason
                outcome = "untouched (another track: see summary)" if good else f"NOT SKIPPED AS ANOTHER TRACK: {reason}"
            else:
                good = not r.changed and r.updates == 0
                why = "opted out" if r.seeded.opted_out else f"on {r.seeded.base}"
                outcome = f"untouched ({why})" if good else "CHANGED UNEXPECTEDLY"
            ok &= good
            key = outcome.split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
            parts = r.seeded.name.split("/")
            table.add_row(parts[5], f"{parts[1]}/{parts[3]}", r.seeded.app, r.seeded.base, short(r.seeded.image), short(r.image) if r.changed else "=",
                          f"[green]{outcome}[/]" if good else f"[red]{outcome}[/]")
        console.print(table)
        ok &= record["status"] == "finished"
        summary = {"ok": ok, "rollout": record["status"], "roll_seconds": round(roll_s, 2), "total_seconds": round(time.monotonic() - started, 2),
                   **counts, "other_track": other_tracks,
                   "registry_tokens_issued": stack.tokens.counts["issued"]}  # the registry requires auth
        console.print(f"[bold]summary[/] {json.dumps(summary)}")
        if not ok:
            stack.keep = True
            for target in stack.targets:
                console.print(f"{target} log: {stack.function_log(target)}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: a fleet of real servers on the local stack, three patches of their base, each rolled by
baseroll through Pub/Sub and the functions while simulated users hit every service.

The Cloud Run stand-in runs every revision (pulled from the registry, unpacked, started chrooted with
PORT set) behind its loopback proxy. The apps are busybox-httpd CGIs on a busybox base
(infra/local/server_apps.py). Pushed in turn: a good patch (every eligible service rolls, each new
revision verified at zero traffic before it gets any), one that answers 500 (verification catches it
on the canaries, traffic never moves, the rollout halts) and one that no longer starts (readiness
rolls the canaries back). A table shows each service after each push; the summary line which services
were held back and why, and how many user requests a failing revision answered: it must be 0.

Exit 0 only when every outcome is the expected one: checked against the registry and the services'
answers, not against baseroll's own bookkeeping alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from baseroll.contracts import ledger
from baseroll.images.refs import ImageRef
from rich.console import Console
from rich.table import Table

from . import scenario, server_apps
from .seed import SeededFleet, SeededService
from .stack import LocalStack

# About 40 requests a second at most: each one the proxy forwards opens a connection to the revision (busybox
# httpd closes it), and a storm of them would only load this 2-core machine.
USERS = {"threads": 2, "pause_s": 0.05, "max_seconds": 150, "max_requests": 50_000}


@dataclass
class Outcome:
    text: str  # as the table shows it
    key: str  # what the summary counts
    good: bool  # the expected outcome for this service and base
    why: str = ""  # the ledger's account of a service held back: the failing request, or the readiness failure


@dataclass
class Before:
    image: str
    answer: scenario.Answer


def short(image: str) -> str:
    name, _, digest = image.partition("@")
    return f"{name.split('/', 1)[-1]}@{digest[7:19]}" if digest else name


def outcome(stack: LocalStack, s: SeededService, before: Before, new_base: ImageRef, flavour: str) -> Outcome:
    """What happened to `s` when `new_base` (in `flavour`) rolled, and whether it is what should have."""
    svc = stack.run_client().get_service(name=s.name)
    image, now = svc.template.containers[0].image, scenario.ask(stack, s.name)
    state, verify = svc.annotations.get(ledger.STATE, ""), svc.annotations.get(ledger.VERIFY, "")
    touched = svc.annotations.get(ledger.BASE_DIGEST) == new_base.digest
    # Unchanged for its users: the same image answers, as before. (A rollback puts the template back, which
    # makes a new revision of the old image, so the revision's name may differ.)
    answering = scenario.revision_images(stack, s.name).get(now.revision)
    unchanged = image == answering == before.image and (now.status, now.body) == (before.answer.status, before.answer.body)
    if s.opted_out:
        return Outcome("untouched (opted out)", "untouched (opted out)", unchanged)
    if not touched:
        return Outcome("not attempted (halted)", "not attempted", unchanged and flavour != server_apps.GOOD)
    if state == ledger.ROLLED:
        good = scenario.on_base(stack, image, new_base) and now.status == 200 and flavour == server_apps.GOOD
        return Outcome(f"rolled, verified ({verify.removeprefix('passed: ')})", "rolled and verified", good)
    reason = svc.annotations.get(ledger.REASON, "")
    if state == ledger.ROLLED_BACK and reason.startswith("verification failed"):
        status = verify.split(" answered ", 1)[-1].split(":", 1)[0] if " answered " in verify else "no answer"
        return Outcome(f"held back at 0 % ({status})", "held back at zero traffic",
                       unchanged and flavour == server_apps.ANSWERS_500, verify)
    return Outcome(f"{state or 'NOT ROLLED'} ({reason.split(':', 1)[0]})", f"{state or 'not rolled'} by readiness",
                   state == ledger.ROLLED_BACK and unchanged and flavour == server_apps.STARTUP_BROKEN,
                   reason.split(" This can happen")[0][:300])


def roll(stack: LocalStack, fleet: SeededFleet, flavour: str, console: Console) -> dict:
    """Push the next patch in `flavour`, roll it with users on every service; this push's figures."""
    before = {s.name: Before(stack.run_client().get_service(name=s.name).template.containers[0].image,
                             scenario.ask(stack, s.name)) for s in fleet.services}
    new_base = scenario.push_server_base(stack, fleet, flavour)
    console.print(f"pushed {new_base.with_tag(server_apps.TAG)} -> {new_base.digest[:19]} ({flavour}); "
                  "Artifact Registry's event published on `gcr`; simulated users on every service URL")
    rid = scenario.rollout_id(server_apps.BASE, new_base)
    t0 = time.monotonic()
    with scenario.simulated_users(stack, fleet.services, **USERS) as users:
        scenario.publish_push(stack, new_base, server_apps.TAG)
        with console.status(f"rolling out {rid}"):
            record = scenario.wait_rollout(stack, rid, timeout=150)
        roll_s = time.monotonic() - t0
        time.sleep(1.0)  # users keep coming after the rollout: they meet whatever serves now
    failing = set() if flavour == server_apps.GOOD else scenario.revisions_on(stack, fleet.services, new_base)
    tally = users.tally
    outcomes = {s.name: outcome(stack, s, before[s.name], new_base, flavour) for s in fleet.services}
    console.print(f"rollout {rid}: [bold]{record['status']}[/] {record['reason']}  ({roll_s:.1f} s; waves: "
                  + ", ".join(f"{w['done']} done/{w['failed']} failed of {w['size']}" for w in record["waves"]) + ")")
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.key] = counts.get(o.key, 0) + 1
    # Every answer through the proxy counts, the verification's requests to tag URLs among them.
    answered_failing = sum(n for rev, n in stack.cloudrun.proxy.served.items() if rev in failing)
    console.print(f"users: {tally.sent} requests, {tally.from_revisions(failing)} answered by a failing revision, "
                  f"{tally.server_errors} errors; the {len(failing)} failing revisions answered "
                  f"{answered_failing} requests in all (verification's)")
    return {"flavour": flavour, "status": record["status"], "roll_seconds": round(roll_s, 1), "outcomes": outcomes,
            "counts": counts, "user_requests": tally.sent, "answered_by_failing_revision": tally.from_revisions(failing),
            "user_errors": tally.server_errors, "first_user_error": tally.first_error,
            "ok": record["status"] in ("finished", "halted") and all(o.good for o in outcomes.values())
            and tally.from_revisions(failing) == 0 and tally.server_errors == 0}


def table(fleet: SeededFleet, rolls: list[dict]) -> Table:
    t = Table(title=f"{len(fleet.services)} services running busybox-httpd apps, after each push of the base")
    for col in ("service", "project/region", "app", "seeded image", *(r["flavour"] for r in rolls)):
        t.add_column(col, no_wrap=True)
    for s in fleet.services:
        parts = s.name.split("/")
        cells = [f"[green]{o.text}[/]" if o.good else f"[red]{o.text}[/]" for o in (r["outcomes"][s.name] for r in rolls)]
        t.add_row(parts[5], f"{parts[1]}/{parts[3]}", s.app, short(s.image).removeprefix("apps/"), *cells)
    return t


def held_back(fleet: SeededFleet, rolls: list[dict]) -> dict[str, str]:
    """Service → why it kept its traffic, for every service a broken patch did not reach."""
    return {f"{s.name.rsplit('/', 1)[1]} ({r['flavour']})": r["outcomes"][s.name].why
            for r in rolls for s in fleet.services if r["outcomes"][s.name].why}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.demo")
    parser.add_argument("--services", type=int, default=10, help="services running the real-server apps")
    parser.add_argument("--bases", default=",".join(server_apps.FLAVOURS),
                        help=f"flavours of the base to push, in order (of {', '.join(server_apps.FLAVOURS)})")
    args = parser.parse_args(argv)
    flavours = [f for f in args.bases.split(",") if f]
    if not flavours or set(flavours) - set(server_apps.FLAVOURS):
        parser.error(f"--bases: a comma-separated list of {', '.join(server_apps.FLAVOURS)}")
    console = Console(width=200)
    started = time.monotonic()
    with LocalStack(run_revisions=True, extra_tracks=[server_apps.TRACK]) as stack:
        console.print(f"[bold]local stack[/] registry {stack.registry.url}  cloud run {stack.cloudrun.url} "
                      f"(revisions really run; service URLs on {stack.cloudrun.proxy_base})  functions: "
                      f"{', '.join(stack.targets)}")
        fleet = scenario.seed_server_fleet(stack, args.services, opted_out=1, canaries=2)
        console.print(f"seeded {len(fleet.services)} services over {len(stack.projects)} projects x "
                      f"{len(stack.regions)} regions ({len(fleet.apps)} apps: busybox httpd + a CGI reading the "
                      f"base's /{server_apps.GREETING}; 2 canaries, 1 opted out), every revision running")
        rolls = [roll(stack, fleet, flavour, console) for flavour in flavours]
        console.print(table(fleet, rolls))
        ok = all(r["ok"] for r in rolls)
        summary = {
            "ok": ok,
            **{r["flavour"]: {"rollout": r["status"], "roll_seconds": r["roll_seconds"], **r["counts"]} for r in rolls},
            "held_back": held_back(fleet, rolls),
            "user_requests": sum(r["user_requests"] for r in rolls),
            "answered_by_failing_revision": sum(r["answered_by_failing_revision"] for r in rolls),
            "user_errors": sum(r["user_errors"] for r in rolls),
            "registry_tokens_issued": stack.tokens.counts["issued"],  # the registry requires auth
            "total_seconds": round(time.monotonic() - started, 1),
        }
        console.print(f"[bold]summary[/] {json.dumps(summary)}")
        if not ok:
            stack.keep = True
            for r in rolls:
                if r["first_user_error"]:
                    console.print(f"first user error during {r['flavour']}: {r['first_user_error']}")
            for target in stack.targets:
                console.print(f"{target} log: {stack.function_log(target)}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make up`: the local stack with a seeded fleet, kept up until Ctrl-C or SIGTERM, for trying the CLI.

    python -m infra.local.playground up [--services N]     # prints the exports and commands to try
    python -m infra.local.playground push-base python [--notify]

`up` prints the exact `export` lines that point `baseroll` at it (config, Pub/Sub emulator host,
project) and a few commands in the order a newcomer would try them; tests/e2e/test_playground.py
runs exactly those lines. `push-base` pushes the next patch of a seeded base and moves its tag, as a
base image pipeline would; `--notify` also publishes Artifact Registry's event for it, so the
deployed functions start the rollout by themselves.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from baseroll import config as config_mod
from baseroll import runtime
from baseroll.contracts import topics
from baseroll.images.refs import ImageRef

from . import scenario, seed
from .seed import SeededFleet
from .stack import ROOT, TOPIC_PROJECT, LocalStack

PROG = "python -m infra.local.playground"
READY = "# The playground is up"  # the last line `up` prints (tests wait for it)


def exports(stack: LocalStack) -> dict[str, str]:
    """What a fresh shell needs for `baseroll` to reach this stack (PATH aside)."""
    return {
        "BASEROLL_CONFIG": str(stack.config_path),
        "PUBSUB_EMULATOR_HOST": stack.pubsub.host,
        "FIRESTORE_EMULATOR_HOST": stack.firestore.host,  # the rollout store
        "GOOGLE_CLOUD_PROJECT": TOPIC_PROJECT,  # `baseroll publish`'s project: where the topics are
    }


def commands(stack: LocalStack) -> list[tuple[str, str]]:
    """(why, command) to try, in order: each runs in a fresh shell with the exports, from the checkout."""
    track = f"{stack.registry.host}/bases/python:3.12"
    return [
        ("Which services run which base digest", "baseroll status"),
        ("Push the next patch of the python base (moves its 3.12 tag; --notify also sends Artifact "
         "Registry's event, and the functions roll it by themselves)", "python -m infra.local.playground push-base python"),
        ("What rolling it out would do (changes nothing)", f"baseroll plan --base {track}"),
        ("The same dry run by the deployed functions, through the requests topic (see the "
         "on_roll_request log)", f"baseroll publish --base {track} --dry-run"),
        ("Roll it out: planned here, run by the coordinator and workers; follow it to the end",
         f"baseroll roll --base {track}"),
        ("Every service and its base digest now", "baseroll status --base python --services"),
    ]


def instructions(stack: LocalStack, fleet: SeededFleet) -> str:
    lines = [
        f"Seeded {len(fleet.services)} services over {len(stack.projects)} projects x {len(stack.regions)} regions, "
        f"{len(fleet.apps)} app images on {len(fleet.base_versions)} bases.",
        f"registry {stack.registry.url}   cloud run {stack.cloud_run_endpoint()} ({stack.cloud_run_transport})   "
        f"pubsub {stack.pubsub.host}   function logs {stack.workdir}/*.log",
        "",
        f"# In another shell, from this checkout ({ROOT}):",
        *(f"export {name}={value}" for name, value in exports(stack).items()),
    ]
    venv_bin = Path(sys.executable).parent
    if (venv_bin / "baseroll").exists():  # `baseroll` and `python` as `make deps` installed them
        lines.append(f'export PATH="{venv_bin}:$PATH"')
    lines += ["", "# Then try:"]
    for why, command in commands(stack):
        lines += [f"# {why}:", command]
    lines += ["", f"{READY} (pid {os.getpid()}); Ctrl-C or `kill {os.getpid()}` stops it."]
    return "\n".join(lines)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through LocalStack's `with`, which stops every process it started


def up(services: int) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with LocalStack() as stack:
            fleet = scenario.seed_fleet(stack, services)
            print(instructions(stack, fleet), flush=True)
            threading.Event().wait()  # until a signal
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0


def push_base(name: str, notify: bool) -> int:
    """Push the next patch of seeded base `name` to the registry in $BASEROLL_CONFIG."""
    try:
        cfg = config_mod.load()
    except config_mod.ConfigError as exc:
        print(f"error: {exc}; export the lines `make up` printed", file=sys.stderr)
        return 2
    base = next(b for b in seed.BASES if b.name == name)
    host = cfg.base_tracks[0].image.registry  # the playground's one registry
    client = runtime.registry_client(cfg)  # authenticates with the config's registry_credentials
    patch = re.compile(rf"{re.escape(base.tag)}-p(\d+)")
    pushed = [int(m.group(1)) for t in client.list_tags(ImageRef(host, base.repository)) if (m := patch.fullmatch(t))]
    version = max(pushed, default=0) + 1
    ref = seed.push_base(client, host, base, version)
    track = ImageRef(host, base.repository, base.tag)
    print(f"pushed {track} (also :{base.tag}-p{version}) -> {ref.digest}")
    if notify:
        message_id = _publish_push_event(ref, base.tag)
        print(f"published Artifact Registry's push event (message {message_id}): the functions roll it now")
    return 0


def _publish_push_event(ref: ImageRef, tag: str) -> str:
    """The INSERT notification Artifact Registry publishes (topic `gcr`), to $PUBSUB_EMULATOR_HOST."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    try:
        topic = publisher.topic_path(LocalStack.topic_project(topics.ARTIFACT_PUSHES), topics.ARTIFACT_PUSHES)
        return publisher.publish(topic, scenario.push_event_data(ref, tag)).result(timeout=30)
    finally:
        publisher.stop()
        publisher.transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the seeded local stack and keep it up until Ctrl-C / SIGTERM")
    start.add_argument("--services", type=int, default=40, help="how many tenant services to seed")
    push = sub.add_parser("push-base", help="push the next patch of a seeded base and move its tag")
    push.add_argument("base", choices=[b.name for b in seed.BASES])
    push.add_argument("--notify", action="store_true", help="also publish Artifact Registry's push event")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.services)
    return push_base(args.base, args.notify)


if __name__ == "__main__":
    sys.exit(main())

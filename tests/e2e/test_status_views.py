"""`baseroll status --watch` in a pipe while a rollout runs, and `baseroll status --html` rendered by
headless Chromium (Debian's `chromium`, installed by `make system-deps`), read back from its DOM."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from baseroll import cli
from baseroll.contracts import ledger
from click.testing import CliRunner

from infra.local import scenario
from infra.local.procs import LOOPBACK
from infra.local.stack import LocalStack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = '<script>document.title="owned"</script><img src="http://evil.example/x.png">'
HEADLINE = re.compile(r"^(?P<id>python-[0-9a-f]+) (?P<status>[a-z-]+) wave (?P<n>\d+) of (?P<m>\d+)", re.M)


@dataclass
class Rolled:
    stack: LocalStack
    fleet: scenario.SeededFleet
    rollout_id: str
    watch: subprocess.CompletedProcess
    eligible: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def rolled():
    # Deploys that take a while, so the rollout's waves are seen while they roll.
    with LocalStack(deploy_latency_s=0.6) as stack:
        fleet = scenario.seed_fleet(stack, services=16)
        mark_failed(stack, next(s.name for s in fleet.services if s.base == "node" and not s.opted_out))
        scenario.push_new_base(stack, fleet, "node")  # nothing runs node's new digest: every node workload is outdated
        new_python = scenario.push_new_base(stack, fleet, "python")
        code, out = run(stack, "roll", "--base", str(fleet.base_track("python")), "--no-wait")
        assert code == 0 and "running" in out, out
        # As `status` reads only, the watch needs no Pub/Sub: none here, and no usable Google credentials.
        fresh = {"PATH": os.environ["PATH"], "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/adc.json",
                 "FIRESTORE_EMULATOR_HOST": os.environ["FIRESTORE_EMULATOR_HOST"]}
        watch = subprocess.run([sys.executable, "-m", "baseroll.cli", "--config", str(stack.config_path), "status",
                                "--watch", "--base", "python", "--interval", "0.5", "--timeout", "240"],
                               cwd=ROOT, env=fresh, capture_output=True, text=True, timeout=300)
        yield Rolled(stack, fleet, scenario.rollout_id("python", new_python), watch,
                     {s.name for s in fleet.services if s.eligible_for("python")})


def run(stack, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, ["--config", str(stack.config_path), *args], catch_exceptions=False)
    return result.exit_code, result.output


def mark_failed(stack: LocalStack, name: str) -> None:
    """A ledger that says a rollout was rolled back from the service, with a reason that is markup."""
    client = stack.run_client()
    svc = client.get_service(name=name)
    svc.annotations.update({ledger.ROLLOUT_ID: "node-rolled-back-by-hand", ledger.STATE: ledger.ROLLED_BACK,
                            ledger.REASON: HOSTILE})
    client.update_service(service=svc).result(timeout=60)


def frames(out: str) -> list[str]:
    return [f for f in out.split("baseroll status at ")[1:]]


def waves_of(frame: str) -> list[list[str]]:
    """The rows of the frame's waves table: wave, size, done, failed, skipped, state."""
    body = frame.split("python by location")[0]
    return [line.split() for line in body.splitlines() if re.match(r"^\s*\d+\s+\d+\s+\d+\s+\d+\s+\d+\s+[a-z-]+\s*$", line)]


def test_watch_in_a_pipe_follows_the_waves_to_finished(rolled):
    assert rolled.watch.returncode == 0, rolled.watch.stderr + rolled.watch.stdout[-3000:]
    out = rolled.watch.stdout
    assert "\x1b" not in out, "a pipe gets no escape codes"
    shots = frames(out)
    heads = [HEADLINE.search(f) for f in shots]
    assert len(shots) >= 2 and all(heads), out
    assert {h["id"] for h in heads} == {rolled.rollout_id}
    assert heads[0]["status"] == "running" and heads[-1]["status"] == "finished", [h.group(0) for h in heads]
    assert all(h["status"] == "running" for h in heads[:-1]), "the watch ends at the first terminal snapshot"
    shown = [int(h["n"]) for h in heads]
    assert shown == sorted(shown) and shown[-1] == int(heads[-1]["m"]), shown
    done = [sum(int(row[2]) for row in waves_of(f)) for f in shots]
    assert done == sorted(done) and done[0] < done[-1] == len(rolled.eligible), done
    last = waves_of(shots[-1])
    assert len(last) == int(heads[-1]["m"]) and {row[5] for row in last} == {"settled"}
    assert sum(int(row[1]) for row in last) == len(rolled.eligible)

    # The last frame's locations: every eligible python service on the current base, only opted-out ones not.
    opted_out = sum(1 for s in rolled.fleet.services if s.base == "python" and s.opted_out)
    locations = [line.split() for line in shots[-1].split("python by location")[1].splitlines()
                 if line.split()[:1] and line.split()[0] in rolled.stack.projects]
    assert len(locations) == len(rolled.stack.projects) * len(rolled.stack.regions)
    assert sum(int(c[2]) for c in locations) == len(rolled.eligible)
    assert sum(int(c[3]) for c in locations) == opted_out == sum(int(c[6]) for c in locations)


def test_watch_on_a_terminal_draws_in_place(rolled):
    """On a terminal (script(1) gives it one) the view is rich's live display: styled, redrawn in
    place; the rollout has ended, so one frame and exit 0."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "baseroll.cli", "--config",
                                                 str(rolled.stack.config_path), "status", "--watch", "--base",
                                                 "python", "--interval", "0.5", "--timeout", "60"])
    proc = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120", "LINES": "50"}, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "\x1b[" in proc.stdout, "styled for a terminal"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", proc.stdout)
    assert re.search(rf"^{rolled.rollout_id} finished wave (\d+) of \1$", plain, re.M), plain[-2000:]


def test_watch_refuses_what_it_cannot_draw(rolled):
    code, out = run(rolled.stack, "--json", "status", "--watch")
    assert code == 2 and "--watch" in out


class Dom(HTMLParser):
    """What Chromium's DOM holds after the page's script ran: body attributes, each digest section
    with its rows, and every element's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict = {}
        self.tags: list[tuple[str, dict]] = []
        self.sections: list[dict] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "body":
            self.body = a
        elif tag == "section" and "digest" in a.get("class", ""):
            track = next(t for n, t in reversed(self.tags) if n == "section" and "data-track" in t)["data-track"]
            self.sections.append({**a, "track": track, "rows": []})
        elif tag == "tr" and a.get("class") == "workload":
            self.sections[-1]["rows"].append({"hidden": "hidden" in a, "cells": []})
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.sections[-1]["rows"][-1]["cells"].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


class Proxy:
    """A proxy Chromium is told to use that answers nothing: it records the host of every request
    (Chromium makes some of its own, to Google's update and time servers, whatever the page)."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOOPBACK, 0))
        self.hosts: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")  # GET http://h/p | CONNECT h:443
                except OSError:
                    continue
                target = first.split(" ")[1] if " " in first else ""
                self.hosts.append(target.split("://")[-1].split("/")[0].rsplit(":", 1)[0])

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.sock.getsockname()[1]}"


def chromium_dom(url: str, profile: Path, proxy: Proxy) -> Dom:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make system-deps` installs it"
    # --no-sandbox: the tests run as root (CI and the dev machines), and Chromium refuses to start its
    # sandbox as root. The page is our own file, so the sandbox protects nothing here.
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update",
                           f"--proxy-server=http://{proxy.address}", "--proxy-bypass-list=<-loopback>",
                           f"--user-data-dir={profile}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = Dom()
    dom.feed(proc.stdout)
    return dom


def test_html_page_in_headless_chromium(rolled, tmp_path):
    page = tmp_path / "fleet.html"
    code, out = run(rolled.stack, "status", "--html", str(page))
    assert code == 0 and f"wrote {page}" in out, out
    code, out = run(rolled.stack, "--json", "status", "--services")
    truth = {s["track"]: s for s in json.loads(out)}
    proxy = Proxy()
    dom = chromium_dom(page.as_uri(), tmp_path / "profile", proxy)

    assert dom.body.get("data-ready") == "1", "the page's script ran"
    assert [t for t, _ in dom.tags].count("script") == 1 and not [t for t, _ in dom.tags if t == "img"]
    assert not [a for _, a in dom.tags for k in ("src", "href") if a.get(k)], "nothing to fetch"
    for track, st in truth.items():
        sections = [s for s in dom.sections if s["track"] == track]
        assert sections[0]["data-digest"] == st["current_digest"] and "current" in sections[0]["class"]
        assert {s["data-digest"]: int(s["data-count"]) for s in sections} == {
            st["current_digest"]: st["on_current"], **{d: n for d, n in st["on_digest"].items()}}
        for s in sections:
            assert len(s["rows"]) == int(s["data-count"]) == int(s["data-shown"]), s["data-digest"]
            names = sorted(r["cells"][0] for r in s["rows"])
            assert names == sorted(w["service"].split("/")[-1] for w in st["services"]
                                   if w["base_digest"] == s["data-digest"])
            assert {r["cells"][1] for r in s["rows"]} <= {"service", "job", "worker-pool"}

    python = [s for s in dom.sections if s["track"] == "python"]
    assert {r["cells"][4] for r in python[0]["rows"]} == {"on-base"} and len(python[0]["rows"]) == len(rolled.eligible)
    assert {r["cells"][5] for r in python[0]["rows"]} == {rolled.rollout_id}
    assert {r["cells"][4] for s in python[1:] for r in s["rows"]} == {"opted-out"}
    node = [s for s in dom.sections if s["track"] == "node"]
    assert node[0]["rows"] == [] and truth["node"]["on_current"] == 0
    failed = [r for s in node for r in s["rows"] if r["cells"][4] == "failed"]
    assert len(failed) == 1 and failed[0]["cells"][6] == HOSTILE, "the reason is text, as it was written"

    # The fragment fills the filter: only the failed row is shown.
    dom = chromium_dom(page.as_uri() + "#failed", tmp_path / "profile", proxy)
    shown = [r for s in dom.sections for r in s["rows"] if not r["hidden"]]
    assert [r["cells"][6] for r in shown] == [HOSTILE]
    assert sum(int(s["data-shown"]) for s in dom.sections) == 1

    # No request for anything the page names (the hostile reason names a host); the same page with
    # that markup live shows the proxy does see a page's requests.
    named = set(re.findall(r"https?://([a-z0-9.-]+)", page.read_text()))
    assert named == {"evil.example"} and not named & set(proxy.hosts), proxy.hosts
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body>{HOSTILE}</body></html>")
    chromium_dom(control.as_uri(), tmp_path / "profile", proxy)
    assert "evil.example" in proxy.hosts, proxy.hosts
    proxy.sock.close()

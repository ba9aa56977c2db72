"""`baseroll status --html`: the page is whole, self-contained and escapes every value from the fleet."""
from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser

from baseroll.rollout.status import TrackStatus
from baseroll.rollout.status_page import render

CURRENT, OLD, OLDER = "sha256:" + "c" * 64, "sha256:" + "a" * 64, "sha256:" + "b" * 64
HOSTILE = '<script>alert("x")</script><img src=http://evil.example/x.png onerror=alert(1)>'


def row(name: str, digest: str, state: str = "on-base", kind: str = "service", reason: str | None = None,
        project: str = "tenants-a", region: str = "us-central1") -> dict:
    return {"service": f"projects/{project}/locations/{region}/services/{name}", "kind": kind, "project": project,
            "region": region, "base_digest": digest, "state": state, "rollout_id": "python-abc", "reason": reason}


def fleet(hostile: str = HOSTILE) -> TrackStatus:
    rows = [row("api", CURRENT), row("web", CURRENT, region="europe-west1"),
            row("nightly", OLD, kind="job"), row("queue", OLD, kind="worker-pool", state="failed", reason=hostile),
            row(f"x{hostile}", OLDER, state="opted-out")]
    return TrackStatus("python", CURRENT, Counter(r["base_digest"] for r in rows), failed=1, opted_out=1,
                       services=rows, image="127.0.0.1:5000/bases/python:3.12")


class Page(HTMLParser):
    """The elements and text a browser would build from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parsed(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def test_digests_in_order_with_their_workloads_and_counts():
    html = render([fleet()], "2026-11-29 21:00:00 UTC")
    sections = [a for t, a in parsed(html).tags if t == "section" and "digest" in (a.get("class") or "")]
    assert [(s["data-digest"], s["data-count"]) for s in sections] == [(CURRENT, "2"), (OLD, "2"), (OLDER, "1")]
    assert sections[0]["class"] == "digest current" and {s["class"] for s in sections[1:]} == {"digest older"}
    text = "".join(parsed(html).text)
    assert "5 workloads: 2 on the current base, 3 outdated, 0 in flight, 1 failed, 1 opted out" in text
    assert "worker-pool" in text and "job" in text  # the kind column


def test_hostile_values_are_text_not_markup():
    html = render([fleet()], "now")
    page = parsed(html)
    assert [t for t, _ in page.tags].count("script") == 1, "only the page's own script"
    assert not [t for t, _ in page.tags if t == "img"]
    assert sum(HOSTILE in chunk for chunk in page.text) == 2  # the reason cell and the service name cell
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_self_contained_no_external_url():
    assert """http-equiv="Content-Security-Policy" content="default-src 'none';""" in render([], "")
    assert not [a for _, a in parsed(render([fleet()], "now")).tags for k in ("src", "href") if a.get(k)]
    # Nothing in the page's own markup, style or script that a browser would fetch.
    assert not re.search(r"src\s*=|href\s*=|url\(|@import|https?:|//[a-z]", render([fleet("OOMKilled")], "now"))


def test_a_track_nobody_runs_yet_shows_its_current_digest_empty():
    empty = TrackStatus("node", CURRENT, image="127.0.0.1:5000/bases/node:20")
    html = render([empty], "now")
    assert f'data-digest="{CURRENT}" data-count="0"' in html and "nothing runs it yet" in html
    assert "no base track shown" in render([], "now")

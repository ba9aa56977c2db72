"""Pure: `baseroll status --html FILE`, the fleet by base digest as one self-contained HTML page.

Inline CSS and script, no external URL (it opens from a file, offline, and fetches nothing; its
Content-Security-Policy forbids any fetch as well).
Every value from the fleet (names, reasons, rollout ids) is escaped: a reason is whatever text
Cloud Run or a ledger annotation holds. The script only filters and sorts rows already in the
page; the page's fragment (`page.html#failed`) fills the filter, so a link can share a view.
"""
from __future__ import annotations

from html import escape
from typing import Iterable, Sequence

from baseroll.rollout.status import TrackStatus

# Even a value that escaped escaping could load nothing: only the page's own inline style and script run.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

COLUMNS = ("workload", "kind", "project", "region", "state", "rollout", "reason")

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1em;font-weight:600}
code{font:12px ui-monospace,monospace}
.counts{color:#555}.badge{background:#2a7;color:#fff;border-radius:3px;padding:0 .4em;font-size:.85em}
section.digest{margin-left:1em;border-left:3px solid #ccc;padding-left:.8em}
section.digest.current{border-left-color:#2a7}
table{border-collapse:collapse;margin:.4em 0 1em}
th,td{border-bottom:1px solid #ddd;padding:.2em .8em;text-align:left;vertical-align:top}
th{cursor:pointer;user-select:none;background:#f4f4f4}
tr[data-state=failed] td{background:#fdecec}tr[data-state=in-flight] td{background:#eef5fd}
.none,.shown{color:#777}
"""

_SCRIPT = """
(function () {
  var input = document.getElementById('filter');
  function apply() {
    var q = input.value.trim().toLowerCase();
    document.querySelectorAll('section.digest').forEach(function (sec) {
      var shown = 0;
      sec.querySelectorAll('tr.workload').forEach(function (tr) {
        var hit = tr.textContent.toLowerCase().indexOf(q) >= 0;
        tr.hidden = !hit;
        if (hit) { shown += 1; }
      });
      sec.querySelector('.shown').textContent = shown + ' shown';
      sec.dataset.shown = String(shown);
    });
  }
  function sortBy(th) {
    var body = th.closest('table').tBodies[0];
    var col = th.cellIndex, dir = th.dataset.dir === 'asc' ? -1 : 1;
    th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    Array.prototype.slice.call(body.rows).sort(function (a, b) {
      return dir * a.cells[col].textContent.localeCompare(b.cells[col].textContent);
    }).forEach(function (tr) { body.appendChild(tr); });
  }
  document.querySelectorAll('table.workloads th').forEach(function (th) {
    th.addEventListener('click', function () { sortBy(th); });
  });
  input.value = decodeURIComponent(location.hash.slice(1));
  input.addEventListener('input', apply);
  apply();
  document.body.dataset.ready = '1';
})();
"""


def render(tracks: Sequence[TrackStatus], generated_at: str) -> str:
    """The whole page: per track, per base digest (the current one first), the workloads on it."""
    body = "".join(_track(st) for st in tracks) or '<p class="none">no base track shown</p>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>baseroll: fleet by base digest</title><style>{_CSS}</style></head>"
        f'<body data-ready="0"><header><h1>Fleet by base digest</h1><p class="counts">read {_e(generated_at)}</p>'
        '<label>Filter <input id="filter" type="search" placeholder="name, project, region, state, rollout">'
        f"</label></header><main>{body}</main><script>{_SCRIPT}</script></body></html>\n"
    )


def _track(st: TrackStatus) -> str:
    total = sum(st.on_digest.values())
    counts = (f"{total} workloads: {st.on_current} on the current base, {st.outdated} outdated, "
              f"{st.in_flight} in flight, {st.failed} failed, {st.opted_out} opted out")
    digests = "".join(_digest(st, d) for d in st.digests())
    return (f'<section class="track" data-track="{_e(st.track)}"><h2>{_e(st.track)} <code>{_e(st.image)}</code></h2>'
            f'<p class="counts">{_e(counts)}</p>{digests}</section>')


def _digest(st: TrackStatus, digest: str) -> str:
    current = digest == st.current_digest
    rows = [r for r in st.services if r["base_digest"] == digest]
    badge = ' <span class="badge">current</span>' if current else ""
    head = (f'<h3><code>{_e(digest)}</code>{badge} <span class="count">{len(rows)} workloads</span> '
            f'<span class="shown"></span></h3>')
    table = _table(rows) if rows else '<p class="none">nothing runs it yet</p>'
    return (f'<section class="digest {"current" if current else "older"}" data-digest="{_e(digest)}" '
            f'data-count="{len(rows)}">{head}{table}</section>')


def _table(rows: Iterable[dict]) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join(
        f'<tr class="workload" data-state="{_e(r["state"])}" title="{_e(r["service"])}">'
        + "".join(f"<td>{_e(v)}</td>" for v in _cells(r)) + "</tr>"
        for r in sorted(rows, key=lambda r: (r["project"], r["region"], r["service"])))
    return f'<table class="workloads"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cells(row: dict) -> tuple[str, ...]:
    # projects/P/locations/L/<kind>s/NAME: the name is everything after the fifth slash
    return (row["service"].split("/", 5)[-1], row.get("kind", "service"), row["project"], row["region"],
            row["state"], row.get("rollout_id") or "", row.get("reason") or "")


def _e(value: object) -> str:
    return escape(str(value), quote=True)

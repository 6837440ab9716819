"""HTML for the technologist console and the central dashboard (no JS framework, plots as inline SVG).

Server-rendered so the dashboard works without scripts and the console needs only ``EventSource``.
Everything interpolated is escaped; JSON embedded in a page has ``<`` escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
STATUS_COLOURS = {"pass": "#1e8e3e", "warn": "#f29900", "fail": "#d93025", "error": "#8e24aa", "none": "#5f6368"}

_BASE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#202124;background:#f8f9fa}
header{background:#202124;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}
header a{color:#8ab4f8} main{padding:1rem} table{border-collapse:collapse;background:#fff}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e0e0e0;text-align:left;vertical-align:top}
th{background:#f1f3f4} .num{text-align:right} h2{margin:1.4rem 0 .5rem}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _json_script(data: Any) -> str:
    return json.dumps(data).replace("<", "\\u003c")


# -- console --------------------------------------------------------------------------------------
_CONSOLE_CSS = """
html,body{height:100%} body{display:flex;flex-direction:column;background:#111;color:#fff}
header{background:#000} #banner{flex:0 0 auto;padding:3vh 4vw;text-align:center;transition:background .2s}
#status{font-size:16vh;font-weight:800;letter-spacing:.05em;line-height:1}
#series{font-size:3.2vh;margin-top:1vh;opacity:.9}
#body{flex:1 1 auto;padding:2vh 4vw;font-size:3vh;overflow:auto}
#actions li{font-weight:700;margin:.4em 0} #reasons li{margin:.3em 0;opacity:.9}
.meta{opacity:.7;font-size:2vh} #conn{margin-left:auto;font-size:.9rem}
.flash{animation:flash 1s ease-out} @keyframes flash{from{filter:brightness(1.8)}to{filter:none}}
#state{font-size:3vh;font-weight:700;margin-top:.6vh;letter-spacing:.04em}
#state[data-final="false"]{background:#0008;display:inline-block;padding:.1em .6em;border-radius:.3em}
#update{font-size:2.6vh;margin-top:.4vh;font-weight:700}
#preview{display:block;max-width:100%;height:auto;image-rendering:pixelated;margin:.4em 0 1em;background:#000}
#checks{list-style:none;padding:0;font-size:2.4vh} #checks li{margin:.2em 0}
#checks li b{display:inline-block;min-width:6em}
"""

_CONSOLE_JS = """
const STATION = %(station)s;
const COLOURS = %(colours)s;
const LABEL = {pass: "PASS", warn: "WARN", fail: "FAIL", error: "ERROR"};
function li(items, f) { return items.map(x => { const e = document.createElement("li"); e.textContent = f(x);
  return e; }); }
function render(v) {
  const banner = document.getElementById("banner");
  const st = v ? v.status : "none";
  banner.style.background = COLOURS[st] || COLOURS.none;
  banner.dataset.status = st;
  document.getElementById("status").textContent = v ? (LABEL[st] || st.toUpperCase()) : "WAITING";
  document.getElementById("series").textContent = v ? [v.modality, v.series_number != null ? "#" + v.series_number : "",
    v.series_description || "(no description)", v.n_instances ? v.n_instances + " images" : ""]
    .filter(Boolean).join("  ") : "No series checked yet at this station";
  const state = document.getElementById("state");
  state.dataset.final = v ? String(v.final !== false) : "";
  state.textContent = !v ? "" : (v.final === false ?
    "PROVISIONAL - more images may still arrive" : "final");
  document.getElementById("update").textContent = v && v.update ? v.update : "";
  const img = document.getElementById("preview");
  if (v && v.preview) { img.src = v.preview + "?v=" + v.verdict_id; img.hidden = false; } else { img.hidden = true; }
  document.getElementById("checks").replaceChildren(...li(v ? (v.checks || []) : [], c => c.check + "  " +
    c.status.toUpperCase() + (c.message ? "  " + c.message : "")));
  for (const [i, e] of [...document.getElementById("checks").children].entries()) {
    e.dataset.status = v.checks[i].status; }
  document.getElementById("checks-title").hidden = !(v && v.checks && v.checks.length);
  document.getElementById("actions").replaceChildren(...li(v ? v.actions : [], a => a));
  document.getElementById("action-title").hidden = !(v && v.actions.length);
  document.getElementById("reasons").replaceChildren(...li(v ? v.reasons : [], r => r.check + ": " + r.message));
  document.getElementById("reason-title").hidden = !(v && v.reasons.length);
  document.getElementById("when").textContent = v ? "verdict " + new Date(v.verdict_at).toLocaleTimeString() +
    (v.elapsed_ms != null ? "  (checked in " + Math.round(v.elapsed_ms) + " ms)" : "") : "";
  document.body.dataset.verdictId = v ? v.verdict_id : "";
  document.title = (v ? (LABEL[st] || st) + " - " : "") + STATION + " - scanqc";
  banner.classList.remove("flash"); void banner.offsetWidth; banner.classList.add("flash");
}
render(%(initial)s);
function connect() {
  const es = new EventSource("/api/stations/" + encodeURIComponent(STATION) + "/events");
  const conn = document.getElementById("conn");
  es.onopen = () => { conn.textContent = "live"; conn.dataset.state = "live"; };
  es.addEventListener("verdict", ev => render(JSON.parse(ev.data)));
  es.onerror = () => { conn.textContent = "reconnecting..."; conn.dataset.state = "down"; };
}
connect();
"""


def console_page(station: str, view: dict[str, Any] | None) -> str:
    js = _CONSOLE_JS % {"station": _json_script(station), "colours": _json_script(STATUS_COLOURS),
                        "initial": _json_script(view)}
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_e(station)} - scanqc</title>
<style>{_BASE_CSS}{_CONSOLE_CSS}</style></head><body>
<header><strong>scanqc console</strong><span>station <b id="station">{_e(station)}</b></span>
<span id="conn" data-state="connecting">connecting...</span></header>
<section id="banner" data-status="none"><div id="status">WAITING</div><div id="series"></div>
<div id="state"></div><div id="update"></div></section>
<section id="body"><h3 id="action-title" hidden>Action</h3><ol id="actions"></ol>
<h3 id="reason-title" hidden>Why</h3><ul id="reasons"></ul>
<img id="preview" alt="middle slice in each plane" hidden>
<h3 id="checks-title" hidden>Every check</h3><ul id="checks"></ul><p class="meta" id="when"></p></section>
<script>{js}</script></body></html>"""


def console_index(stations: list[str]) -> str:
    items = "".join(f'<li><a href="/console/{_e(s)}">{_e(s)}</a></li>' for s in stations) or \
        "<li>No verdicts yet. Open <code>/console/&lt;station&gt;</code> with the scanner's AE title.</li>"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>scanqc consoles</title>
<style>{_BASE_CSS}</style></head><body><header><strong>scanqc</strong><a href="/dashboard">dashboard</a></header>
<main><h1>Technologist consoles</h1><ul>{items}</ul></main></body></html>"""


# -- SVG plots --------------------------------------------------------------------------------------
def svg_bars(items: list[tuple[str, float | None, bool]], *, title: str, fmt: str = "{:.0%}",
             vmax: float | None = None, unit_note: str = "", css_id: str = "") -> str:
    """Horizontal bar chart; highlighted bars (recurring deviations) are drawn red."""
    w, left, bar_h, gap = 520, 130, 18, 6
    h = 30 + len(items) * (bar_h + gap) + 10
    top = max([v for _, v, _ in items if v is not None] + [vmax or 0, 1e-9])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="{_e(css_id)}" width="{w}" height="{h}" '
             f'role="img" aria-label="{_e(title)}"><text x="4" y="16" font-weight="600">{_e(title)}'
             f'<tspan fill="#5f6368" font-weight="400"> {_e(unit_note)}</tspan></text>']
    for i, (label, v, hot) in enumerate(items):
        y = 28 + i * (bar_h + gap)
        bw = 0 if v is None else (w - left - 70) * (v / top)
        colour = "#d93025" if hot else "#1a73e8"
        parts.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{_e(label)}</text>'
                     f'<rect class="bar" data-site="{_e(label)}" x="{left}" y="{y}" width="{bw:.1f}" '
                     f'height="{bar_h}" fill="{colour}"/>'
                     f'<text x="{left + bw + 4:.1f}" y="{y + 13}">{"n/a" if v is None else _e(fmt.format(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_lines(series: dict[str, list[tuple[str, float]]], *, title: str, css_id: str = "") -> str:
    """Deviation rate (0..1) per check over ISO weeks."""
    weeks = sorted({wk for pts in series.values() for wk, _ in pts})
    w, h, left, right, top, bottom = 520, 200, 40, 130, 24, 30
    pw, ph = w - left - right, h - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="{_e(css_id)}" width="{w}" height="{h}" '
             f'role="img" aria-label="{_e(title)}"><text x="4" y="16" font-weight="600">{_e(title)}</text>']
    for frac in (0, 0.5, 1):
        y = top + ph * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y}" y2="{y}" stroke="#e0e0e0"/>'
                     f'<text x="{left - 4}" y="{y + 4}" text-anchor="end" font-size="11">{frac:.0%}</text>')
    if not weeks:
        parts.append(f'<text x="{left + 10}" y="{top + ph / 2}">no checks in the window</text></svg>')
        return "".join(parts)

    def x(wk: str) -> float:
        return left + (pw * weeks.index(wk) / (len(weeks) - 1) if len(weeks) > 1 else pw / 2)

    for wk in (weeks[0], weeks[-1]) if len(weeks) > 1 else (weeks[0],):
        parts.append(f'<text x="{x(wk):.1f}" y="{h - 10}" text-anchor="middle" font-size="11">{_e(wk)}</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{x(wk):.1f},{top + ph * (1 - r):.1f}" for wk, r in sorted(pts))
        parts.append(f'<polyline class="line" data-check="{_e(name)}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" points="{coords}"/>')
        for wk, r in pts:
            parts.append(f'<circle cx="{x(wk):.1f}" cy="{top + ph * (1 - r):.1f}" r="3" fill="{colour}">'
                         f"<title>{_e(name)} {_e(wk)}: {r:.0%}</title></circle>")
        ly = top + 12 + i * 16
        parts.append(f'<rect x="{left + pw + 10}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + pw + 24}" y="{ly}" font-size="12">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_trend(scanner: dict[str, Any], *, css_id: str = "", cols: int = 3) -> str:
    """Small multiples: each phantom measurement of one scanner over time, with its tolerance (dashed red)
    and, for two-sided tolerances, the drift warning limits at 2/3 of the half-width (dotted amber)."""
    meas: dict[str, Any] = scanner.get("measurements") or {}
    pw, ph, pad = 205, 86, 8
    rows = max(1, -(-len(meas) // cols))
    w, h = cols * (pw + pad) + pad, 22 + rows * (ph + pad)
    title = f"{scanner.get('station') or '?'}: phantom results"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot trend" id="{_e(css_id)}" width="{w}" height="{h}" '
             f'role="img" aria-label="{_e(title)}"><text x="4" y="15" font-weight="600">{_e(title)}</text>']
    colours = {"pass": "#1a73e8", "warn": STATUS_COLOURS["warn"], "fail": STATUS_COLOURS["fail"]}
    for i, (name, m) in enumerate(meas.items()):
        x0, y0 = pad + (i % cols) * (pw + pad), 22 + (i // cols) * (ph + pad)
        pts = m.get("points") or []
        lo, hi = (m.get("tolerance") or [None, None]) + [None, None][len(m.get("tolerance") or []):]
        vals = [float(p["value"]) for p in pts]
        bounds = [b for b in (lo, hi) if b is not None]
        vmin, vmax = min(vals + bounds), max(vals + bounds)
        span = (vmax - vmin) or 1.0
        vmin, vmax = vmin - 0.12 * span, vmax + 0.12 * span
        top, bottom, left, right = y0 + 16, y0 + ph - 4, x0 + 4, x0 + pw - 4

        def y(v: float, top: float = top, bottom: float = bottom, vmin: float = vmin, vmax: float = vmax) -> float:
            return bottom - (bottom - top) * (v - vmin) / (vmax - vmin)

        def x(k: int, n: int = len(pts), left: float = left, right: float = right) -> float:
            return left + (right - left) * (k / (n - 1) if n > 1 else 0.5)

        parts.append(f'<g class="panel" data-measurement="{_e(name)}"><rect x="{x0}" y="{y0}" width="{pw}" '
                     f'height="{ph}" fill="#fff" stroke="#e0e0e0"/><text x="{x0 + 4}" y="{y0 + 12}" '
                     f'font-size="11">{_e(m.get("label") or name)}'
                     f'<tspan class="last" fill="#5f6368"> {f"{vals[-1]:.3g}" if vals else ""}</tspan></text>')
        for b in bounds:
            parts.append(f'<line class="limit" x1="{left}" x2="{right}" y1="{y(b):.1f}" y2="{y(b):.1f}" '
                         f'stroke="{STATUS_COLOURS["fail"]}" stroke-dasharray="4 3"/>')
        if lo is not None and hi is not None:
            c, half = (lo + hi) / 2, (hi - lo) / 2
            for v in (c - 2 / 3 * half, c + 2 / 3 * half):
                parts.append(f'<line class="warn-limit" x1="{left}" x2="{right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                             f'stroke="{STATUS_COLOURS["warn"]}" stroke-dasharray="1 3"/>')
        if pts:
            coords = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in enumerate(vals))
            parts.append(f'<polyline fill="none" stroke="#5f6368" stroke-width="1.5" points="{coords}"/>')
        for k, (p, v) in enumerate(zip(pts, vals)):
            st = p.get("status") or "pass"
            parts.append(f'<circle class="pt" data-status="{_e(st)}" cx="{x(k):.1f}" cy="{y(v):.1f}" r="3" '
                         f'fill="{colours.get(st, "#1a73e8")}"><title>{_e(str(p.get("acquired_at"))[:10])}: '
                         f'{v:.3g} ({_e(st)})</title></circle>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


_STATE_TEXT = {"failed": "phantom failed", "expired": "qualification expired", "drift": "drift warning",
               "qualified": "qualified"}


def _scanner_findings(sc: dict[str, Any]) -> str:
    if sc["state"] == "failed":
        return "; ".join(f"{m.get('label')} {m.get('value'):.3g} (tolerance {m.get('tolerance_text')})"
                         for m in sc.get("failed") or [])
    if sc["state"] == "drift" or sc.get("drift"):
        return "; ".join(f"{d.get('label')} {d.get('direction')} over {d.get('points')} phantoms"
                         if d.get("rule") == "trend" else
                         f"{d.get('label')} beyond the {d.get('side')} warning limit on {d.get('points')} phantoms"
                         for d in sc.get("drift") or [])
    return ""


def scanners_section(scanners: list[dict[str, Any]]) -> str:
    """Scanner qualification: one row and one small trend plot per scanner."""
    if not scanners:
        return ('<h2>Scanner qualification</h2><p id="no-scanners">No phantom results yet. Sites send their '
                "qualification phantom like any series (see docs/phantom-qc.md).</p>")
    rows, plots = [], []
    for sc in scanners:
        name = " ".join(x for x in (sc.get("manufacturer"), sc.get("model")) if x) or "-"
        rows.append(
            f'<tr class="scanner {_e(sc["state"])}" data-scanner="{sc["id"]}" data-state="{_e(sc["state"])}">'
            f'<td>{_e(sc.get("site_id"))}</td><td><b>{_e(sc.get("station"))}</b></td><td>{_e(name)}</td>'
            f'<td>{_e(sc.get("serial"))}</td><td>{_e(sc.get("software"))}</td>'
            f'<td>{_e(str(sc.get("last_phantom_at") or "")[:10])}</td>'
            f'<td class="state">{_e(_STATE_TEXT.get(sc["state"], sc["state"]))}</td>'
            f'<td>{_e(str(sc.get("valid_until") or "")[:10]) or "-"}</td>'
            f'<td class="findings">{_e(_scanner_findings(sc)) or "-"}</td></tr>')
        trend = svg_trend(sc, css_id=f"trend-{sc['id']}")
        plots.append(f'<div class="chart">{trend}</div>')
    return f"""<section id="scanner-section"><h2>Scanner qualification</h2><table id="scanners"><thead><tr>
<th>site</th><th>station</th><th>scanner</th><th>serial</th><th>software</th><th>last phantom</th><th>state</th>
<th>valid until</th><th>findings</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
<div class="charts" id="scanner-trends">{"".join(plots)}</div></section>"""


# -- dashboard --------------------------------------------------------------------------------------
def _hours(h: float | None) -> str:
    if h is None:
        return "-"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} d"


def units_table(units: list[dict[str, Any]], stale_hours: float) -> str:
    """Mobile units as stations of their site: last sync, backlog, acquisition-to-receipt, QC figures."""
    if not units:
        return ""
    rows = []
    for u in units:
        counts = u["status_counts"]
        qc = " ".join(f'<span class="st-{_e(k)}">{_e(k)} {n}</span>' for k, n in sorted(counts.items())) or "-"
        acc = "-" if u["acceptance"] is None else f"{u['acceptance']:.0%}"
        ta = u["acq_to_receipt_s"]
        med = "-" if ta["median"] is None else _hours(ta["median"] / 3600)
        last = "never" if u["last_sync_at"] is None else f"{_hours(u['hours_since_sync'])} ago"
        flag = (f'<span class="badge stale-badge">not synced for &gt; {stale_hours:g} h</span>'
                if u["stale"] else "")
        dis = u["disagreements"]
        backlog = "-" if u["backlog"] is None else u["backlog"]
        offset = "-" if u["clock_offset_s"] is None else f"{u['clock_offset_s']:+.0f} s"
        rows.append(
            f'<tr class="unit{" stale" if u["stale"] else ""}" data-unit="{_e(u["unit_id"])}" '
            f'data-site="{_e(u["site_id"])}"><td>{_e(u["site_id"])}</td>'
            f'<td><a href="/console/{_e(u["unit_id"])}"><b>{_e(u["unit_id"])}</b></a> {flag}</td>'
            f'<td class="last-sync">{_e(last)}</td><td class="num backlog">{_e(backlog)}</td>'
            f'<td class="num in-transit">{u["in_transit"]}</td><td class="num series">{u["records"]}</td>'
            f'<td class="num acceptance">{acc}</td><td>{qc}</td><td class="num acq-receipt">{med}</td>'
            f'<td class="num disagreements{" hot" if dis else ""}">{dis}</td><td class="num">{offset}</td></tr>')
    return f"""<h2>Mobile units</h2><table id="units"><thead><tr><th>site</th><th>unit</th><th>last sync</th>
<th>backlog</th><th>in transit</th><th>series synced</th><th>acceptance</th><th>verdicts</th>
<th>acquisition to receipt (median)</th><th>disagreements with re-check</th><th>clock offset</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>"""


def _site_scanner_badges(site: str, scanners: list[dict[str, Any]]) -> str:
    return "".join(f'<span class="badge scanner-flag" data-state="{_e(sc["state"])}">{_e(sc.get("station"))} '
                   f'{_e(_STATE_TEXT.get(sc["state"], sc["state"]))}</span>'
                   for sc in scanners if sc.get("site_id") == site and sc["state"] != "qualified")


def dashboard_page(data: dict[str, Any], scanners: list[dict[str, Any]] | None = None) -> str:
    sites: dict[str, Any] = data["sites"]
    scanners = scanners or []
    units = units_table(data.get("units") or [], float(data.get("unit_stale_hours") or 24))
    rows, charts = [], []
    for site in sorted({sc["site_id"] for sc in scanners if sc.get("site_id")} - set(sites)):
        # a site that has sent only phantoms so far still gets its row (and its scanner flags)
        flags = _site_scanner_badges(site, scanners)
        rows.append(f'<tr class="site{" scanner-flagged" if flags else ""}" data-site="{_e(site)}"><td><b>'
                    f'{_e(site)}</b></td><td class="num">0</td><td class="num fpa">-</td><td class="num">-</td>'
                    f'<td class="num">-</td><td class="num open-queries">0</td><td class="num">-</td><td>-</td>'
                    f'<td class="scanner-flags">{flags or "-"}</td></tr>')
    for site, m in sites.items():
        rec = m["recurring_deviations"]
        badges = "".join(f'<span class="badge">{_e(r["kind"])} x{r["series"]}</span>' for r in rec)
        fpa = m["first_pass_acceptance"]
        ta = m["turnaround_s"]
        oq = m["open_queries"]
        fpa_s = "-" if fpa is None else f"{fpa:.0%}"
        med_s = "-" if ta["median"] is None else f"{ta['median']:.1f} s"
        p95_s = "-" if ta["p95"] is None else f"{ta['p95']:.1f} s"
        cls = "site recurring" if rec else "site"
        flags = _site_scanner_badges(site, scanners)
        cls += " scanner-flagged" if flags else ""
        rows.append(
            f'<tr class="{cls}" data-site="{_e(site)}"><td><b>{_e(site)}</b></td>'
            f'<td class="num">{m["series"]}</td><td class="num fpa">{fpa_s}</td>'
            f'<td class="num">{med_s}</td><td class="num">{p95_s}</td>'
            f'<td class="num open-queries">{oq["count"]}</td><td class="num">{_hours(oq["oldest_hours"])}</td>'
            f"<td>{badges or '-'}</td><td class=\"scanner-flags\">{flags or '-'}</td></tr>")
        lines = {check: [(wk, cell["rate"]) for wk, cell in weeks.items()]
                 for check, weeks in m["deviation_rate"].items()}
        chart = svg_lines(lines, title=f"{site}: deviation rate by check", css_id=f"dev-{site}")
        charts.append(f'<div class="chart">{chart}</div>')
    hot = {s for s, m in sites.items() if m["recurring_deviations"]}
    overview = "".join([
        svg_bars([(s, m["first_pass_acceptance"], s in hot) for s, m in sites.items()], vmax=1.0,
                 title="First-pass acceptance", unit_note="(series whose first verdict was pass/warn)",
                 css_id="fpa"),
        svg_bars([(s, m["turnaround_s"]["median"], False) for s, m in sites.items()], fmt="{:.1f} s",
                 title="QC turnaround", unit_note="(median, receipt to verdict)", css_id="turnaround"),
        svg_bars([(s, float(m["open_queries"]["count"]), s in hot) for s, m in sites.items()], fmt="{:.0f}",
                 title="Open queries", css_id="open-queries"),
        svg_bars([(s, m["open_queries"]["oldest_hours"], False) for s, m in sites.items()], fmt="{:.1f} h",
                 title="Oldest open query", unit_note="(hours)", css_id="query-age"),
    ])
    queries = [q for m in sites.values() for q in m["open_queries"]["items"]]
    queries.sort(key=lambda q: -q["age_hours"])
    qrows = "".join(
        f'<tr data-query="{q["id"]}"><td>{q["id"]}</td><td>{_e(q["site_id"])}</td><td>{_e(q["station"])}</td>'
        f'<td>{_e(q["check"])}</td><td>{_e(q["state"])}</td><td>{_e(q["message"])}</td><td>{_e(q["action"])}</td>'
        f'<td class="num">{_hours(q["age_hours"])}</td></tr>' for q in queries[:100])
    empty = "" if sites or scanners or units else "<p id=\"empty\">No verdicts in this window yet.</p>"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>scanqc dashboard</title>
<meta http-equiv="refresh" content="60"><style>{_BASE_CSS}
tr.recurring td{{background:#fce8e6}} .badge{{background:#d93025;color:#fff;border-radius:3px;padding:1px 6px;
margin-right:4px;font-size:.85em;white-space:nowrap}} .charts{{display:flex;flex-wrap:wrap;gap:12px}}
.badge.scanner-flag[data-state=drift]{{background:#f29900}} tr.scanner.failed td.state,tr.scanner.expired td.state
{{color:#d93025;font-weight:600}} tr.scanner.drift td.state{{color:#b06000;font-weight:600}}
tr.stale td{{background:#fef7e0}} .stale-badge{{background:#f29900}} td.hot{{color:#d93025;font-weight:700}}
.plot{{background:#fff;border:1px solid #e0e0e0}} .plot text{{font-size:12px;font-family:inherit}}</style></head>
<body><header><strong>scanqc central dashboard</strong><span>last {data["days"]} days, until {_e(data["until"])}
</span><a href="/console">consoles</a><a href="/api/dashboard">JSON</a><a href="/">API docs</a></header><main>
{empty}<h2>Sites</h2><table id="sites"><thead><tr><th>site</th><th>series</th><th>first-pass acceptance</th>
<th>turnaround median</th><th>p95</th><th>open queries</th><th>oldest</th>
<th>recurring deviations (&ge;{data["recurring_min"]} series)</th><th>scanners</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{units}
<h2>Overview</h2><div class="charts" id="overview">{overview}</div>
<h2>Deviation rate by check over time</h2><div class="charts" id="deviation-charts">{"".join(charts)}</div>
{scanners_section(scanners)}
<h2>Open queries</h2><table id="queries"><thead><tr><th>#</th><th>site</th><th>station</th><th>check</th>
<th>state</th><th>finding</th><th>action</th><th>age</th></tr></thead><tbody>{qrows}</tbody></table>
</main></body></html>"""


# -- login ----------------------------------------------------------------------------------------
def login_page(next_path: str, error: str | None) -> str:
    """Token login for the console and dashboard: the token is posted once and kept in an HttpOnly cookie."""
    err = f'<p id="error" style="color:#d93025">{_e(error)}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>scanqc login</title>
<style>{_BASE_CSS} form{{background:#fff;padding:1rem;border:1px solid #e0e0e0;max-width:32rem}}
input[type=password]{{width:100%;padding:.4rem;margin:.5rem 0}}</style></head>
<body><header><strong>scanqc</strong></header><main><h2>Sign in</h2>{err}
<form method="post" action="/login"><label for="token">API token (site, monitor or admin)</label>
<input type="password" id="token" name="token" autocomplete="off" required>
<input type="hidden" name="next" value="{_e(next_path)}"><button type="submit">Sign in</button></form>
</main></body></html>"""

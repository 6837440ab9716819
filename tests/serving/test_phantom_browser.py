"""Scanner qualification on the central dashboard, in the real headless Chromium: ten simulated weeks of water
phantoms from one mobile unit sent to a real ``scanqc serve`` over HTTP; the drift warning appears at the expected
week and the dashboard shows it (DOM assertions; a screenshot of the section is kept for the record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scanqc.datasets.phantoms import PhantomFaults, write_phantom

from .conftest import Server, post_files
from .test_pages_browser import browser  # noqa: F401  (fixture)
from .test_phantom_qc import DRIFT_HU, EXPECTED_DRIFT_WEEK, SCANNER, week_date

pytestmark = pytest.mark.slow

SITE, STATION = "siteph", "VAN7"


def _scanner(server: Server) -> dict[str, Any]:
    status, body = server.get(f"/api/scanners?site={SITE}")
    assert status == 200
    [sc] = [s for s in body["scanners"] if s["station"] == STATION]
    return sc


def test_drift_week_on_the_dashboard(qc_server: Server, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    states, checks = [], []
    for week, hu in enumerate(DRIFT_HU, start=1):
        folder = tmp_path / f"w{week}"
        files = write_phantom("ct_water", folder, PhantomFaults(hu_offset=hu), seed=11, acquired=week_date(week),
                              **SCANNER)
        status, body, _ = post_files(qc_server.base, files, station=STATION, site=SITE)
        assert status == 200
        [v] = body["verdicts"]
        assert v["kind"] == "phantom" and set(v["checks"]) == {"integrity", "phantom"}
        checks.append(v["checks"]["phantom"]["status"])
        states.append(_scanner(qc_server)["state"])
    n_after = len(DRIFT_HU) - EXPECTED_DRIFT_WEEK + 1
    assert checks == ["pass"] * (EXPECTED_DRIFT_WEEK - 1) + ["warn"] * n_after
    # The scanner's state is judged at the real "now": weeks 1-5 (>= 36 days ago) are past the default 30-day
    # interval, weeks 6-7 qualify it, and from the drift week on it is flagged.
    assert states == ["expired"] * 5 + ["qualified"] * 2 + ["drift"] * n_after
    sc = _scanner(qc_server)

    # phantoms are not patient series: the site has no patient figures
    _, dash = qc_server.get(f"/api/dashboard?site={SITE}")
    assert SITE not in dash["sites"] and any(s["id"] == sc["id"] for s in dash["scanners"])

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(qc_server.base + "/dashboard")
    row = page.locator(f"#scanners tr[data-scanner='{sc['id']}']")
    assert row.get_attribute("data-state") == "drift"
    assert row.locator("td.state").inner_text() == "drift warning"
    assert "water CT number rising over 6 phantoms" in row.locator("td.findings").inner_text()
    site_row = page.locator(f"#sites tr[data-site={SITE}]")
    assert "scanner-flagged" in (site_row.get_attribute("class") or "")
    flag = site_row.locator(".scanner-flag")
    assert flag.inner_text() == f"{STATION} drift warning" and flag.get_attribute("data-state") == "drift"
    assert flag.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(242, 153, 0)"
    panel = page.locator(f"svg#trend-{sc['id']} g.panel[data-measurement=water_hu]")
    assert panel.locator("circle.pt").count() == len(DRIFT_HU)
    statuses = [panel.locator("circle.pt").nth(i).get_attribute("data-status") for i in range(len(DRIFT_HU))]
    assert statuses.index("warn") == EXPECTED_DRIFT_WEEK - 1 and "fail" not in statuses
    assert panel.locator("line.limit").count() == 2 and panel.locator("line.warn-limit").count() == 2
    # the points rise towards the upper limit on screen (SVG y grows downwards)
    ys = [float(panel.locator("circle.pt").nth(i).get_attribute("cy") or 0) for i in range(len(DRIFT_HU))]
    assert ys[-1] < ys[3] < ys[2] + 1e-6
    section = page.locator("#scanner-section")
    assert section.is_visible() and section.bounding_box()["height"] > 150
    shot = tmp_path / "scanner-qualification.png"
    section.screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.close()

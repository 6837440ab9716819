"""Technologist console and central dashboard in a real headless Chromium (Debian's /usr/bin/chromium)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, ct_series, post_files

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def test_console_updates_live_without_reload(qc_server: Server, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page()
    page.goto(qc_server.base + "/console/SCANNER7")
    page.wait_for_selector("#conn[data-state=live]", timeout=10_000)
    assert page.locator("#banner").get_attribute("data-status") == "none"
    page.evaluate("window.__loaded = performance.timeOrigin")  # survives only if the page is not reloaded
    latencies = []
    for thickness, expected in ((3.0, "pass"), (8.0, "fail")):
        files = ct_series(tmp_path / f"s{thickness}", thickness=thickness, description="AX CT", seed=int(thickness))
        status, body, _ = post_files(qc_server.base, files, station="SCANNER7", site="site03")
        t_resp = time.monotonic()
        assert status == 200 and body["verdicts"][0]["status"] == expected
        page.wait_for_selector(f"#banner[data-status={expected}]", timeout=5_000)
        latencies.append(time.monotonic() - t_resp)
    assert page.evaluate("window.__loaded") is not None  # same document: updated in place
    assert page.locator("#status").inner_text() == "FAIL"
    assert "slice_thickness" in page.locator("#reasons").inner_text()
    assert page.locator("#actions li").count() >= 1 and page.locator("#action-title").is_visible()
    print(f"console update after the HTTP response: {[round(x * 1000) for x in latencies]} ms")
    assert max(latencies) < 1.0
    page.close()


def test_dashboard_plots_and_recurring_sites(qc_server: Server, browser: Any, tmp_path: Path) -> None:
    # site02: three series with the same slice-thickness deviation -> highlighted; site01: one, not.
    for i in range(3):
        post_files(qc_server.base, ct_series(tmp_path / f"r{i}", thickness=8.0, seed=300 + i),
                   station="DASH2", site="site02", study="TEST-ST")
    post_files(qc_server.base, ct_series(tmp_path / "ok", thickness=8.0, seed=310), station="DASH1",
               site="site01", study="TEST-ST")
    page = browser.new_page()
    page.goto(qc_server.base + "/dashboard?recurring_min=3")
    row2 = page.locator("#sites tr[data-site=site02]")
    assert "recurring" in (row2.get_attribute("class") or "")
    assert "slice_thickness_mm" in row2.locator(".badge").first.inner_text()
    bg = row2.locator("td").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert bg == "rgb(252, 232, 230)"
    assert "recurring" not in (page.locator("#sites tr[data-site=site01]").get_attribute("class") or "")
    for plot in ("fpa", "turnaround", "open-queries", "query-age"):
        assert page.locator(f"svg#{plot} rect.bar").count() >= 2
    assert page.locator("svg#dev-site02 polyline.line[data-check=protocol]").count() == 1
    assert page.locator("#queries tbody tr").count() >= 3
    fpa = page.locator("#sites tr[data-site=site02] .fpa").inner_text()
    assert fpa.endswith("%")
    _, data = qc_server.get("/api/dashboard?recurring_min=3")
    kinds = {r["kind"] for r in data["sites"]["site02"]["recurring_deviations"]}
    assert "slice_thickness_mm" in kinds
    page.close()


def test_console_shows_dicom_verdict_checks_preview_and_update(qc_server: Server, browser: Any,
                                                               tmp_path: Path) -> None:
    """A C-STORE push: the verdict (provisional, then final) with every check and a preview; a late
    instance updates it in place with "updated: 1 more image"."""
    import pydicom

    from .test_service_dicom import send_series

    files = ct_series(tmp_path / "d", seed=77, n=10)
    page = browser.new_page()
    page.goto(qc_server.base + "/console/CT_SITE02")
    page.wait_for_selector("#conn[data-state=live]", timeout=10_000)
    assert set(send_series(qc_server.dicom_port, files[:9], "CT_SITE02")) == {0}
    page.wait_for_selector("#banner[data-status=pass]", timeout=10_000)
    page.wait_for_selector("#state[data-final=true]", timeout=10_000)  # confirmed after the quiet period
    checks = page.locator("#checks li")
    names = {checks.nth(i).inner_text().split()[0] for i in range(checks.count())}
    assert {"integrity", "protocol", "deidentification", "coverage"} <= names  # passing checks listed too
    page.wait_for_function("() => { const i = document.getElementById('preview');"
                           " return !i.hidden && i.complete && i.naturalWidth > 0; }", timeout=10_000)
    first_id = page.evaluate("document.body.dataset.verdictId")
    assert set(send_series(qc_server.dicom_port, files[9:], "CT_SITE02")) == {0}  # a late slice
    page.wait_for_function(f"() => document.body.dataset.verdictId !== '{first_id}'", timeout=10_000)
    assert page.locator("#update").inner_text() == "updated: 1 more image"
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    _, rec = qc_server.get(f"/api/series/{uid}")
    assert rec["verdict"]["n_instances"] == 10
    page.close()

"""Issue 7.1: per-site tokens, monitor/admin roles, site isolation over HTTP and DICOM, page login."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import client, upload
from .helpers import ServerProc, ct_series, send_c_store, series_uid

pytestmark = pytest.mark.slow


def _code(r) -> str:
    return r.json()["error"]["code"]


def test_unauthenticated_and_bad_tokens_get_401(secure_server: ServerProc, tmp_path: Path) -> None:
    before = set(secure_server.data_dir.glob("incoming/http/*"))  # the server is shared: other tests upload
    with client(secure_server, None) as c:
        for path in ("/api/verdicts", "/api/queries", "/api/dashboard", "/api/status", "/api/series/1.2.3"):
            r = c.get(path)
            assert r.status_code == 401 and _code(r) == "UNAUTHENTICATED", (path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = c.get("/api/verdicts", headers={"Authorization": "Bearer sqc_not-a-real-token"})
        assert r.status_code == 401 and _code(r) == "BAD_TOKEN"
        r = c.post("/api/check", files=[("files", ("a.dcm", b"x", "application/octet-stream"))])
        assert r.status_code == 401 and _code(r) == "UNAUTHENTICATED"
        for path in ("/readyz", "/livez", "/metrics", "/docs.json"):  # probes, metrics, API docs stay open
            assert c.get(path).status_code == 200, path
        r = c.get("/dashboard", follow_redirects=False)  # pages send the browser to the login form
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert set(secure_server.data_dir.glob("incoming/http/*")) == before, "an unauthenticated upload was stored"


def test_site_isolation(secure_server: ServerProc, tmp_path: Path) -> None:
    r = upload(secure_server, "site01", ct_series(tmp_path / "a", seed=1, thickness=8.0), station="ISO1")
    assert r.status_code == 200 and r.json()["site_id"] == "site01"  # site taken from the token
    uid = r.json()["verdicts"][0]["series_uid"]
    r = upload(secure_server, "site01", ct_series(tmp_path / "b", seed=2), site="site02")
    assert r.status_code == 403 and _code(r) == "WRONG_SITE"
    r = upload(secure_server, "monitor", ct_series(tmp_path / "c", seed=3))
    assert r.status_code == 403 and _code(r) == "FORBIDDEN"
    with client(secure_server, "site01") as own, client(secure_server, "site02") as other, \
            client(secure_server, "monitor") as mon:
        rec = own.get(f"/api/series/{uid}").json()
        assert rec["site_id"] == "site01"
        for path in (f"/api/series/{uid}", f"/api/series/{uid}/sr", f"/api/verdicts/{rec['id']}",
                     "/api/verdicts?site=site01", "/api/queries?site=site01", "/api/dashboard?site=site01"):
            r = other.get(path)
            assert r.status_code == 403 and _code(r) == "WRONG_SITE", (path, r.text)
        assert all(v["site_id"] == "site02" for v in other.get("/api/verdicts").json()["verdicts"])
        assert other.get("/api/stations/ISO1/latest").status_code == 404  # another site's station: nothing
        assert set(other.get("/api/dashboard").json()["sites"]) <= {"site02"}
        # Queries: site01's failed check opened one; only site01 answers it, only the monitor closes it.
        [q] = own.get(f"/api/queries?series_uid={uid}").json()["queries"]
        assert other.get("/api/queries").json()["queries"] == [] or all(
            x["site_id"] == "site02" for x in other.get("/api/queries").json()["queries"])
        assert other.post(f"/api/queries/{q['id']}/answer", json={"answer": "x"}).status_code == 403
        assert mon.post(f"/api/queries/{q['id']}/answer", json={"answer": "x"}).status_code == 403
        assert own.post(f"/api/queries/{q['id']}/close", json={}).status_code == 403
        assert own.post(f"/api/queries/{q['id']}/answer", json={"answer": "repeated"}).status_code == 200
        assert mon.post(f"/api/queries/{q['id']}/close", json={"resolution": "ok"}).status_code == 200
        assert own.post("/api/queries", json={"verdict_id": rec["id"], "check": "protocol"}).status_code == 403
        # The monitor reads everything but submits nothing.
        assert mon.get(f"/api/series/{uid}").status_code == 200
        assert mon.get("/api/verdicts?site=site01").json()["verdicts"]
        assert mon.get("/api/status").status_code == 200 and own.get("/api/status").status_code == 403


def test_dicom_ae_titles_bound_to_sites(secure_server: ServerProc, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "d", seed=4)
    assert send_c_store(secure_server.dicom_port, files, "UNKNOWN_AE") is None  # rejected at association
    assert set(send_c_store(secure_server.dicom_port, files, "CT_SITE02") or [1]) == {0}
    uid = series_uid(files)
    with client(secure_server, "site02") as own, client(secure_server, "site01") as other:
        deadline = time.monotonic() + 30
        while (r := own.get(f"/api/series/{uid}")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["site_id"] == "site02" and r.json()["station"] == "CT_SITE02"
        assert other.get(f"/api/series/{uid}").status_code == 403
    # nothing from the rejected AE reached the disk
    assert not (secure_server.data_dir / "incoming" / "unassigned").exists()


def test_admin_manages_tokens_sites_and_guidelines(secure_server: ServerProc, tmp_path: Path) -> None:
    guideline = ("title: Admin-set study\nmodality: CT\nseries:\n  - id: ct\n    label: CT\n"
                 "    slice_thickness_mm: [1.0, 2.0]\n")
    with client(secure_server, "admin") as adm, client(secure_server, "monitor") as mon:
        assert mon.get("/api/admin/tokens").status_code == 403
        assert mon.put("/api/admin/studies/ADM-1", content=guideline).status_code == 403
        r = adm.put("/api/admin/studies/ADM-1", content=guideline, headers={"content-type": "application/yaml"})
        assert r.status_code == 200, r.text
        bad = adm.put("/api/admin/studies/ADM-2", content="series: [{label: no-id}]")
        assert bad.status_code == 400 and _code(bad) == "BAD_GUIDELINE"
        assert adm.post("/api/admin/sites", json={"id": "site03", "study": "ADM-1"}).status_code == 200
        assert adm.post("/api/admin/sites", json={"id": "../etc"}).status_code == 400
        r = adm.post("/api/admin/tokens", json={"role": "site", "site": "site03", "label": "test"})
        assert r.status_code == 201
        tok, tid = r.json()["token"], r.json()["id"]
        listed = adm.get("/api/admin/tokens").json()["tokens"]
        assert all("token" not in t and "hash" not in str(t) for t in listed) and any(t["id"] == tid for t in listed)
    secure_server.tokens["site03"] = tok
    r = upload(secure_server, "site03", ct_series(tmp_path / "s3", seed=5, thickness=3.0))
    assert r.status_code == 200 and r.json()["study_id"] == "ADM-1"  # the site's study, set by the admin
    assert r.json()["verdicts"][0]["checks"]["protocol"]["status"] == "fail"  # 3 mm vs the admin's 1-2 mm
    with client(secure_server, "admin") as adm:
        assert adm.delete(f"/api/admin/tokens/{tid}").status_code == 200
    with client(secure_server, "site03") as c:
        assert c.get("/api/verdicts").status_code == 401  # revoked: refused at once in this worker
    # tokens are stored as keyed hashes only
    raw = b"".join(p.read_bytes() for p in secure_server.data_dir.glob("scanqc.db*"))
    assert tok.encode() not in raw and secure_server.tokens["site01"].encode() not in raw


def test_pages_login_sets_httponly_cookie(secure_server: ServerProc) -> None:
    import httpx

    with httpx.Client(base_url=secure_server.base, timeout=30) as c:
        r = c.post("/login", data={"token": "sqc_wrong", "next": "/dashboard"})
        assert r.status_code == 401
        r = c.post("/login", data={"token": secure_server.tokens["monitor"], "next": "//evil.example/x"},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"  # no open redirect
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/dashboard").status_code == 200
        assert c.get("/api/dashboard").status_code == 200
    with httpx.Client(base_url=secure_server.base, timeout=30) as c:
        c.post("/login", data={"token": secure_server.tokens["site02"], "next": "/console/CT_SITE02"})
        r = c.get("/console/CT_SITE02")
        assert r.status_code == 200 and "CT_SITE02" in r.text

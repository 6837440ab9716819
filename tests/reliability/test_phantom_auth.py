"""Scanner qualification data follows site isolation: a site token reads only its own scanners."""

from __future__ import annotations

from pathlib import Path

import pytest
from scanqc.datasets.phantoms import write_phantom

from .conftest import client, upload
from .helpers import ServerProc

pytestmark = pytest.mark.slow


def test_scanners_are_site_scoped(secure_server: ServerProc, tmp_path: Path) -> None:
    # small enough for this server's limits (200k voxels)
    files = write_phantom("ct_water", tmp_path / "ph", seed=5, serial="SN-ISO-1", build={"matrix": 128, "n_slices": 4})
    r = upload(secure_server, "site01", files, station="ISOPH1")
    assert r.status_code == 200 and r.json()["verdicts"][0]["kind"] == "phantom"
    with client(secure_server, None) as anon, client(secure_server, "site01") as own, \
            client(secure_server, "site02") as other, client(secure_server, "monitor") as mon:
        assert anon.get("/api/scanners").status_code == 401
        assert [s["serial"] for s in own.get("/api/scanners").json()["scanners"]] == ["SN-ISO-1"]
        r = other.get("/api/scanners?site=site01")
        assert r.status_code == 403 and r.json()["error"]["code"] == "WRONG_SITE"
        assert all(s["site_id"] == "site02" for s in other.get("/api/scanners").json()["scanners"])
        assert "SN-ISO-1" not in other.get("/dashboard").text
        assert any(s["serial"] == "SN-ISO-1" for s in mon.get("/api/scanners?site=site01").json()["scanners"])

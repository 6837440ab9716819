"""One authenticated, tightly limited ``scanqc serve`` shared by the reliability tests of a session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("bentoml")

from .helpers import ServerProc, make_tokens, server

TOKENS = {"site01": ("site", "site01"), "site02": ("site", "site02"), "monitor": ("monitor", None),
          "admin": ("admin", None)}
LIMITS = {"SCANQC_MAX_UPLOAD_BYTES": str(4_000_000), "SCANQC_MAX_INSTANCES": "40",
          "SCANQC_MAX_VOXELS": str(200_000), "SCANQC_MAX_ARCHIVE_MEMBERS": "30",
          "SCANQC_REQUEST_IDLE_TIMEOUT_S": "2"}

GUIDELINE = """\
study: TEST-ST
title: Test study (slice thickness only)
modality: CT
series:
  - id: ct
    label: CT
    slice_thickness_mm: [1.0, 5.0]
"""


@pytest.fixture(scope="session")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    root = tmp_path_factory.mktemp("secure")
    guideline = root / "test_st.yaml"
    guideline.write_text(GUIDELINE)
    env = {**LIMITS, "SCANQC_STUDIES": json.dumps({"TEST-ST": str(guideline)}),
           "SCANQC_SITE_STUDIES": json.dumps({"site01": "TEST-ST"})}
    srv = server(root, extra_env=env)
    srv.tokens = make_tokens(srv.data_dir, TOKENS)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def client(srv: ServerProc, who: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {srv.tokens[who]}"} if who else {}
    return httpx.Client(base_url=srv.base, headers=headers, timeout=60)


def upload(srv: ServerProc, who: str | None, files: list[Any], **fields: str) -> httpx.Response:
    with client(srv, who) as c:
        parts = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
        return c.post("/api/check", files=parts, data=fields)

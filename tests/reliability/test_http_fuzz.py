"""Issue 7.5 (HTTP side): random multipart bodies, boundaries, headers and form fields sent to /api/check
and the JSON endpoints get a verdict or a coded 4xx, never a 500, a traceback or a hang.
``SCANQC_HTTP_FUZZ_EXAMPLES`` raises the count (evaluation/fuzz.py)."""

from __future__ import annotations

import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import ServerProc

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("SCANQC_HTTP_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_text = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=40)
_field = st.sampled_from(["files", "station", "site", "study", "visit", "modality", "complete_study", "x", ""])
_ctype = st.sampled_from(["application/octet-stream", "application/dicom", "application/zip", "text/plain", "",
                          "multipart/mixed", "application/json"])
_DICM = b"\0" * 128 + b"DICM"


@st.composite
def multipart(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.one_of(st.just("b0undary"), st.text(alphabet="abcXYZ019-_'()+,./:=? ", min_size=0,
                                                                max_size=75)))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(_field)
        filename = draw(st.one_of(st.none(), _text, st.just("../../x.dcm"), st.just("a.nii.gz"),
                                  st.just("z.zip")))
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body = draw(st.one_of(st.binary(max_size=300), st.just(_DICM + b"\x08\x00\x16\x00UI\x04\x001.2\0"),
                              st.just(b"PK\x03\x04" + b"\0" * 40), st.just(b"true"), _text.map(str.encode)))
        headers = f"Content-Disposition: {disp}\r\n"
        if draw(st.booleans()):
            headers += f"Content-Type: {draw(_ctype)}\r\n"
        parts.append(f"--{boundary}\r\n{headers}\r\n".encode(errors="replace") + body + b"\r\n")
    tail = draw(st.sampled_from([f"--{boundary}--\r\n", "", f"--{boundary}", "--", "\r\n"]))
    raw = b"".join(parts) + tail.encode(errors="replace")
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut]
    ctype = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}", "multipart/form-data",
                                  f'multipart/form-data; boundary="{boundary}"', "application/json",
                                  "application/x-www-form-urlencoded", "text/plain", ""]))
    return raw, ctype


def _assert_coded(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["code"] and err["message"], r.text
        assert "Traceback" not in r.text


@FUZZ
@given(body=multipart(), auth=st.sampled_from(["site01", "admin", "none", "garbage"]))
def test_check_endpoint_random_multipart(secure_server: ServerProc, body: tuple[bytes, str], auth: str) -> None:
    raw, ctype = body
    headers = {"content-type": ctype} if ctype else {}
    if auth in secure_server.tokens:
        headers["authorization"] = f"Bearer {secure_server.tokens[auth]}"
    elif auth == "garbage":
        headers["authorization"] = "Bearer \x7f\x00" if False else "Basic Zm9vOmJhcg=="
    r = httpx.post(secure_server.base + "/api/check", content=raw, headers=headers, timeout=60)
    _assert_coded(r)


_paths = st.sampled_from(["/api/queries", "/api/queries/1/answer", "/api/queries/1/close", "/api/admin/sites",
                          "/api/admin/tokens", "/api/admin/studies/X1", "/login", "/api/verdicts", "/api/series/1.2",
                          "/api/uploads/..%2f..", "/api/verdicts/abc", "/api/stations/%00/latest"])


@FUZZ
@given(path=_paths, method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       body=st.one_of(st.binary(max_size=200), st.just(b'{"verdict_id": "x", "check": null}'),
                      st.just(b'{"role": "admin", "site": "a/b"}'), st.just(b"[1,2]"), st.just(b"study: [")),
       query=st.sampled_from(["", "?limit=-1", "?limit=99999999999999999999", "?site=%ff", "?days=0", "?state=x"]),
       ctype=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "multipart/form-data",
                              "application/yaml", ""]))
def test_json_endpoints_random_bodies(secure_server: ServerProc, path: str, method: str, body: bytes, query: str,
                                      ctype: str) -> None:
    headers = {"authorization": f"Bearer {secure_server.tokens['admin']}"}
    if ctype:
        headers["content-type"] = ctype
    r = httpx.request(method, secure_server.base + path + query, content=body, headers=headers, timeout=60)
    assert r.status_code < 500, (method, path, query, r.status_code, r.text[:300])
    if r.status_code >= 400 and path.startswith("/api/"):
        assert r.json()["error"]["code"], r.text

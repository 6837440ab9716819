"""Issue 15, in process: hostile inputs the one path must bound (guideline regexes, zip amplification,
cancellation, stale extractions, 4D NIfTI, header values in messages, zip edge cases, the check pool)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from scanqc.cancel import CancelToken, cancel_scope
from scanqc.checks.base import CheckContext
from scanqc.checks.deidentification import DeidentificationCheck
from scanqc.errors import ScanQCError
from scanqc.guideline import Guideline, parse_guideline
from scanqc.limits import Limits
from scanqc.pipeline import check_path
from scanqc.series import load_series

from .helpers import ct_series

MRN = "MRN77310452"
TMP_PREFIX = "scanqc-zip-"


def _error(path: Path, **kw) -> dict:
    [v] = check_path(path, **kw)
    assert v.status == "error", v.to_dict()
    return v.error  # type: ignore[return-value]


# -- 1. guideline regexes ------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", [r"(a|a)*", r"(a+)+$", r"^(\d+-?)*$", r"(x?)*y", r"(?:ONC|NEU)+"])
def test_backtracking_patterns_are_refused_at_load(pattern: str) -> None:
    for doc in ({"study": "S", "subject_id_pattern": pattern},
                {"study": "S", "series": [{"id": "a", "match": pattern}]}):
        with pytest.raises(ScanQCError) as e:
            parse_guideline(doc, "g.yaml")
        assert e.value.code.value == "BAD_GUIDELINE" and "backtracking" in e.value.message


@pytest.mark.parametrize("pattern", [r"SUBJ-\d{4}", r"^(ONC|NEU)-[0-9]{3,5}$", r"(\d{3}-)+\d", r"[A-Z]{2}\d+"])
def test_ordinary_patterns_still_load(pattern: str) -> None:
    g = parse_guideline({"study": "S", "subject_id_pattern": pattern, "series": [{"id": "a", "match": pattern}]})
    assert g.subject_id_pattern == pattern


def test_a_slow_pattern_costs_a_bounded_time_per_value() -> None:
    """A pattern that got past validation (a guideline object built in code, an older stored guideline) is
    still bounded at match time: issue 15 held a check thread 13.5 s with a 28-character PatientID."""
    from scanqc.guideline import pattern_matches

    t0 = time.monotonic()
    with pytest.raises(ScanQCError) as e:
        pattern_matches(r"(a|a)*", "a" * 28 + "!", full=True)
    # The match timeout is 50 ms; 5 s (vs 13.5 s unbounded) leaves room for a loaded machine.
    assert e.value.code.value == "BAD_GUIDELINE" and time.monotonic() - t0 < 5.0
    assert pattern_matches(r"SUBJ-\d+", "x" * 10_000, full=True) is False  # over-long values never match


def test_deidentification_with_a_slow_pattern_is_bounded(tmp_path: Path) -> None:
    files = ct_series(tmp_path / "s", n=4, size=8, header={"PatientID": "a" * 28 + "!"})
    series, _ = load_series(files[0].parent)
    g = Guideline(study="S", subject_id_pattern=r"(a|a)*")  # bypasses parse_guideline's validation
    t0 = time.monotonic()
    with pytest.raises(ScanQCError):
        DeidentificationCheck()(series[0], CheckContext(guideline=g))
    assert time.monotonic() - t0 < 2.0


# -- 2. zip amplification: one budget per input, ratio on every member, cancellation, stale temp folders ----
def _zip(path: Path, members: dict[str, bytes], deflate: bool = True) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_archive_budget_spans_every_archive_of_an_input(tmp_path: Path) -> None:
    up = tmp_path / "upload"
    up.mkdir()
    for k in range(2):  # each archive alone is within the limit, together they are not
        _zip(up / f"{k:05d}.zip", {f"m{i}.dcm": os.urandom(100_000) for i in range(6)}, deflate=False)
    err = _error(up, limits=Limits(max_archive_bytes=1_000_000))
    assert err["code"] == "ARCHIVE_TOO_LARGE" and "this input" in err["message"]
    for k in range(2):
        (up / f"{k:05d}.zip").unlink()
        _zip(up / f"{k:05d}.zip", {f"m{i}.dcm": b"x" for i in range(20)})
    assert _error(up, limits=Limits(max_archive_members=30))["code"] == "ARCHIVE_TOO_LARGE"


@pytest.mark.parametrize(("n", "size"), [(3, 1_000_000), (300, 60_000)])
def test_compression_ratio_is_checked_for_small_members_too(tmp_path: Path, n: int, size: int) -> None:
    """1 MB members were under the old per-member floor (> 1 MB); 60 kB ones are caught in total."""
    z = _zip(tmp_path / "zeros.zip", {f"d/{i:05d}.dcm": b"\0" * size for i in range(n)})
    assert z.stat().st_size < n * size / 200
    err = _error(z)
    assert err["code"] == "ARCHIVE_TOO_LARGE" and "zip bomb" in err["message"]


def test_cancelled_check_stops_mid_extraction_and_cleans_up(tmp_path: Path) -> None:
    z = _zip(tmp_path / "many.zip", {f"d/{i:05d}.dcm": os.urandom(1024) for i in range(4000)}, deflate=False)
    token = CancelToken()
    out: list = []
    tmp_root = Path(__import__("tempfile").gettempdir())
    before = set(tmp_root.glob(f"{TMP_PREFIX}{os.getpid()}-*"))

    def run() -> None:
        with cancel_scope(token):
            out.extend(check_path(z, limits=Limits(max_archive_members=5000)))

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # cancel once the extraction is under way
        ours = set(tmp_root.glob(f"{TMP_PREFIX}{os.getpid()}-*")) - before
        if ours and sum(1 for _ in next(iter(ours)).rglob("*.dcm")) >= 50:
            break
        time.sleep(0.005)
    t_cancel = time.monotonic()
    token.cancel("stopped by the test")
    t.join(30)
    assert not t.is_alive() and time.monotonic() - t_cancel < 2.0
    [v] = out
    assert v.error == {"code": "CHECK_TIMEOUT", "message": "stopped by the test"}
    assert set(tmp_root.glob(f"{TMP_PREFIX}{os.getpid()}-*")) == before  # its extraction folder is gone


def test_deadline_stops_a_check_before_it_reads(tmp_path: Path) -> None:
    files = ct_series(tmp_path / "s", n=4, size=8)
    token = CancelToken(0.001)
    time.sleep(0.01)
    with cancel_scope(token):
        [v] = check_path(files[0].parent)
    assert v.error is not None and v.error["code"] == "CHECK_TIMEOUT"
    [v] = check_path(files[0].parent)  # no token in this thread any more: checked normally
    assert v.status != "error"


def test_stale_extraction_folders_are_removed(tmp_path: Path) -> None:
    from scanqc.io.sources import cleanup_stale_extractions

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{TMP_PREFIX}{dead_pid}-abc"
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-def"
    legacy_old, legacy_new = tmp_path / f"{TMP_PREFIX}old1", tmp_path / f"{TMP_PREFIX}new1"
    for d in (stale, live, legacy_old, legacy_new):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "x.dcm").write_bytes(b"x" * 100)
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    assert cleanup_stale_extractions(tmp_path) == 2
    assert not stale.exists() and not legacy_old.exists() and live.exists() and legacy_new.exists()


# -- 5. N-D NIfTI: the whole shape counts before any data is read ---------------------------------------
def test_4d_nifti_is_bounded_by_its_full_shape(tmp_path: Path) -> None:
    p = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16, 50), np.int16), np.eye(4)), str(p))
    err = _error(p, limits=Limits(max_voxels=100_000))  # one volume is 4096 voxels, the file 204 800
    assert err["code"] == "TOO_LARGE" and "204800 voxels" in err["message"]
    assert _error(p, limits=Limits(max_dimension=40))["code"] == "TOO_LARGE"  # the 4th axis counts too
    [v] = check_path(p)  # within the limits: the first volume is checked
    assert v.status != "error" and v.shape == (16, 16, 16) and any("50 volumes" in n for n in v.notes)


# -- 8. header values never reach messages or logs ---------------------------------------------------------
def _set_raw(files: list[Path], keyword: str, value: bytes) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        tag = Tag(tag_for_keyword(keyword))
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
        ds.save_as(f)


@pytest.mark.parametrize("keyword", ["SliceThickness", "RescaleSlope", "RescaleIntercept", "NumberOfFrames",
                                     "SamplesPerPixel", "PixelSpacing", "SpacingBetweenSlices", "KVP"])
@pytest.mark.parametrize("validation", ["ignore", "warn"])
def test_bad_number_in_a_header_is_named_not_quoted(tmp_path: Path, keyword: str, validation: str,
                                                    caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """As the service runs pydicom (validation IGNORE, its own "Invalid value" warnings quote values) and
    with pydicom's default (WARN), where our messages must hold no value either."""
    import pydicom.config

    mode = pydicom.config.IGNORE if validation == "ignore" else pydicom.config.WARN
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", mode)
    files = ct_series(tmp_path / "s", n=4, size=8)
    _set_raw(files, keyword, (MRN + " ").encode())
    with caplog.at_level(logging.DEBUG):
        [v] = check_path(files[0].parent)
    fmt = logging.Formatter()
    ours = "\n".join(fmt.format(r) for r in caplog.records if not r.name.startswith("pydicom"))  # + tracebacks
    text = str(v.to_dict()) + ours
    assert "MRN" not in text
    if v.status == "error":
        assert keyword in v.error["message"] or "…" in v.error["message"], v.error  # type: ignore[index]


# -- 9. zip edge cases have their own codes ---------------------------------------------------------------
def test_encrypted_member_is_coded(tmp_path: Path) -> None:
    z = _zip(tmp_path / "locked.zip", {"a.dcm": b"x" * 500})
    raw = bytearray(z.read_bytes())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set bit 0 (encrypted) in both headers
        i = raw.index(sig)
        raw[i + flag_at] |= 0x01
    z.write_bytes(bytes(raw))
    assert _error(z)["code"] == "ARCHIVE_ENCRYPTED"


@pytest.mark.parametrize("name", ["a" * 300 + ".dcm", "/".join(["d" * 250] * 20) + "/x.dcm"])
def test_over_long_member_path_is_coded(tmp_path: Path, name: str) -> None:
    z = _zip(tmp_path / "long.zip", {name: b"x" * 10})
    err = _error(z)
    assert err["code"] == "ARCHIVE_NAME_TOO_LONG" and name not in err["message"]


# -- 10. series UIDs on the service path ----------------------------------------------------------------
def test_processor_refuses_an_invalid_series_uid(tmp_path: Path) -> None:
    from scanqc.serving.config import Settings
    from scanqc.serving.processing import Processor
    from scanqc.serving.store import Store

    files = ct_series(tmp_path / "s", n=4, size=8)
    _set_raw(files, "SeriesInstanceUID", b'1.2.3"; filename="evil.exe')
    settings = Settings(data_dir=tmp_path / "data", salt="s")
    store = Store(settings.db_url)
    try:
        [(v, vid)] = Processor(settings, store).check_folder(
            files[0].parent, site_id="site01", station="T", source="http", received_at=dt.datetime.now(dt.timezone.utc))
        assert v.status == "error" and v.error["code"] == "BAD_UID" and v.series_uid is None  # type: ignore[index]
        assert "evil" not in str(store.get_verdict(vid))
    finally:
        store.close()


# -- 2. fairness of the HTTP check pool -------------------------------------------------------------------
def test_fair_pool_keeps_a_thread_for_other_sites() -> None:
    from scanqc.serving.pool import FairPool

    pool = FairPool(workers=3, per_site=2)
    release = threading.Event()
    started: list[str] = []
    lock = threading.Lock()

    def job(tag: str) -> str:
        with lock:
            started.append(tag)
        if tag.startswith("A"):
            release.wait(10)
        return tag

    try:
        a = [pool.submit("A", job, f"A{i}") for i in range(6)]  # a burst of slow checks from one site
        time.sleep(0.2)
        assert pool.running("A") == 2 and pool.queued("A") == 4
        b = pool.submit("B", job, "B0")
        assert b.result(timeout=5) == "B0"  # served at once, although A queued first
        c = [pool.submit("C", job, f"C{i}") for i in range(2)]
        assert [f.result(timeout=5) for f in c] == ["C0", "C1"]
        release.set()
        assert sorted(f.result(timeout=10) for f in a) == [f"A{i}" for i in range(6)]
    finally:
        release.set()
        pool.shutdown()


def test_unexpected_body_part_is_not_quoted_when_it_looks_like_an_identifier(tmp_path: Path) -> None:
    files = ct_series(tmp_path / "s", n=4, size=8, header={"BodyPartExamined": MRN})
    g = parse_guideline({"study": "S", "modality": "CT", "series": [{"id": "ct", "body_part": "ABDOMEN"}]})
    [v] = check_path(files[0].parent, g)
    dev = v.checks["protocol"].extra["deviations"]
    assert [d["field"] for d in dev] == ["body_part"] and MRN not in str(v.to_dict())
    files = ct_series(tmp_path / "t", n=4, size=8, header={"BodyPartExamined": "CHEST"})
    [v] = check_path(files[0].parent, g)
    assert v.checks["protocol"].extra["deviations"][0]["actual"] == "CHEST"  # a body part term is still shown


def test_study_ids_resolve_through_the_configuration_only(tmp_path: Path) -> None:
    from scanqc.serving.config import load_settings
    from scanqc.serving.processing import Processor
    from scanqc.serving.store import Store

    mine = tmp_path / "mine.yaml"
    mine.write_text("study: MINE\nseries:\n  - id: a\n")
    other = tmp_path / "other.yaml"
    other.write_text("study: OTHER\nseries:\n  - id: a\n")
    settings = load_settings(None, data_dir=tmp_path / "data", salt="s", default_study=str(mine))
    assert settings.guideline_ref(str(mine)) == str(mine)  # the operator's own `scanqc serve --study FILE`
    assert settings.guideline_ref("abdomen_ct") == "abdomen_ct"  # a shipped guideline, by name
    for sent in (str(other), "/proc/self/status", "../guidelines/brain_mr", "brain_mr.yaml"):
        assert settings.guideline_ref(sent) is None, sent
    store = Store(settings.db_url)
    try:
        proc = Processor(settings, store)
        assert proc.guideline_for(str(mine)).study == "MINE"  # type: ignore[union-attr]
        with pytest.raises(ScanQCError) as e:
            proc.guideline_for(str(other))
        assert e.value.code.value == "BAD_GUIDELINE" and "not configured" in e.value.message
        assert str(other) not in json.dumps(store.list_studies())
    finally:
        store.close()

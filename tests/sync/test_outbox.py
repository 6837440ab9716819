"""The unit's outbox and watched folder, offline (base tier: no server, no sqlalchemy): stable keys, one record per
series, durable kept files, the stability rule, and the `scanqc unit` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scanqc.errors import ScanQCError
from scanqc.guideline import load_guideline
from scanqc.ingest.watch import FolderWatcher
from scanqc.sync.outbox import Outbox, check_and_record, content_hash, file_sha256, series_key, unit_dir

GUIDELINE = """\
study: TEST-ST
modality: CT
series:
  - id: ct
    label: CT
    slice_thickness_mm: [1.0, 5.0]
"""


def _outbox(tmp_path: Path, keep: str = "failing", unit: str = "VAN1") -> Outbox:
    ob = Outbox(tmp_path / "unit")
    ob.configure(unit_id=unit, keep=keep)
    return ob


def test_key_is_unit_series_sops_and_content(write_series, tmp_path: Path) -> None:
    import pydicom

    folder = write_series("s", shape=(6, 32, 32))
    ob = _outbox(tmp_path, keep="all")
    ((v, rec, created),) = check_and_record(ob, folder)
    files = sorted(folder.iterdir())
    sops = sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
    chash = content_hash(file_sha256(f) for f in files)
    assert created and rec.sop_uids == sops and rec.content_hash == chash
    assert rec.key == series_key("VAN1", v.series_uid, sops, chash)
    assert series_key("VAN2", v.series_uid, sops, chash) != rec.key  # another unit, another key
    # checked again (a restarted watcher, the operator's second look): the same record, not a second one
    ((_, again, created2),) = check_and_record(ob, folder)
    assert not created2 and again.key == rec.key and ob.counts() == {"pending": 1, "synced": 0, "total": 1}
    # one changed byte is different content, so a different record
    f0 = files[0]
    data = bytearray(f0.read_bytes())
    data[-1] ^= 1
    f0.write_bytes(bytes(data))
    ((_, changed, created3),) = check_and_record(ob, folder)
    assert created3 and changed.key != rec.key and changed.series_uid == rec.series_uid
    # the record carries what the centre needs: model versions, the laptop's check time, the files
    assert set(rec.model_versions) <= set(v.to_dict()["checks"]) and rec.checked_at.endswith("Z")
    assert len(rec.files) == 6 and all(ob.stored_file(rec.key, f["sha256"], ".dcm").is_file() for f in rec.files)
    m = rec.manifest(1.5)
    assert m["clock_offset_s"] == 1.5 and m["verdict"]["input"] == f"unit:VAN1/{rec.key[:16]}"
    assert str(tmp_path) not in json.dumps(m)  # the laptop's paths stay on the laptop


@pytest.mark.parametrize(("keep", "stored"), [("verdicts", (False, False)), ("failing", (False, True)),
                                              ("all", (True, True))])
def test_keep_modes(write_series, tmp_path: Path, keep: str, stored: tuple[bool, bool]) -> None:
    ob = _outbox(tmp_path, keep=keep)
    ok = write_series("ok", shape=(6, 32, 32), header={"SeriesDescription": "CT", "SliceThickness": 3.0})
    thick = write_series("thick", shape=(6, 32, 32), spacing=(8.0, 0.8, 0.8), seed=3,
                         header={"SeriesDescription": "CT", "SliceThickness": 8.0})
    (tmp_path / "g.yaml").write_text(GUIDELINE)
    g = load_guideline(str(tmp_path / "g.yaml"))
    ((v_ok, r_ok, _),) = check_and_record(ob, ok, g)
    ((v_bad, r_bad, _),) = check_and_record(ob, thick, g)
    assert v_ok.status != "fail" and v_bad.status == "fail"
    assert (r_ok.stored, r_bad.stored) == stored
    assert ob.series_dir(r_ok.key).is_dir() == stored[0] and ob.series_dir(r_bad.key).is_dir() == stored[1]
    assert not list((tmp_path / "unit").glob("series/.*.partial"))


def test_unreadable_input_is_recorded_as_an_error_verdict(tmp_path: Path) -> None:
    ob = _outbox(tmp_path)
    bad = tmp_path / "junk"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"not dicom" * 50)
    ((v, rec, created),) = check_and_record(ob, bad)
    assert v.status == "error" and created and rec.stored  # failing/error series are kept by default
    assert check_and_record(ob, bad)[0][2] is False


def test_outbox_survives_reopen_and_refuses_a_second_unit(write_series, tmp_path: Path) -> None:
    ob = _outbox(tmp_path)
    check_and_record(ob, write_series("s", shape=(6, 32, 32)))
    ob.close()
    ob2 = Outbox(tmp_path / "unit")
    assert ob2.unit_id == "VAN1" and ob2.counts()["pending"] == 1
    with pytest.raises(ScanQCError, match="belongs to unit VAN1"):
        ob2.configure(unit_id="VAN2")
    with pytest.raises(ScanQCError, match="keep"):
        ob2.configure(keep="some")
    (rec,) = ob2.pending()
    ob2.mark_synced(rec.key, 42)
    assert ob2.counts() == {"pending": 0, "synced": 1, "total": 1}
    assert ob2.record_for(rec.key).server_verdict_id == 42  # type: ignore[union-attr]


def test_unit_dir_follows_env_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCANQC_UNIT_DIR", str(tmp_path / "u"))
    assert unit_dir() == tmp_path / "u"
    monkeypatch.delenv("SCANQC_UNIT_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert unit_dir() == tmp_path / "xdg" / "scanqc" / "unit"


def test_watcher_waits_for_a_series_to_settle(write_series, tmp_path: Path) -> None:
    now = [0.0]
    land = tmp_path / "land"
    land.mkdir()
    w = FolderWatcher(land, stable_s=5.0, clock=lambda: now[0])
    src = write_series("src", shape=(6, 32, 32))
    dst = land / "series1"
    dst.mkdir()
    files = sorted(src.iterdir())
    for f in files[:3]:
        shutil.copy(f, dst / f.name)
    (dst / ".IM0003.dcm.tmp").write_bytes(b"partial")  # a copier's temp file is not part of the series
    assert w.poll() == [] and w.waiting() == [dst]
    now[0] = 3.0
    assert w.poll() == []
    for f in files[3:]:  # more files: the clock starts again
        shutil.copy(f, dst / f.name)
    now[0] = 6.0
    assert w.poll() == []
    now[0] = 11.5
    ((entry, sig),) = w.poll()
    assert entry == dst and sig.startswith("6:") and w.waiting() == []
    now[0] = 30.0
    assert w.poll() == []  # once per content
    (land / "empty").mkdir()
    now[0] = 60.0
    assert w.poll() == [] and w.waiting() == []


def test_unit_watch_once_checks_each_series_and_records_it(write_series, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from scanqc.cli import app

    land = tmp_path / "land"
    for i in range(2):
        shutil.copytree(write_series(f"s{i}", shape=(6, 32, 32), seed=i), land / f"series{i}")
    monkeypatch.setenv("SCANQC_UNIT_DIR", str(tmp_path / "unit"))
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("SCANQC_UNIT_TOKEN", raising=False)
    runner = CliRunner()
    r = runner.invoke(app, ["unit", "watch", str(land), "--once"])
    assert r.exit_code == 2 and "scanqc unit init" in r.output  # no unit id yet: a coded usage error
    assert runner.invoke(app, ["unit", "init", "--unit", "VAN1", "--keep", "verdicts"]).exit_code == 0
    r = runner.invoke(app, ["unit", "watch", str(land), "--once", "--stable-s", "0.3", "--poll-s", "0.1"])
    assert r.exit_code in (0, 1), r.output
    assert "series0" in r.output and "series1" in r.output and "outbox: 2 to sync" in r.output
    # a restarted watcher does not check the same folders again
    r = runner.invoke(app, ["unit", "watch", str(land), "--once", "--stable-s", "0.3", "--poll-s", "0.1"])
    assert r.exit_code == 0 and "checked 0 series" in r.output
    status = json.loads(runner.invoke(app, ["unit", "status", "--json"]).output)
    assert (status["unit_id"], status["pending"], status["synced"]) == ("VAN1", 2, 0)

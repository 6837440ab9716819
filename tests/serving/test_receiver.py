"""The DICOM receiver over real pynetdicom associations on loopback."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    CTImageStorage,
    ModalityPerformedProcedureStep,
    Verification,
)
from scanqc.serving.dicom import Receiver, ReceiverConfig, SeriesArrival, make_receiver, sr_path
from scanqc.serving.dicom import scp as rxmod
from scanqc.serving.dicom.common import MARKER, OUT_OF_RESOURCES
from scanqc.serving.sr import sr_summary

from scanqc.io.dicom_write import volume_to_datasets
from scanqc.pipeline import check_path
from scanqc.volume import Volume

QUIET = 0.6


def make_series(n: int = 6, size: int = 24, seed: int = 0) -> list[Dataset]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    body = np.where(yy**2 + xx**2 < 0.6, 40.0, -1000.0)
    arr = np.stack([body + rng.normal(0, 5, body.shape) for _ in range(n)]).astype(np.float32)
    vol = Volume(arr, (2.5, 0.8, 0.8), (-10.0, -10.0, 0.0), modality="CT")
    return volume_to_datasets(vol, "CT", header={"SeriesDescription": "CHEST", "PatientName": "PSEUDO^0001"})


def send(port: int, datasets: list[Dataset], calling: str = "SCANNER1") -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCANQC")
    assert assoc.is_established, f"association from {calling} not established"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Calls:
    """Records completion callbacks; runs the real pipeline on the folder."""

    def __init__(self) -> None:
        self.items: list[tuple[Path, SeriesArrival, list[Any]]] = []
        self.cond = threading.Condition()

    def __call__(self, folder: Path, meta: SeriesArrival) -> list[Any]:
        verdicts = check_path(folder)
        with self.cond:
            self.items.append((folder, meta, verdicts))
            self.cond.notify_all()
        return verdicts

    def wait(self, n: int, timeout: float = 15.0) -> list[tuple[Path, SeriesArrival, list[Any]]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, timeout), f"{len(self.items)} of {n} callbacks"
            return list(self.items)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., tuple[Receiver, Calls]]]:
    started: list[Receiver] = []

    def _start(callback: Callable[[Path, SeriesArrival], Any] | None = None, **kw: Any) -> tuple[Receiver, Calls]:
        calls = Calls()
        # adaptive=False: these tests pin the final signals (quiet period, MPPS, restart); the fast,
        # provisional ones are tested in tests/serving/test_realtime.py.
        opts: dict[str, Any] = dict(data_dir=tmp_path, port=0, host="127.0.0.1", quiet_period_s=QUIET,
                                    adaptive=False,
                                    ae_sites={"SCANNER1": "site-a", "SCANNER2": "site-b", "SCANNER3": "site-c"})
        opts.update(kw)
        rx = Receiver(ReceiverConfig(**opts), callback or calls).start()
        started.append(rx)
        return rx, calls

    yield _start
    for rx in started:
        rx.stop()


def test_c_echo(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    rx, _ = start()
    ae = AE(ae_title="SCANNER1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="SCANQC")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_series_acknowledged_on_disk_then_checked_once(start: Callable[..., tuple[Receiver, Calls]],
                                                        tmp_path: Path) -> None:
    rx, calls = start()
    dss = make_series(6)
    t0 = time.monotonic()
    assert send(rx.port, dss) == [0] * 6
    folder = tmp_path / "incoming" / "site-a" / dss[0].StudyInstanceUID / dss[0].SeriesInstanceUID
    for ds in dss:  # acknowledged => already on disk, readable, byte-for-byte the object sent
        back = pydicom.dcmread(folder / f"{ds.SOPInstanceUID}.dcm")
        assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not calls.items, "completion must wait for the quiet period"
    (got_folder, meta, verdicts), = calls.wait(1)
    assert time.monotonic() - t0 >= QUIET
    assert got_folder == folder
    assert (meta.site_id, meta.station, meta.n_instances, meta.completed_by) == ("site-a", "SCANNER1", 6,
                                                                               "quiet_period")
    assert (meta.study_uid, meta.series_uid) == (dss[0].StudyInstanceUID, dss[0].SeriesInstanceUID)
    assert meta.first_received <= meta.last_received
    assert len(verdicts) == 1 and verdicts[0].status != "error" and verdicts[0].n_instances == 6
    assert eventually((folder / MARKER).exists)  # written once the callback has returned
    time.sleep(QUIET * 1.5)
    assert len(calls.items) == 1, "one verdict per series"


def test_resend_overwrites_never_duplicates(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    rx, calls = start()
    dss = make_series(5)
    assert send(rx.port, dss) == [0] * 5
    assert send(rx.port, dss[:3]) == [0] * 3  # modality retry inside the quiet period
    _, meta, verdicts = calls.wait(1)[0]
    assert meta.n_instances == 5 and verdicts[0].n_instances == 5
    folder = calls.items[0][0]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        sorted(f"{d.SOPInstanceUID}.dcm" for d in dss)
    assert send(rx.port, dss[:1]) == [0]  # late re-send after the verdict: re-checked, still 5
    _, meta2, _ = calls.wait(2)[1]
    assert meta2.n_instances == 5


def test_concurrent_associations_get_their_own_verdicts(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    rx, calls = start()
    series = {f"SCANNER{i}": make_series(6 + i, seed=i) for i in (1, 2, 3)}
    results: dict[str, list[int]] = {}
    threads = [threading.Thread(target=lambda a=a, d=d: results.__setitem__(a, send(rx.port, d, a)))
               for a, d in series.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(results[a] == [0] * len(d) for a, d in series.items())
    got = {meta.series_uid: (meta, verdicts) for _, meta, verdicts in calls.wait(3)}
    assert len(got) == 3
    for a, dss in series.items():
        meta, verdicts = got[dss[0].SeriesInstanceUID]
        assert meta.station == a and meta.n_instances == len(dss)
        assert verdicts[0].series_uid == dss[0].SeriesInstanceUID and verdicts[0].n_instances == len(dss)


def test_unknown_calling_ae(start: Callable[..., tuple[Receiver, Calls]], tmp_path: Path) -> None:
    rx, _ = start()
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="SCANQC")
    assert assoc.is_rejected
    # Demo config (no ae_sites): anyone may send, filed under the default site.
    rx2, calls2 = start(ae_sites={}, data_dir=tmp_path / "demo")
    assert send(rx2.port, make_series(3), "STRANGER") == [0] * 3
    assert calls2.wait(1)[0][1].site_id == "default"


def _mpps_create(assoc: Any, uid: str, study: str) -> None:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    item = Dataset()
    item.StudyInstanceUID = study
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedSeriesSequence = []
    status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000


def _mpps_complete(assoc: Any, uid: str, dss: list[Dataset]) -> None:
    mod = Dataset()
    mod.PerformedProcedureStepStatus = "COMPLETED"
    s = Dataset()
    s.SeriesInstanceUID = dss[0].SeriesInstanceUID
    refs = []
    for d in dss:
        r = Dataset()
        r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = d.SOPClassUID, d.SOPInstanceUID
        refs.append(r)
    s.ReferencedImageSequence = refs
    mod.PerformedSeriesSequence = [s]
    status, _ = assoc.send_n_set(mod, ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0000


def test_mpps_completed_ends_quiet_period_early(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    rx, calls = start(quiet_period_s=60.0)
    ae = AE(ae_title="SCANNER1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="SCANQC")
    assert assoc.is_established
    try:
        # Series A: images first, then COMPLETED -> checked at once.
        a = make_series(4, seed=1)
        uid_a = str(generate_uid())
        _mpps_create(assoc, uid_a, a[0].StudyInstanceUID)
        assert [assoc.send_c_store(d).Status for d in a] == [0] * 4
        t0 = time.monotonic()
        _mpps_complete(assoc, uid_a, a)
        (_, meta, _), = calls.wait(1, timeout=10)
        assert meta.completed_by == "mpps" and meta.n_instances == 4
        assert time.monotonic() - t0 < 10
        # Series B: COMPLETED names 4 images, only 3 have arrived -> waits for the 4th.
        b = make_series(4, seed=2)
        uid_b = str(generate_uid())
        _mpps_create(assoc, uid_b, b[0].StudyInstanceUID)
        assert [assoc.send_c_store(d).Status for d in b[:3]] == [0] * 3
        _mpps_complete(assoc, uid_b, b)
        time.sleep(0.5)
        assert len(calls.items) == 1
        assert assoc.send_c_store(b[3]).Status == 0
        (_, meta_b, _) = calls.wait(2, timeout=10)[1]
        assert meta_b.completed_by == "mpps" and meta_b.n_instances == 4
        # N-SET on an unknown MPPS instance is refused.
        mod = Dataset()
        mod.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = assoc.send_n_set(mod, ModalityPerformedProcedureStep, str(generate_uid()))
        assert status.Status == 0x0112
    finally:
        assoc.release()


def test_restart_picks_up_unfinished_series(tmp_path: Path, start: Callable[..., tuple[Receiver, Calls]]) -> None:
    done, unfinished = make_series(3, seed=1), make_series(4, seed=2)
    rx1, calls1 = start()
    assert send(rx1.port, done) == [0] * 3
    calls1.wait(1)  # verdict stored before the "crash": must not be checked again
    rx1.stop()
    rx2, calls2 = start(quiet_period_s=60.0)
    assert send(rx2.port, unfinished, "SCANNER2") == [0] * 4
    rx2.stop()  # "crash" inside the quiet period: acknowledged instances must still get a verdict
    assert not calls2.items
    folder = tmp_path / "incoming" / "site-b" / unfinished[0].StudyInstanceUID / unfinished[0].SeriesInstanceUID
    (folder / ".x.dcm.1234.tmp").write_bytes(b"partial")  # a write the crash interrupted (never acked)

    _, calls3 = start()
    (got_folder, meta, verdicts), = calls3.wait(1)
    assert got_folder == folder
    assert (meta.completed_by, meta.n_instances, meta.station, meta.site_id) == ("restart", 4, "SCANNER2", "site-b")
    assert verdicts[0].n_instances == 4
    assert not (folder / ".x.dcm.1234.tmp").exists()
    time.sleep(QUIET * 1.5)
    assert len(calls3.items) == 1 and eventually((folder / MARKER).exists)


def test_write_failure_is_not_acknowledged(start: Callable[..., tuple[Receiver, Calls]],
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rx, calls = start()

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rxmod, "atomic_write", disk_full)
    dss = make_series(2)
    assert send(rx.port, dss) == [OUT_OF_RESOURCES] * 2
    assert not list((tmp_path / "incoming").rglob("*.dcm"))
    time.sleep(QUIET * 1.5)
    assert not calls.items


def test_callback_failure_is_retried_then_marked(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    calls = Calls()
    failures = [RuntimeError("database locked")]

    def flaky(folder: Path, meta: SeriesArrival) -> list[Any]:
        if failures:
            raise failures.pop()
        return calls(folder, meta)

    rx, _ = start(flaky, retry_delay_s=0.2)
    assert send(rx.port, make_series(3)) == [0] * 3
    folder, meta, _ = calls.wait(1)[0]
    assert meta.n_instances == 3
    assert eventually((folder / MARKER).exists)
    assert json.loads((folder / MARKER).read_text())["files"] == sorted(p.name for p in folder.glob("*.dcm"))


class FakeProcessor:
    """Stands in for scanqc.serving.processing.Processor (same keyword signature)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.done = threading.Event()

    def process_folder(self, folder: Path, *, site_id: str, station: str, source: str = "dicom",
                       received_at: Any = None, study_id: str | None = None) -> list[Any]:
        self.calls.append(dict(folder=folder, site_id=site_id, station=station, source=source,
                               received_at=received_at))
        verdicts = check_path(folder)
        self.done.set()
        return verdicts

    def process_series(self, series: Any, *, site_id: str, stations: Any, source: str = "dicom",
                       received_at: Any = None, arrival: Any = None) -> list[Any]:
        from scanqc.serving.processing import Processed

        from scanqc.pipeline import check_series

        self.calls.append(dict(series=series, site_id=site_id, station=stations[0], source=source,
                               received_at=received_at, final=arrival.final))
        v = check_series(series)
        self.done.set()
        return [Processed(v, len(self.calls), site_id, st, source, None, received_at, received_at)
                for st in stations]

    def finalize(self, ids: list[int], *, completed_by: str) -> list[Any]:
        self.calls.append(dict(finalize=ids, completed_by=completed_by))
        return [check_series_of(self.calls[0]["series"])]


def check_series_of(series: Any) -> Any:
    from scanqc.pipeline import check_series

    return check_series(series)


def test_processor_wiring_writes_and_sends_sr(tmp_path: Path) -> None:
    # A tiny SCP standing in for the modality/PACS that wants the SR back.
    got: list[Dataset] = []
    arrived = threading.Event()

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append(ds)
        arrived.set()
        return 0

    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    proc = FakeProcessor()
    settings = type("S", (), dict(data_dir=tmp_path, dicom_port=0, dicom_ae_title="SCANQC", quiet_period_s=QUIET,
                                  ae_sites={"SCANNER1": "site-a"}, dicom_host="127.0.0.1"))()
    rx = make_receiver(settings, proc, sr_destination=f"PACS@127.0.0.1:{server.server_address[1]}").start()
    try:
        dss = make_series(4)
        assert send(rx.port, dss) == [0] * 4
        assert proc.done.wait(15) and arrived.wait(15)
        call = proc.calls[0]
        assert (call["site_id"], call["station"], call["source"]) == ("site-a", "SCANNER1", "dicom")
        path = sr_path(tmp_path, "site-a", dss[0].StudyInstanceUID, dss[0].SeriesInstanceUID)
        sr = pydicom.dcmread(path)
        assert sr.StudyInstanceUID == dss[0].StudyInstanceUID and sr.PatientName == "PSEUDO^0001"
        assert sr_summary(sr)["series_uid"] == dss[0].SeriesInstanceUID
        assert got[0].SOPInstanceUID == sr.SOPInstanceUID
    finally:
        rx.stop()
        server.shutdown()


def test_real_processor_stores_verdicts(tmp_path: Path) -> None:
    """make_receiver with the service's own Settings/Store/Processor, in-process (no BentoML)."""
    from scanqc.serving.config import Settings
    from scanqc.serving.processing import Processor
    from scanqc.serving.store import Store

    settings = Settings(data_dir=tmp_path, dicom_host="127.0.0.1", dicom_port=0, quiet_period_s=QUIET,
                        ae_sites={"SCANNER1": "site-a"})
    store = Store(settings.db_url)
    rx = make_receiver(settings, Processor(settings, store)).start()
    try:
        dss = make_series(5)
        assert send(rx.port, dss) == [0] * 5
        def checked() -> list[dict[str, Any]]:  # without the first instance's header-only verdict
            return [r for r in store.verdicts_for_series(dss[0].SeriesInstanceUID)
                    if (r["verdict"].get("completion") or {}).get("completed_by") != "first_instance"]

        assert eventually(lambda: bool(checked()), 15)
        rec = checked()[0]
        assert rec["verdict"]["n_instances"] == 5
        assert eventually(sr_path(tmp_path, "site-a", dss[0].StudyInstanceUID, dss[0].SeriesInstanceUID).exists)
    finally:
        rx.stop()
        store.close()


# -- issue 15.6 / 15.7: series keyed by (site, study, series); MPPS scoped to the sender's site ----------


def test_same_series_uid_from_two_sites_gets_two_verdicts(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    """Site A and site B send series with one SeriesInstanceUID: each folder gets its own verdict."""
    rx, calls = start()
    a = make_series(4, seed=11)
    b = make_series(3, seed=12)
    for d in b:  # the same series UID (a buggy or cloned export), another site and another study
        d.SeriesInstanceUID = a[0].SeriesInstanceUID
    assert send(rx.port, a, "SCANNER1") == [0] * 4
    assert send(rx.port, b, "SCANNER2") == [0] * 3
    got = calls.wait(2)
    time.sleep(QUIET * 2)  # nothing more may come
    by_site = {meta.site_id: (folder, meta, verdicts) for folder, meta, verdicts in got}
    assert len(calls.items) == 2 and set(by_site) == {"site-a", "site-b"}
    assert by_site["site-a"][1].n_instances == 4 and by_site["site-b"][1].n_instances == 3
    assert by_site["site-a"][2][0].n_instances == 4 and by_site["site-b"][2][0].n_instances == 3
    assert all(eventually((folder / MARKER).exists) for folder, _, _ in got)


def test_one_series_uid_under_two_studies_gets_two_verdicts(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    rx, calls = start()
    a = make_series(4, seed=13)
    b = make_series(5, seed=14)
    for d in b:
        d.SeriesInstanceUID = a[0].SeriesInstanceUID  # same UID, b keeps its own StudyInstanceUID
    assert send(rx.port, a + b, "SCANNER1") == [0] * 9
    got = calls.wait(2)
    time.sleep(QUIET * 2)
    assert len(calls.items) == 2
    assert sorted(meta.n_instances for _, meta, _ in got) == [4, 5]
    assert {meta.study_uid for _, meta, _ in got} == {a[0].StudyInstanceUID, b[0].StudyInstanceUID}


def test_restart_recovers_both_sites_with_one_series_uid(tmp_path: Path,
                                                         start: Callable[..., tuple[Receiver, Calls]]) -> None:
    """_recover used to file both folders under the series UID, so one of them never got a verdict."""
    rx1, calls1 = start(quiet_period_s=60.0)
    a = make_series(3, seed=15)
    b = make_series(2, seed=16)
    for d in b:
        d.SeriesInstanceUID = a[0].SeriesInstanceUID
    assert send(rx1.port, a, "SCANNER1") == [0] * 3
    assert send(rx1.port, b, "SCANNER2") == [0] * 2
    rx1.stop()  # "crash" inside the quiet period
    assert not calls1.items
    _, calls2 = start()
    got = calls2.wait(2)
    time.sleep(QUIET * 2)
    assert len(calls2.items) == 2
    assert sorted((m.site_id, m.n_instances, m.completed_by) for _, m, _ in got) == \
        [("site-a", 3, "restart"), ("site-b", 2, "restart")]


def test_mpps_from_another_site_does_not_complete_a_series(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    """Site B's N-SET COMPLETED naming site A's study and series must not end A's half-sent series."""
    rx, calls = start(quiet_period_s=60.0)
    a = make_series(6, seed=17)
    assert send(rx.port, a[:3], "SCANNER1") == [0] * 3  # site A: half the series so far
    ae = AE(ae_title="SCANNER2")  # site B
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="SCANQC")
    assert assoc.is_established
    try:
        uid = str(generate_uid())
        _mpps_create(assoc, uid, a[0].StudyInstanceUID)
        _mpps_complete(assoc, uid, a[:3])  # names A's series and the three images that arrived
        # Also without a series list: "everything of this study is done".
        uid2 = str(generate_uid())
        _mpps_create(assoc, uid2, a[0].StudyInstanceUID)
        mod = Dataset()
        mod.PerformedProcedureStepStatus = "COMPLETED"
        assert assoc.send_n_set(mod, ModalityPerformedProcedureStep, uid2)[0].Status == 0
    finally:
        assoc.release()
    time.sleep(1.0)
    assert not calls.items, "site B's MPPS completed site A's series"
    # Site A's own MPPS still completes it.
    ae_a = AE(ae_title="SCANNER1")
    ae_a.add_requested_context(ModalityPerformedProcedureStep)
    ae_a.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae_a.associate("127.0.0.1", rx.port, ae_title="SCANQC")
    try:
        assert [assoc.send_c_store(d).Status for d in a[3:]] == [0] * 3
        uid3 = str(generate_uid())
        _mpps_create(assoc, uid3, a[0].StudyInstanceUID)
        _mpps_complete(assoc, uid3, a)
        (_, meta, _), = calls.wait(1, timeout=10)
        assert meta.completed_by == "mpps" and meta.n_instances == 6 and meta.site_id == "site-a"
    finally:
        assoc.release()


def test_mpps_instance_of_another_site_cannot_be_set(start: Callable[..., tuple[Receiver, Calls]]) -> None:
    rx, _ = start(quiet_period_s=60.0)
    a = make_series(2, seed=18)
    uid = str(generate_uid())
    for calling, expect in (("SCANNER1", None), ("SCANNER2", 0x0112)):
        ae = AE(ae_title=calling)
        ae.add_requested_context(ModalityPerformedProcedureStep)
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="SCANQC")
        try:
            if expect is None:
                _mpps_create(assoc, uid, a[0].StudyInstanceUID)
            else:
                mod = Dataset()
                mod.PerformedProcedureStepStatus = "COMPLETED"
                assert assoc.send_n_set(mod, ModalityPerformedProcedureStep, uid)[0].Status == expect
        finally:
            assoc.release()

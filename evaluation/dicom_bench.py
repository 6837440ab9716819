"""``scanqc bench --dicom``: latency over DICOM, the way a scanner sends, with clients nobody here wrote.

A real ``scanqc serve`` (HTTP + DICOM receiver, default quiet period) on free loopback ports; the samples of
``scanqc data sample`` (brain_mr: 189 instances, abdomen_ct: 113) pushed ``pushes`` times each by dcmtk
``storescu``, each push as a new series (fresh Study/Series/SOP Instance UIDs, written before timing starts).
For every push, from the moment storescu returns (its last instance acknowledged, association released):

- **stored**: the first verdict's ``verdict_at`` in the store (``GET /api/series/<uid>``);
- **console**: the first server-sent event for that series on ``/api/stations/<AE>/events`` (what the
  technologist's console receives);
- **final**: when the series' verdict became final (confirmed after the quiet period, or replaced by a final
  one): the first of the console's final event and a poll of ``GET /api/series/<uid>`` every 50 ms from the
  end of the push (a confirmation without a re-check does not always reach the console);
- which completion signal decided.

Then the same through an Orthanc router (``Orthanc`` forwards each stored instance to scanqc with the
scanner's AE title), timed from storescu's end at Orthanc. Wall-clock times (``time.time``) on one machine.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from scanqc.evaluation.dicom_peers import Orthanc, free_ports, missing_peers, storescu

SAMPLES = {"mr": ("brain_mr", "BENCH_MR", "bench-mr", "BENCH-MR", "brain_mr"),
           "ct": ("abdomen_ct", "BENCH_CT", "bench-ct", "BENCH-CT", "abdomen_ct")}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pct(xs: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(xs, q)), 1) if xs else None


def _summary(xs: list[float]) -> dict[str, Any]:
    return {"p50": _pct(xs, 50), "p95": _pct(xs, 95), "max": round(max(xs), 1) if xs else None, "n": len(xs)}


def _pushes(sample: Path, out: Path, n: int) -> list[tuple[str, list[Path]]]:
    """``n`` copies of the sample series, each a new study/series with new instance UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    srcs = sorted(sample.glob("*.dcm"))
    made = []
    for i in range(n):
        folder = out / f"push{i:02d}"
        folder.mkdir(parents=True)
        study, series = str(generate_uid()), str(generate_uid())
        for j, f in enumerate(srcs):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = str(generate_uid())
            ds.save_as(folder / f"{j:04d}.dcm", enforce_file_format=True)
        made.append((series, sorted(folder.glob("*.dcm"))))
    return made


class _Console(threading.Thread):
    """Listens to one station's console stream and notes when each series' verdict event arrives."""

    def __init__(self, base: str, station: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{base}/api/stations/{station}/events"
        self.first: dict[str, float] = {}
        self.header: dict[str, float] = {}  # the first instance's header checks on the console
        self.final: dict[str, float] = {}
        self.ready = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        import httpx

        while not self._stop.is_set():
            try:
                with httpx.stream("GET", self.url, timeout=None) as r:
                    self.ready.set()
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if not line.startswith("data: "):
                            continue
                        view = json.loads(line[6:])
                        if not view:
                            continue
                        now, uid = time.time(), view.get("series_uid")
                        if view.get("completed_by") == "first_instance":
                            self.header.setdefault(uid, now)
                            continue
                        self.first.setdefault(uid, now)
                        if view.get("final"):
                            self.final.setdefault(uid, now)
            except Exception:
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


class _FinalWatch(threading.Thread):
    """Polls every pushed series until its verdict is final and notes when it first was (``time.time``)."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.pending: list[str] = []
        self.final: dict[str, float] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                for uid in [u for u in list(self.pending) if u not in self.final]:
                    try:
                        r = client.get(f"{self.base}/api/series/{uid}")
                    except httpx.HTTPError:
                        continue
                    if r.status_code == 200 and r.json().get("final"):
                        self.final[uid] = time.time()
                self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()


def _wait_verdict(base: str, uid: str, timeout: float, images: bool = False) -> dict[str, Any] | None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/api/series/{uid}", timeout=10)
        if r.status_code == 200:
            rec = r.json()
            first_only = (rec["verdict"].get("completion") or {}).get("completed_by") == "first_instance"
            if not (images and first_only):
                return rec
        time.sleep(0.05)
    return None


def _iso(s: str) -> float:
    import datetime as dt

    t = dt.datetime.fromisoformat(s)
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def _run_pushes(base: str, port: int, called: str, pushes: list[tuple[str, list[Path]]], station: str,
                console: _Console, quiet: float) -> dict[str, Any]:
    stored, shown, final, signals, sent_s = [], [], [], {}, []
    since_last: list[float] = []  # verdict stored after the last instance *scanqc* received (a router forwards late)
    stages: dict[str, list[float]] = {}  # the server's own stage times after the last instance, per push
    ends: dict[str, float] = {}
    watch = _FinalWatch(base)
    watch.start()
    for uid, files in pushes:
        t0 = time.monotonic()
        storescu(port, files, calling=station, called=called)
        end = time.time()
        ends[uid] = end
        watch.pending.append(uid)
        sent_s.append(time.monotonic() - t0)
        first = _wait_verdict(base, uid, 60, images=True)
        if first is None:
            _log(f"[bench dicom] no verdict for {uid}")
            continue
        # The first verdict on the images (the first instance's header-only one is not counted).
        hist = [h for h in first.get("history") or [] if h.get("completed_by") != "first_instance"]
        first_h = min(hist, key=lambda h: h["id"]) if hist else first
        stored.append((_iso(first_h["verdict_at"]) - end) * 1000)
        if first_h.get("received_at"):
            since_last.append((_iso(first_h["verdict_at"]) - _iso(first_h["received_at"])) * 1000)
        v = first.get("verdict") or {}
        for k, ms in {**(v.get("timings_ms") or {}), "elapsed": v.get("elapsed_ms")}.items():
            if isinstance(ms, (int, float)) and k != "decode_on_arrival":
                stages.setdefault(k, []).append(float(ms))
        sig = first_h.get("completed_by") or (first["verdict"].get("completion") or {}).get("completed_by", "?")
        signals[sig] = signals.get(sig, 0) + 1
        deadline = time.monotonic() + 5
        while uid not in console.first and time.monotonic() < deadline:
            time.sleep(0.02)
        if uid in console.first:
            shown.append((console.first[uid] - end) * 1000)
        time.sleep(0.3)  # the next series (its predecessor's confirmation comes later, in parallel)
    for uid, end in ends.items():  # final verdicts: confirmed after the quiet period, or replaced
        deadline = time.monotonic() + quiet + 30
        while uid not in watch.final and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = [t for t in (console.final.get(uid), watch.final.get(uid)) if t is not None]
        if seen:
            final.append((min(seen) - end) * 1000)
        else:
            _log(f"[bench dicom] {uid} not final within {quiet + 30:.0f} s")
    watch.stop()
    return {"stored_ms": _summary(stored), "console_ms": _summary(shown), "final_ms": _summary(final),
            "after_last_received_ms": _summary(since_last),
            "signals": signals, "push_s": _summary([s * 1000 for s in sent_s]), "instances": len(pushes[0][1]),
            "server_stage_ms_p50": {k: _pct(v, 50) for k, v in stages.items()}}


def bench_dicom(out: Path, pushes: int = 10, orthanc_pushes: int | None = None,
                kinds: list[str] | None = None) -> dict[str, Any]:
    """The DICOM part of the bench; returns its results (also written to ``out/bench_dicom.json``)."""
    from scanqc.datasets.samples import write_sample
    from scanqc.evaluation.benchmark import stop_server

    missing = missing_peers()
    if "storescu" in missing:
        return {"skipped": "storescu not installed (make dicom-clients)"}
    kinds = kinds or ["mr", "ct"]
    orthanc_pushes = pushes if orthanc_pushes is None else orthanc_pushes
    res: dict[str, Any] = {"pushes": pushes, "orthanc_pushes": orthanc_pushes, "direct": {}, "orthanc": {}}
    with tempfile.TemporaryDirectory(prefix="scanqc-bench-dicom-") as tmp:
        work = Path(tmp)
        plans: dict[str, dict[str, list]] = {}
        for k in kinds:
            kind, *_ = SAMPLES[k]
            _log(f"[bench dicom] writing {pushes + orthanc_pushes} pushes of {kind}")
            sample = write_sample(kind, work / f"sample-{k}")
            plans[k] = {"direct": _pushes(sample, work / f"direct-{k}", pushes),
                        "orthanc": _pushes(sample, work / f"orthanc-{k}", orthanc_pushes)}
        port, dicom_port = free_ports(2)
        quiet = float(os.environ.get("SCANQC_QUIET_PERIOD_S", "5"))
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1",
               "SCANQC_SALT": "bench-salt", "SCANQC_QUIET_PERIOD_S": str(quiet),
               "SCANQC_AE_SITES": json.dumps({SAMPLES[k][1]: SAMPLES[k][2] for k in SAMPLES}),
               "SCANQC_STUDIES": json.dumps({SAMPLES[k][3]: SAMPLES[k][4] for k in SAMPLES}),
               "SCANQC_SITE_STUDIES": json.dumps({SAMPLES[k][2]: SAMPLES[k][3] for k in SAMPLES})}
        log = work / "server.log"
        import subprocess

        cmd = [sys.executable, "-m", "scanqc.cli", "serve", "--port", str(port), "--dicom-port", str(dicom_port),
               "--data-dir", str(work / "data")]
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        consoles: list[_Console] = []
        try:
            deadline = time.monotonic() + 180
            while "scanqc ready" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"scanqc serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            for k in kinds:
                station = SAMPLES[k][1]
                console = _Console(base, station)
                console.start()
                consoles.append(console)
                console.ready.wait(10)
                warm = plans[k]["direct"][:1]
                _log(f"[bench dicom] warm-up push of {k}")
                _run_pushes(base, dicom_port, "SCANQC", _pushes(Path(warm[0][1][0]).parent, work / f"warm-{k}", 1),
                            station, console, quiet)
                _log(f"[bench dicom] {pushes} storescu pushes of {k} -> scanqc")
                res["direct"][k] = _run_pushes(base, dicom_port, "SCANQC", plans[k]["direct"], station, console,
                                               quiet)
            if "Orthanc" in missing or not orthanc_pushes:
                res["orthanc"] = {"skipped": "Orthanc not installed (make dicom-clients)" if orthanc_pushes else
                                  "not requested"}
            else:
                with Orthanc(dicom_port) as router:
                    for k, console in zip(kinds, consoles):
                        _log(f"[bench dicom] {orthanc_pushes} storescu pushes of {k} -> Orthanc -> scanqc")
                        res["orthanc"][k] = _run_pushes(base, router.dicom_port, "ORTHANC", plans[k]["orthanc"],
                                                        SAMPLES[k][1], console, quiet)
        finally:
            for c in consoles:
                c.stop()
            stop_server(proc)
            out.mkdir(parents=True, exist_ok=True)
            (out / "bench_dicom_server.log").write_text(log.read_text()[-200_000:])
    res["quiet_period_s"] = quiet
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_dicom.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def markdown_dicom(res: dict[str, Any]) -> str:
    if res.get("skipped"):
        return f"## DICOM\n\nskipped: {res['skipped']}\n"
    md = ["## DICOM: storescu pushes (and through Orthanc) to the verdict", "",
          f"Quiet period (upper bound) {res.get('quiet_period_s')} s; times in ms from the end of the push "
          "(storescu returned: last instance acknowledged, association released).", "",
          "| route | series | instances | push ms p50 | verdict stored p50 / p95 | console event p50 / p95 | "
          "final p50 / p95 | after scanqc's last received instance p50 / p95 | deciding signal |",
          "|---|---|---|---|---|---|---|---|---|"]
    for route in ("direct", "orthanc"):
        part = res.get(route) or {}
        if part.get("skipped"):
            md.append(f"| {route} | – | – | – | skipped: {part['skipped']} | | | | |")
            continue
        for k, r in part.items():
            sig = ", ".join(f"{s} {n}" for s, n in sorted(r["signals"].items()))
            md.append(f"| {'storescu' if route == 'direct' else 'storescu -> Orthanc'} | {k} | {r['instances']} | "
                      f"{r['push_s']['p50']} | {r['stored_ms']['p50']} / {r['stored_ms']['p95']} | "
                      f"{r['console_ms']['p50']} / {r['console_ms']['p95']} | "
                      f"{r['final_ms']['p50']} / {r['final_ms']['p95']} | "
                      f"{(r.get('after_last_received_ms') or {}).get('p50')} / "
                      f"{(r.get('after_last_received_ms') or {}).get('p95')} | {sig} |")
    stages = [(route, k, r["server_stage_ms_p50"]) for route in ("direct", "orthanc")
              for k, r in (res.get(route) or {}).items() if isinstance(r, dict) and r.get("server_stage_ms_p50")]
    if stages:
        names = [n for n in dict.fromkeys(n for *_, st in stages for n in st) if n != "elapsed"]
        md += ["", "Where the time after the last instance goes (the server's own stage times, p50 ms; the model "
               "checks run concurrently, so they overlap; `elapsed` = stacking + checks):", "",
               "| route | series | " + " | ".join(names) + " | elapsed |", "|---|---|" + "---|" * (len(names) + 1)]
        for route, k, st in stages:
            md.append(f"| {'storescu' if route == 'direct' else 'storescu -> Orthanc'} | {k} | "
                      + " | ".join(str(st.get(n, '–')) for n in names) + f" | {st.get('elapsed', '–')} |")
    return "\n".join(md) + "\n"

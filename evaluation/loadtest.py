"""Bounded load test of ``scanqc serve`` on loopback: N concurrent clients for a fixed duration.

    .venv/bin/python -m scanqc.evaluation.loadtest --clients 8 --duration 180 --out /tmp/load

Starts its own server (random loopback ports, a temporary data dir, one site token so the auth path is
exercised), then each client loops: upload a small CT series (12 x 32x32, a fresh SeriesInstanceUID per
request) and read it back (GET /api/series/{uid}); every tenth loop also reads the dashboard
(``--dashboard-every``; the dashboard aggregates every verdict of the window, so its cost grows with the
data the run itself stores; ``--dashboard-every 0`` gives a load whose per-request work stays constant, and
``--fixed-data SECONDS`` stores series first and then measures reads and dashboard reads over data that no
longer changes). Records
requests, errors (any non-2xx or transport error), latency percentiles, and the RSS of every process of
the server tree every second (``scanqc serve``, the BentoML arbiter, the API worker, the inference worker).
Memory growth is reported two ways, for the tree and per process: the mean of the first third of the run
against the last third, and the least-squares slope in MiB/min over the second half of the run (after the
start-up and warm-up allocations; "no growth" means a slope near 0). Writes ``load.json`` and ``load.md``
to ``--out``. Stops by itself after ``--duration``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _role(cmdline: list[str]) -> str:
    """Which part of ``scanqc serve`` a process is, from its command line."""
    line = " ".join(cmdline)
    if "_bentoml_impl.worker" in line:
        return "inference worker" if "scanqc-inference" in line else "API worker"
    if "bentoml" in line and " serve" in line:
        return "arbiter"
    if "scanqc" in line and "serve" in line:
        return "scanqc serve"
    return "other"


def slope_mib_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 3:
        return None
    mt = statistics.mean(t for t, _ in points)
    mr = statistics.mean(r for _, r in points)
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 60 * sum((t - mt) * (r - mr) for t, r in points) / var


def memory_summary(rss: list[tuple[float, float]]) -> dict[str, Any]:
    """First third vs last third means, min/max, and the slope over the second half of the samples."""
    if not rss:
        return {"first_third_mean": 0.0, "last_third_mean": 0.0, "growth_pct": None, "min": 0.0, "max": 0.0,
                "samples": 0, "slope_mib_per_min_2nd_half": None}
    third = max(1, len(rss) // 3)
    first = statistics.mean(r for _, r in rss[:third])
    last = statistics.mean(r for _, r in rss[-third:])
    slope = slope_mib_per_min(rss[len(rss) // 2:])
    return {"first_third_mean": round(first, 1), "last_third_mean": round(last, 1),
            "growth_pct": round(100 * (last - first) / first, 2) if first else None,
            "min": round(min(r for _, r in rss), 1), "max": round(max(r for _, r in rss), 1), "samples": len(rss),
            "slope_mib_per_min_2nd_half": None if slope is None else round(slope, 3)}


def _series_bytes(tmp: Path, n: int) -> list[list[tuple[str, bytes]]]:
    """A few distinct series as in-memory files; each request rewrites the UIDs so no two are the same."""
    import numpy as np

    from scanqc.io.dicom_write import write_dicom_series
    from scanqc.volume import Volume

    out = []
    for i in range(n):
        vol = Volume(np.random.default_rng(i).normal(40, 10, (12, 32, 32)).astype("float32"), (3.0, 0.8, 0.8))
        files = write_dicom_series(vol, tmp / f"s{i}", "CT", header={"SeriesDescription": "LOAD", "PatientName": ""})
        out.append([(f.name, f.read_bytes()) for f in files])
    return out


def _fresh_uids(files: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes, str]], str]:
    import io

    import pydicom
    from pydicom.uid import generate_uid

    series, study = generate_uid(), generate_uid()
    parts = []
    for name, raw in files:
        ds = pydicom.dcmread(io.BytesIO(raw))
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        parts.append((name, buf.getvalue(), "application/dicom"))
    return parts, str(series)


def run_load(base: str, token: str | None, *, clients: int, duration: float, pids_fn: Any,
             sample_s: float = 1.0, tmp: Path | None = None, dashboard_every: int = 10,
             read_only_uids: list[str] | None = None) -> dict[str, Any]:
    """Drive ``base`` with ``clients`` threads for ``duration`` seconds; returns the figures.

    With ``read_only_uids`` nothing is uploaded: each loop reads one of those series (and the dashboard
    every ``dashboard_every`` loops), so the stored data stays the same during the run."""
    import httpx
    import psutil

    tmp = tmp or Path(tempfile.mkdtemp(prefix="scanqc-load-"))
    templates = [] if read_only_uids else _series_bytes(tmp, 4)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    lat: dict[str, list[float]] = {"upload": [], "read": [], "dashboard": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration
    rss: list[tuple[float, float]] = []
    per_proc: dict[int, dict[str, Any]] = {}  # pid -> {"role", "rss": [(t, MiB)]}
    t_start = time.monotonic()

    def sampler() -> None:
        while time.monotonic() < stop_at:
            total = 0
            now = time.monotonic() - t_start
            for pid in pids_fn():
                try:
                    p = psutil.Process(pid)
                    b = p.memory_info().rss
                    if pid not in per_proc:
                        per_proc[pid] = {"role": _role(p.cmdline()), "rss": []}
                except psutil.NoSuchProcess:
                    continue
                total += b
                per_proc[pid]["rss"].append((now, b / 2**20))
            rss.append((now, total / 2**20))
            time.sleep(sample_s)

    def worker(k: int) -> None:
        i = 0
        with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
            while time.monotonic() < stop_at:
                i += 1
                kind = "upload"
                try:
                    dt_up = None
                    if read_only_uids:
                        uid = read_only_uids[(k * 7919 + i) % len(read_only_uids)]
                    else:
                        parts, uid = _fresh_uids(templates[(k + i) % len(templates)])
                        t0 = time.perf_counter()
                        r = c.post("/api/check", files=[("files", p) for p in parts], data={"station": f"LOAD{k}"})
                        dt_up = time.perf_counter() - t0
                        ok = r.status_code == 200 and r.json()["verdicts"][0]["series_uid"] == uid
                        if not ok:
                            raise RuntimeError(f"upload {r.status_code} {r.text[:200]}")
                    kind = "read"
                    t0 = time.perf_counter()
                    r = c.get(f"/api/series/{uid}")
                    dt_rd = time.perf_counter() - t0
                    if r.status_code != 200:
                        raise RuntimeError(f"read {r.status_code} {r.text[:200]}")
                    dt_db = None
                    if dashboard_every and i % dashboard_every == 0:
                        kind = "dashboard"
                        t0 = time.perf_counter()
                        r = c.get("/api/dashboard?days=1")
                        dt_db = time.perf_counter() - t0
                        if r.status_code != 200:
                            raise RuntimeError(f"dashboard {r.status_code} {r.text[:200]}")
                    with lock:
                        if dt_up is not None:
                            lat["upload"].append(dt_up)
                        lat["read"].append(dt_rd)
                        if dt_db is not None:
                            lat["dashboard"].append(dt_db)
                except Exception as exc:
                    with lock:
                        errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    samp = threading.Thread(target=sampler, daemon=True)
    samp.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 180)
    samp.join(5)
    wall = time.monotonic() - t_start
    requests = sum(len(v) for v in lat.values()) + len(errors)
    return {
        "clients": clients, "duration_s": round(wall, 1), "requests": requests, "errors": len(errors),
        "error_samples": errors[:10], "series_checked": len(lat["upload"]),
        "throughput_series_per_s": round(len(lat["upload"]) / wall, 2),
        "latency_ms": {k: {"n": len(v), "p50": round(1000 * (_pct(v, 0.5) or 0), 1),
                           "p95": round(1000 * (_pct(v, 0.95) or 0), 1),
                           "max": round(1000 * max(v), 1) if v else None} for k, v in lat.items()},
        "rss_mb": memory_summary(rss),
        "rss_mb_per_process": [{"pid": pid, "role": v["role"], **memory_summary(v["rss"])}
                               for pid, v in sorted(per_proc.items())],
        "rss_series": [(round(t, 1), round(r, 1)) for t, r in rss],
        "rss_series_per_process": {str(pid): [(round(t, 1), round(r, 1)) for t, r in v["rss"]]
                                   for pid, v in sorted(per_proc.items())},
    }


def to_markdown(res: dict[str, Any], note: str = "") -> str:
    lm, rs = res["latency_ms"], res["rss_mb"]
    rows = "\n".join(f"| {k} | {v['n']} | {v['p50']} | {v['p95']} | {v['max']} |" for k, v in lm.items())
    procs = "\n".join(
        f"| {p['role']} | {p['pid']} | {p['first_third_mean']} | {p['last_third_mean']} | {p['growth_pct']} | "
        f"{p['slope_mib_per_min_2nd_half']} |" for p in [*res.get("rss_mb_per_process", []),
                                                          {"role": "**whole tree**", "pid": "", **rs}])
    head = "| clients | duration | requests | errors | series checked | series/s |\n|---|---|---|---|---|---|\n"
    return (f"{note}\n\n{head}"
            f"| {res['clients']} | {res['duration_s']} s | {res['requests']} | {res['errors']} | "
            f"{res['series_checked']} | {res['throughput_series_per_s']} |\n\n"
            f"| request | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|\n{rows}\n\n"
            f"Server process tree RSS: first third {rs['first_third_mean']} MiB, last third "
            f"{rs['last_third_mean']} MiB (growth {rs['growth_pct']} %), min {rs['min']}, max {rs['max']} MiB, "
            f"slope over the second half {rs['slope_mib_per_min_2nd_half']} MiB/min, {rs['samples']} samples.\n\n"
            f"| process | pid | RSS first third MiB | last third MiB | growth % | slope 2nd half MiB/min |\n"
            f"|---|---|---|---|---|---|\n{procs}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=180.0)
    ap.add_argument("--out", type=Path, default=Path("loadtest-out"))
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of load before measuring")
    ap.add_argument("--dashboard-every", type=int, default=10,
                    help="each client reads the dashboard every N loops (0: never)")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the server (repeatable), e.g. MALLOC_ARENA_MAX=2")
    ap.add_argument("--keep", action="store_true", help="keep the server's temporary data dir")
    ap.add_argument("--fixed-data", type=float, default=0.0, metavar="SECONDS",
                    help="upload for SECONDS first (not measured), then warm up and measure with reads and "
                         "dashboard reads only: the stored data does not change during the measurement")
    a = ap.parse_args(argv)
    here = Path(__file__).resolve().parents[1] / "tests" / "reliability"
    sys.path.insert(0, str(here))
    from helpers import make_tokens, server  # the same server harness as the tests

    a.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="scanqc-load-"))
    extra = dict(kv.split("=", 1) for kv in a.server_env)
    srv = server(root, extra_env={"SCANQC_KEEP_UPLOADS": "false", **extra})
    token = make_tokens(srv.data_dir, {"load": ("site", "site01")})["load"]
    try:
        srv.start()
        print(f"server ready in {srv.startup_s:.1f} s; warm-up {a.warmup:.0f} s", flush=True)
        uids = None
        if a.fixed_data > 0:
            fill = run_load(srv.base, token, clients=a.clients, duration=a.fixed_data, pids_fn=srv.pids,
                            tmp=root / "f", dashboard_every=0)
            import httpx

            with httpx.Client(base_url=srv.base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
                uids = [v["verdict"]["series_uid"] for v in c.get("/api/verdicts?limit=1000").json()["verdicts"]]
            print(f"fixed data: {fill['series_checked']} series stored; reads only from now on", flush=True)
        if a.warmup > 0:
            run_load(srv.base, token, clients=a.clients, duration=a.warmup, pids_fn=srv.pids, tmp=root / "w",
                     dashboard_every=a.dashboard_every, read_only_uids=uids)
        print(f"measuring: {a.clients} clients for {a.duration:.0f} s", flush=True)
        res = run_load(srv.base, token, clients=a.clients, duration=a.duration, pids_fn=srv.pids, tmp=root / "m",
                       dashboard_every=a.dashboard_every, read_only_uids=uids)
        if a.fixed_data > 0:
            res["fixed_data"] = {"fill_s": a.fixed_data, "series_stored": fill["series_checked"]}
    finally:
        srv.stop()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    res["dashboard_every"] = a.dashboard_every
    res["server_env"] = extra
    (a.out / "load.json").write_text(json.dumps(res, indent=1))
    note = (f"scanqc load test, {time.strftime('%Y-%m-%d')}; dashboard read every {a.dashboard_every or 'no'} loop(s)"
            + (f"; fixed data ({res['fixed_data']['series_stored']} series stored first, no uploads measured)"
               if a.fixed_data > 0 else "")
            + (f"; server env {extra}" if extra else ""))
    (a.out / "load.md").write_text(to_markdown(res, note))
    print(to_markdown(res))
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

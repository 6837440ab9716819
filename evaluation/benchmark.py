"""``scanqc bench``: how fast is a verdict? Everything measured in one process run, on the same files.

1. **Series**: a 200-slice abdominal CT (512 x 512, the phantom of :func:`scanqc.datasets.samples.abdomen_ct_sample`
   at 1.41 mm slices, cut/padded to exactly 200) and a 176-slice brain MR (MNI152 1 mm T1 as MPRAGE, 256 x 256
   axial slices, 13 empty slices above the vertex removed), written once as DICOM under the cache folder.
2. **In-process ``check``** (:func:`scanqc.pipeline.check_path` with the shipped example guideline, models warm):
   p50 / p95 of the verdict's ``elapsed_ms`` over ``runs`` runs, broken down with ``Verdict.timings_ms``
   (``read``, ``assemble_decode``, each header check, each model check) and, for the model checks, into
   preprocessing and onnxruntime inference measured by calling :func:`scanqc.preprocessing.preprocess` and the
   registry model's ``run`` on the same series.
3. **Floor**: ``pydicom.dcmread`` + ``pixel_array`` of the same files and nothing else.
4. **torch eager**: the same architectures (``scanqc.training.train.build_net`` with the shipped model's training
   config), ``torch.set_num_threads(2)``, ``torch.inference_mode()``, batch 1, vs onnxruntime on the same input.
5. **CLI**: ``scanqc check`` as a fresh process per series (cold start: imports, model sessions): wall time and
   peak RSS (``resource.getrusage`` of the child).
6. **Service**: ``scanqc serve --no-dicom`` on a free loopback port; 1, 4, 8 concurrent clients POST the series
   as a zip to ``/api/check``; series/s, request p50 / p95, peak RSS of the server's process tree; once with
   adaptive batching as shipped (``max_batch_size`` 16) and once with it off (``SCANQC_MAX_BATCH_SIZE=1``: the
   inference service still runs, but every call is its own batch).

Output: ``OUT/bench.json`` and ``OUT/bench.md`` (tables + the targets, met or missed by how much).
No assertion on any timing anywhere.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from scanqc.evaluation.quality import CpuSteal, machine_info

#: Target figures from the issue (2 CPU cores).
TARGETS = {"verdict_p95_ms": 1000.0, "floor_ratio": 1.5, "ort_speedup": 3.0, "service_series_per_s": 4.0,
           "dicom_p95_ms": 1000.0}
GUIDELINES = {"ct": "abdomen_ct", "mr": "brain_mr"}
HEADER_CHECKS = ("integrity", "protocol", "deidentification", "visit_window")
MODEL_TASKS = {"ct": ("contrast_phase", "coverage"), "mr": ("motion", "coverage")}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(xs, np.float64), q)) if xs else float("nan")


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50": round(pct(xs, 50), 2), "p95": round(pct(xs, 95), 2), "min": round(min(xs), 2) if xs else None,
            "n": len(xs)}


def timed(fn: Any, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


# -- test series ------------------------------------------------------------------------------------

def _fit_slices(vol: Any, n: int, fill: float) -> Any:
    from scanqc.datasets.geometry import crop_pad

    d = n - vol.shape[0]
    before = d // 2 if d > 0 else -((-d) // 2)
    return crop_pad(vol, [before, 0, 0], [d - before, 0, 0], fill)


def make_series(kind: str, folder: Path, n_slices: int) -> Path:
    """Write the benchmark series once (``folder/.complete`` marks a finished one)."""
    if (folder / ".complete").exists():
        return folder
    from scanqc.datasets.geometry import crop_pad
    from scanqc.datasets.samples import abdomen_ct_sample, brain_mr_sample

    from scanqc.io.dicom_write import write_dicom_series

    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.glob("*.dcm"):
        p.unlink()
    if kind == "ct":
        # The phantom spans ~282 mm from above the liver dome to below the kidneys.
        vol, header, _ = abdomen_ct_sample(0, slice_mm=round(282.5 / n_slices, 3))
        vol = _fit_slices(vol, n_slices, -1000.0)
        header["SliceThickness"] = vol.spacing[0]
    elif kind == "mr":
        vol, header, _ = brain_mr_sample(0)
        extra = vol.shape[0] - n_slices
        # Axis 0 runs inferior -> superior: drop the empty slices above the vertex.
        vol = crop_pad(vol, [0, 0, 0], [-extra, 0, 0], 0.0) if extra > 0 else _fit_slices(vol, n_slices, 0.0)
    else:
        raise ValueError(f"series kind must be ct or mr, got {kind!r}")
    write_dicom_series(vol, folder, header["Modality"], header=header)
    (folder / ".complete").write_text(json.dumps({"shape": list(vol.shape), "spacing": list(vol.spacing)}))
    return folder


def series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


def zip_bytes(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in series_files(folder):
            zf.write(p, p.name)
    return buf.getvalue()


# -- in-process latency ----------------------------------------------------------------------------

class PinnedModels:
    """``models=`` for the pipeline: each task's model from a folder (promoted or newest), else the promoted one."""

    def __init__(self, folder: Path | None) -> None:
        from scanqc.evaluation.quality import resolve_model

        self._models = {t: resolve_model(t, folder) for t in ("motion", "contrast_phase", "coverage")}

    def get(self, task: str) -> Any:
        return self._models.get(task)

    def as_models_dir(self, root: Path) -> Path:
        """A ``$SCANQC_MODELS_DIR`` promoting exactly these versions (symlinks), for subprocesses."""
        for task, m in self._models.items():
            if m is None:
                continue
            (root / task).mkdir(parents=True, exist_ok=True)
            link = root / task / m.version
            if not link.exists():
                link.symlink_to(Path(m.folder).resolve(), target_is_directory=True)
            (root / task / "promoted.json").write_text(json.dumps({"version": m.version, "source": "user",
                                                                  "reason": "scanqc bench --models"}))
        return root


def bench_check(folder: Path, kind: str, runs: int, models: Any = None) -> dict[str, Any]:
    """``check_path`` latency, stage breakdown, floor, preprocessing vs inference."""
    import pydicom
    from scanqc.models import default_registry

    from scanqc.guideline import load_guideline
    from scanqc.pipeline import check_path
    from scanqc.preprocessing import preprocess
    from scanqc.series import load_series

    guideline = load_guideline(GUIDELINES[kind])
    files = series_files(folder)
    res: dict[str, Any] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    t = time.perf_counter()
    first = check_path(folder, guideline, models=models)[0]
    res["first_check_ms"] = round((time.perf_counter() - t) * 1000, 1)  # includes onnxruntime session creation
    res["verdict_status"] = first.status
    res["checks"] = {k: c.status for k, c in first.checks.items()}
    res["shape"], res["spacing_mm"] = list(first.shape or ()), [round(s, 3) for s in first.spacing_mm or ()]
    check_path(folder, guideline, models=models)

    def floor() -> float:
        t = time.perf_counter()
        for p in files:
            pydicom.dcmread(p).pixel_array  # noqa: B018 - decoding is the point
        return (time.perf_counter() - t) * 1000

    floor()
    elapsed: list[float] = []
    floors: list[float] = []
    stages: dict[str, list[float]] = {}
    steal = CpuSteal()
    for i in range(runs):
        # Each check beside a floor run, which goes first in turn: on a shared VM the CPU steal drifts by tens of
        # percent within seconds, and a pair of runs a second apart sees the same machine.
        if i % 2:
            floors.append(floor())
        v = check_path(folder, guideline, models=models)[0]
        if not i % 2:
            floors.append(floor())
        elapsed.append(v.elapsed_ms)
        for k, ms in v.timings_ms.items():
            stages.setdefault(k, []).append(ms)
    res["cpu_steal_pct"] = steal.stop()
    res["check_ms"] = summary(elapsed)
    res["stages_ms"] = {k: summary(v) for k, v in stages.items()}
    res["header_checks_ms"] = summary([sum(stages[k][i] for k in HEADER_CHECKS if k in stages)
                                       for i in range(runs)])
    res["floor_ms"] = summary(floors)
    res["floor_ratio_p50"] = round(res["check_ms"]["p50"] / res["floor_ms"]["p50"], 2)
    res["floor_ratio_p95"] = round(res["check_ms"]["p95"] / res["floor_ms"]["p50"], 2)
    # The target's figure: the median over the pairs of check / floor (the same machine state for both).
    res["floor_ratio_paired"] = round(pct([c / f for c, f in zip(elapsed, floors)], 50), 2)
    # Preprocessing vs inference per model, on the same series (volume already assembled).
    series = load_series(folder)[0][0]
    reg = models or default_registry()
    per_model: dict[str, Any] = {}
    for task in MODEL_TASKS[kind]:
        m = reg.get(task)
        if m is None:
            per_model[task] = {"installed": False}
            continue
        x = preprocess(series.volume, m.spec, series.modality)
        per_model[task] = {"installed": True, "version": m.version, "input": [1, *x.shape],
                        "preprocess_ms": summary(timed(lambda m=m: preprocess(series.volume, m.spec,
                                                                               series.modality), runs)),
                        "onnxruntime_ms": summary(timed(lambda m=m, x=x: m.run(x[None]), runs))}
    res["models"] = per_model
    return res


# -- torch eager vs onnxruntime --------------------------------------------------------------------

def bench_torch(runs: int, models: Any = None) -> dict[str, Any]:
    """Same architectures in torch eager (2 threads, inference mode) vs onnxruntime, batch 1, same input."""
    from scanqc.models import default_registry

    from scanqc.inference import TASKS

    try:
        import torch
        from scanqc.training.config import load_config
        from scanqc.training.train import build_net
    except ImportError as exc:
        return {"error": f"torch/monai not installed ({exc}): pip install -e .[train]"}
    torch.set_num_threads(2)
    reg = models or default_registry()
    out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for task in TASKS:
        m = reg.get(task)
        if m is None:
            continue
        cfg_src = dict((m.metadata.get("training") or {}).get("config") or {})
        keys = ("channels", "strides", "num_res_units", "dropout")
        cfg = load_config(task, **{k: (tuple(v) if isinstance(v, list) else v)
                                   for k, v in cfg_src.items() if k in keys})
        net = build_net(cfg).eval()
        weights = "random (latency does not depend on them)"
        words = str((m.metadata.get("training") or {}).get("command") or "").split()
        run_dir = words[words.index("--out") + 1] if "--out" in words[:-1] else None
        ckpt = Path(run_dir) / "best.pt" if run_dir else None
        if ckpt is not None and ckpt.is_file():
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=False)
                net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
                weights = str(ckpt)
            except Exception as exc:  # architecture drift: random weights time the same
                weights = f"random ({type(exc).__name__} loading {ckpt})"
        x = np.random.default_rng(0).random((1, m.spec.in_channels, *m.spec.shape), dtype=np.float32)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            t_torch = timed(lambda net=net, xt=xt: net(xt), runs, warmup=3)
        t_ort = timed(lambda m=m, x=x: m.run(x), runs, warmup=3)
        out[task] = {"version": m.version, "input": list(x.shape), "weights": weights,
                     "parameters": int(sum(p.numel() for p in net.parameters())),
                     "torch_eager_ms": summary(t_torch), "onnxruntime_ms": summary(t_ort),
                     "speedup_p50": round(pct(t_torch, 50) / pct(t_ort, 50), 2)}
    return out


# -- CLI cold start and peak memory ---------------------------------------------------------------

def bench_cli(folder: Path, kind: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``scanqc check --json`` as a new process: wall time and the child's peak RSS."""
    cmd = [sys.executable, "-m", "scanqc.cli", "check", "--json", "--protocol", GUIDELINES[kind], str(folder)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = (time.perf_counter() - t) * 1000
    try:
        verdict = json.loads(stdout.decode().splitlines()[0])
    except (ValueError, IndexError):
        verdict = {}
    return {"wall_ms": round(wall, 1), "verdict_elapsed_ms": verdict.get("elapsed_ms"), "exit": proc.returncode,
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


# -- service throughput ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _RssSampler(threading.Thread):
    """Peak summed RSS of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self._stop_ev = pid, 0.0, threading.Event()

    def current_mb(self) -> float:
        import psutil

        try:
            p = psutil.Process(self.pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def run(self) -> None:
        while not self._stop_ev.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            self._stop_ev.wait(0.2)

    def stop(self) -> float:
        self._stop_ev.set()
        self.join(timeout=2)
        return round(self.peak_mb, 1)


def start_server(data_dir: Path, batching: bool, extra_env: dict[str, str] | None = None,
                 ) -> tuple[subprocess.Popen, str, Path]:
    port = _free_port()
    env = {**os.environ, **(extra_env or {}), "BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1",
           "SCANQC_STUDIES": json.dumps({"BENCH-CT": GUIDELINES["ct"], "BENCH-MR": GUIDELINES["mr"]}),
           "SCANQC_SALT": "bench-salt"}
    if not batching:
        # BentoML refuses max_batch_size < 2; a 1 ms window leaves only calls arriving together to merge. The
        # batch sizes actually seen are read back from /metrics (scanqc_inference_batch_size).
        env["SCANQC_MAX_LATENCY_MS"] = "1"
    log = data_dir.parent / f"server-{'batch' if batching else 'nobatch'}.log"
    cmd = [sys.executable, "-m", "scanqc.cli", "serve", "--no-dicom", "--port", str(port), "--data-dir",
           str(data_dir)]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while "scanqc ready" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"scanqc serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}", log


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # its own process group (start_new_session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _post(client: Any, base: str, payload: bytes, study: str) -> tuple[int, float, dict[str, Any]]:
    t = time.perf_counter()
    r = client.post(base + "/api/check", files=[("files", ("series.zip", payload, "application/zip"))],
                    data={"station": "BENCH", "study": study})
    ms = (time.perf_counter() - t) * 1000
    try:
        body = r.json()
    except ValueError:
        body = {}
    return r.status_code, ms, body


def load_level(base: str, payload: bytes, study: str, clients: int, n_requests: int) -> dict[str, Any]:
    """``clients`` threads share ``n_requests`` uploads; series/s = completed / wall time."""
    import httpx

    lat: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(range(n_requests))

    def client_loop() -> None:
        with httpx.Client(timeout=300) as c:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                code, ms, body = _post(c, base, payload, study)
                with lock:
                    if code == 200:
                        lat.append(ms)
                        server_ms.extend(v.get("elapsed_ms", 0.0) for v in body.get("verdicts", []))
                    else:
                        errors.append(f"{code}: {str(body)[:200]}")

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": n_requests, "ok": len(lat), "errors": errors[:3],
            "wall_s": round(wall, 2), "series_per_s": round(len(lat) / wall, 2),
            "request_ms": summary(lat), "verdict_elapsed_ms": summary(server_ms)}


def batch_sizes(base: str) -> dict[str, Any]:
    """Mean adaptive-batch size per task from the service's /metrics histogram."""
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as exc:
        return {"error": str(exc)}
    sums: dict[str, dict[str, float]] = {}
    for m in re.finditer(r'^scanqc_inference_batch_size_(sum|count)\{[^}]*task="(\w+)"[^}]*\} ([0-9.e+]+)$', text,
                         re.M):
        sums.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
    return {t: {"calls": int(v.get("count", 0)), "series": int(v.get("sum", 0)),
                "mean_batch": round(v["sum"] / v["count"], 2) if v.get("count") else None}
            for t, v in sums.items()}


def bench_service(folders: dict[str, Path], clients: list[int], requests_per_client: int,
                  work: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"payload_mb": {}, "modes": {}}
    payloads = {k: zip_bytes(f) for k, f in folders.items()}
    out["payload_mb"] = {k: round(len(v) / 2**20, 1) for k, v in payloads.items()}
    studies = {"ct": "BENCH-CT", "mr": "BENCH-MR"}
    for batching in (True, False):
        mode = ("batching on (max_batch_size 16, max_latency_ms 1000)" if batching
                else "batching off (SCANQC_MAX_LATENCY_MS=1)")
        data_dir = work / ("svc-batch" if batching else "svc-nobatch") / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        proc, base, _ = start_server(data_dir, batching, env)
        res: dict[str, Any] = {"startup_s": round(time.perf_counter() - t, 1)}
        sampler = _RssSampler(proc.pid)
        res["idle_rss_mb"] = round(sampler.current_mb(), 1)
        sampler.start()
        try:
            import httpx

            with httpx.Client(timeout=300) as c:  # warm-up: first request per kind
                for k, p in payloads.items():
                    code, ms, _ = _post(c, base, p, studies[k])
                    res[f"warmup_{k}"] = {"status": code, "ms": round(ms, 1)}
            for k, p in payloads.items():
                levels = []
                for n in clients:
                    n_req = max(4, requests_per_client * n)
                    _log(f"[bench] service {mode}: {k}, {n} client(s), {n_req} uploads")
                    levels.append(load_level(base, p, studies[k], n, n_req))
                res[k] = levels
            res["inference_batches"] = batch_sizes(base)
        finally:
            res["peak_rss_mb"] = sampler.stop()
            stop_server(proc)
        out["modes"][mode] = res
    return out


# -- report ----------------------------------------------------------------------------------------

def targets(res: dict[str, Any]) -> dict[str, Any]:
    """Each target: value, met, and by how much it is missed (ratio to the target)."""
    out: dict[str, Any] = {}
    for k, s in res.get("series", {}).items():
        p95 = s["check_ms"]["p95"]
        out[f"{k}_verdict_p95_ms"] = {"value": p95, "target": f"<= {TARGETS['verdict_p95_ms']:.0f} ms",
                                      "met": p95 <= TARGETS["verdict_p95_ms"],
                                      "ratio": round(p95 / TARGETS["verdict_p95_ms"], 2)}
        r = s.get("floor_ratio_paired", s["floor_ratio_p50"])
        out[f"{k}_floor_ratio"] = {"value": r, "target": f"<= {TARGETS['floor_ratio']}x decode floor (median over "
                                                          "pairs of runs)",
                                   "met": r <= TARGETS["floor_ratio"], "ratio": round(r / TARGETS["floor_ratio"], 2)}
    tor = res.get("torch") or {}
    for task, t in tor.items():
        if isinstance(t, dict) and "speedup_p50" in t:
            out[f"{task}_ort_speedup"] = {"value": t["speedup_p50"], "target": f">= {TARGETS['ort_speedup']}x",
                                          "met": t["speedup_p50"] >= TARGETS["ort_speedup"],
                                          "ratio": round(t["speedup_p50"] / TARGETS["ort_speedup"], 2)}
    svc = res.get("service") or {}
    for mode, m in (svc.get("modes") or {}).items():
        for k in ("ct", "mr"):
            if k in m:
                best = max(lv["series_per_s"] for lv in m[k])
                out[f"{k}_service_series_per_s ({mode})"] = {
                    "value": best, "target": f">= {TARGETS['service_series_per_s']} series/s (best of the client "
                                             "counts)", "met": best >= TARGETS["service_series_per_s"],
                    "ratio": round(best / TARGETS["service_series_per_s"], 2)}
    for k, r in ((res.get("dicom") or {}).get("direct") or {}).items():
        for what in ("stored_ms", "console_ms"):
            p95 = r[what]["p95"]
            if p95 is None:
                continue
            out[f"{k}_dicom_{what[:-3]}_p95_ms"] = {
                "value": p95, "target": f"<= {TARGETS['dicom_p95_ms']:.0f} ms after the push (storescu)",
                "met": p95 <= TARGETS["dicom_p95_ms"], "ratio": round(p95 / TARGETS["dicom_p95_ms"], 2)}
    return out


def markdown(res: dict[str, Any]) -> str:
    md = ["# scanqc benchmark", "", f"- command: `{res['command']}`", f"- date: {res['date']}",
          f"- machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, load average at start "
          f"{res['machine']['loadavg_at_start']}; onnxruntime threads {res['ort_threads']}", ""]
    for k, s in res.get("series", {}).items():
        md += [f"## {k.upper()} series: {s['files']} files, {'x'.join(map(str, s['shape']))} voxels "
               f"({s['bytes'] / 2**20:.0f} MB), spacing {s['spacing_mm']} mm; verdict {s['verdict_status']} "
               f"({', '.join(f'{c}={v}' for c, v in s['checks'].items())})", "",
               f"`check` in process over {s['check_ms']['n']} runs (models warm; first call "
               f"{s['first_check_ms']:.0f} ms incl. onnxruntime sessions):", "",
               "| stage | p50 ms | p95 ms | share of p50 |", "|---|---|---|---|"]
        total = s["check_ms"]["p50"]
        for st, v in s["stages_ms"].items():
            md.append(f"| {st} | {v['p50']:.1f} | {v['p95']:.1f} | {v['p50'] / total:.0%} |")
        md += [f"| header checks (sum) | {s['header_checks_ms']['p50']:.1f} | {s['header_checks_ms']['p95']:.1f} | "
               f"{s['header_checks_ms']['p50'] / total:.0%} |",
               f"| **full verdict** | **{total:.1f}** | **{s['check_ms']['p95']:.1f}** | 100% |",
               f"| floor: pydicom dcmread + pixel_array | {s['floor_ms']['p50']:.1f} | {s['floor_ms']['p95']:.1f} | "
               f"verdict / floor = {s['floor_ratio_p50']}x (p50 / p50), {s.get('floor_ratio_paired', '–')}x "
               "(median over pairs) |", "",
               f"Each check ran beside a floor run (alternating which went first); CPU steal by the hypervisor "
               f"during these runs: {s.get('cpu_steal_pct', '–')} % of the machine's CPU time.", ""]
        rows = [(t, m) for t, m in s["models"].items() if m.get("installed")]
        if rows:
            md += ["| model check | input | preprocess p50 ms | onnxruntime p50 ms |", "|---|---|---|---|"]
            for t, m in rows:
                md.append(f"| {t} {m['version']} | {'x'.join(map(str, m['input']))} | "
                          f"{m['preprocess_ms']['p50']:.1f} | {m['onnxruntime_ms']['p50']:.1f} |")
            md.append("")
        missing = [t for t, m in s["models"].items() if not m.get("installed")]
        if missing:
            md += [f"Not installed (check skipped, not timed): {', '.join(missing)}.", ""]
        if k in res.get("cli", {}):
            c = res["cli"][k]
            md += [f"`scanqc check --json` as a new process: {c['wall_ms']:.0f} ms wall (verdict "
                   f"{c['verdict_elapsed_ms']} ms of it), peak RSS {c['peak_rss_mb']:.0f} MB.", ""]
    tor = res.get("torch") or {}
    if tor:
        md += ["## torch eager vs onnxruntime (batch 1, same input, 2 threads each)", ""]
        if "error" in tor:
            md += [tor["error"], ""]
        else:
            md += ["| model | input | params | torch eager p50 ms | onnxruntime p50 ms | speed-up |",
                   "|---|---|---|---|---|---|"]
            for t, v in tor.items():
                if isinstance(v, dict):
                    md.append(f"| {t} {v['version']} | {'x'.join(map(str, v['input']))} | {v['parameters']:,} | "
                              f"{v['torch_eager_ms']['p50']:.1f} | {v['onnxruntime_ms']['p50']:.1f} | "
                              f"{v['speedup_p50']}x |")
            md.append("")
    svc = res.get("service") or {}
    if svc.get("modes"):
        md += ["## Service throughput (`scanqc serve --no-dicom`, zip upload to /api/check, clients on the same "
               "machine)", "", f"Payload (zip, deflate level 1): {svc['payload_mb']} MB.", "",
               "| mode | series | clients | uploads | series/s | request p50 ms | request p95 ms | "
               "verdict p50 ms (server) |", "|---|---|---|---|---|---|---|---|"]
        for mode, m in svc["modes"].items():
            for k in ("ct", "mr"):
                for lv in m.get(k, []):
                    err = f" ({len(lv['errors'])} errors)" if lv["errors"] else ""
                    md.append(f"| {mode} | {k} | {lv['clients']} | {lv['ok']}/{lv['requests']}{err} | "
                              f"{lv['series_per_s']} | {lv['request_ms']['p50']:.0f} | {lv['request_ms']['p95']:.0f} "
                              f"| {lv['verdict_elapsed_ms']['p50']:.0f} |")
        md += ["", "| mode | start-up s | idle RSS MB | peak RSS MB (server process tree) | inference calls -> series "
                   "per task (mean batch) |", "|---|---|---|---|---|"]
        for mode, m in svc["modes"].items():
            b = m.get("inference_batches") or {}
            bs = "; ".join(f"{t}: {v['calls']} -> {v['series']} ({v['mean_batch']})" for t, v in b.items()
                           if isinstance(v, dict))
            md.append(f"| {mode} | {m['startup_s']} | {m['idle_rss_mb']} | {m['peak_rss_mb']} | {bs or '–'} |")
        md.append("")
    if res.get("dicom"):
        from scanqc.evaluation.dicom_bench import markdown_dicom

        md += [markdown_dicom(res["dicom"])]
    md += ["## Targets", "", "| target | value | goal | met | value / goal |", "|---|---|---|---|---|"]
    for name, t in res.get("targets", {}).items():
        md.append(f"| {name} | {t['value']} | {t['target']} | {'yes' if t['met'] else '**no**'} | {t['ratio']} |")
    return "\n".join(md) + "\n"


def run_bench(out: Path, runs: int = 20, kinds: list[str] | None = None, service: bool = True,
              clients: list[int] | None = None, requests_per_client: int = 3, torch_eager: bool = True,
              cache: Path | None = None, ct_slices: int = 200, mr_slices: int = 176, command: str = "",
              cli: bool = True, models_dir: Path | None = None, dicom: bool = False, pushes: int = 10,
              in_process: bool = True) -> dict[str, Any]:
    from scanqc.inference import _threads

    kinds = kinds or ["ct", "mr"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache or os.environ.get("SCANQC_CACHE", Path.home() / ".cache" / "scanqc")) / "bench"
    res: dict[str, Any] = {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "machine": machine_info(), "ort_threads": _threads(), "runs": runs, "series": {},
                           "cli": {}}
    models = PinnedModels(models_dir) if models_dir else None
    res["models_dir"] = str(models_dir) if models_dir else "promoted (registry)"
    work_ctx = tempfile.TemporaryDirectory(prefix="scanqc-bench-")
    work = Path(work_ctx.name)
    sub_env = {"SCANQC_MODELS_DIR": str(models.as_models_dir(work / "models"))} if models else {}
    folders = {}
    for k in kinds:
        n = ct_slices if k == "ct" else mr_slices
        _log(f"[bench] writing/using the {k} series ({n} slices) under {cache}")
        folders[k] = make_series(k, cache / f"{k}-{n}", n)
    for k, f in folders.items():
        if not in_process:
            break
        _log(f"[bench] in-process check of the {k} series, {runs} runs")
        res["series"][k] = bench_check(f, k, runs, models)
        if cli:
            res["cli"][k] = bench_cli(f, k, sub_env)
    res["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if torch_eager:
        _log("[bench] torch eager vs onnxruntime")
        res["torch"] = bench_torch(runs, models)
    try:
        if service:
            res["service"] = bench_service(folders, clients or [1, 4, 8], requests_per_client, work, sub_env)
        if dicom:
            from scanqc.evaluation.dicom_bench import bench_dicom

            res["dicom"] = bench_dicom(out, pushes=pushes, kinds=kinds)
    finally:
        work_ctx.cleanup()
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    res["targets"] = targets(res)
    (out / "bench.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(markdown(res))
    return res

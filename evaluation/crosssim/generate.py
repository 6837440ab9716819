"""Generate a crosssim test set: one DICOM series folder per case plus ``manifest.csv`` (docs/manifest.md)."""

from __future__ import annotations

import csv
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from . import VERSION

TASKS = ("motion", "contrast_phase", "coverage")
LABELS = {"motion": ["none", "mild", "severe"],
          "contrast_phase": ["non_contrast", "arterial", "portal_venous", "delayed"],
          "coverage": ["full", "superior", "inferior"]}
COLUMNS = ["case_id", "path", "modality", "task", "label", "severity", "phase", "enhancement", "missing",
           "body_region", "split", "provenance"]
_TASK_ID = {"motion": 1, "contrast_phase": 2, "coverage": 3}
MAX_ATTEMPTS = 8


def case_plan(task: str, n: int) -> list[dict[str, str]]:
    """Balanced labels (and, for coverage, regions) in a fixed interleaved order."""
    out = []
    for i in range(n):
        if task == "coverage":
            region = "brain" if (i // 3) % 2 == 0 else "abdomen"
            out.append({"label": LABELS[task][i % 3], "region": region})
        else:
            out.append({"label": LABELS[task][i % len(LABELS[task])],
                        "region": "brain" if task == "motion" else "abdomen"})
    return out


def case_seed(seed: int, task: str, index: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, _TASK_ID[task], index, attempt]).generate_state(1)[0])


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return round(float(o), 6)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def make_case(task: str, index: int, seed: int, out: str, plan: dict[str, str],
              options: dict[str, Any] | None = None) -> dict[str, str]:
    """Generate, write and describe one case (runs in a worker process)."""
    from .dicomio import write_series

    options = options or {}
    t0 = time.perf_counter()
    errors = []
    for attempt in range(MAX_ATTEMPTS):
        cs = case_seed(seed, task, index, attempt)
        try:
            if plan["region"] == "brain":
                from .brain_case import make_mr_case

                case = make_mr_case(cs, task, plan["label"], **options.get("mr", {}))
                modality, phase, enhancement, severity = "MR", "", "", case.severity
            else:
                from .ct_case import make_ct_case

                case = make_ct_case(cs, task, plan["label"], **options.get("ct", {}))
                modality, phase, enhancement, severity = "CT", case.phase, case.enhancement, None
            break
        except RuntimeError as exc:  # a draw that missed its label's definition: redraw from the next seed
            errors.append(str(exc))
    else:
        raise RuntimeError(f"case {index}: no valid draw in {MAX_ATTEMPTS} attempts: {errors[-1]}")
    case_id = f"{task}_{index:04d}"
    folder = Path(out) / case_id
    rng = np.random.default_rng(cs)
    write_series(case.volume, case.geom, folder, modality, case.header, uid_seed=cs,
                 ct_signed=bool(rng.random() < 0.5))
    prov = {"generator": "crosssim", "version": VERSION, "seed": seed, "index": index, "attempt": attempt,
            "case_seed": cs, "task": task, "label": plan["label"], "region": plan["region"],
            "redraws": errors, "seconds": round(time.perf_counter() - t0, 2), **case.provenance}
    return {"case_id": case_id, "path": case_id, "modality": modality, "task": task, "label": case.label,
            "severity": "" if severity is None else f"{severity:.4f}", "phase": phase, "enhancement": enhancement,
            "missing": case.missing, "body_region": plan["region"], "split": "test",
            "provenance": json.dumps(prov, default=_jsonable, separators=(",", ":"))}


def write_manifest_csv(rows: list[dict[str, str]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def generate(task: str, n: int, seed: int, out: Path, workers: int = 1, options: dict[str, Any] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Write ``n`` cases of ``task`` under ``out`` and ``out/manifest.csv``; returns a summary."""
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {list(TASKS)}")
    out.mkdir(parents=True, exist_ok=True)
    plans = case_plan(task, n)
    rows: list[dict[str, str] | None] = [None] * n
    t0 = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"crosssim {task}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress) as bar:
        job = bar.add_task(task, total=n)
        if workers <= 1:
            for i, p in enumerate(plans):
                rows[i] = make_case(task, i, seed, str(out), p, options)
                bar.advance(job)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futs = {pool.submit(make_case, task, i, seed, str(out), p, options): i for i, p in enumerate(plans)}
                for f in as_completed(futs):
                    rows[futs[f]] = f.result()
                    bar.advance(job)
    done = [r for r in rows if r is not None]
    write_manifest_csv(done, out / "manifest.csv")
    secs = [json.loads(r["provenance"])["seconds"] for r in done]
    counts: dict[str, int] = {}
    for r in done:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return {"manifest": str(out / "manifest.csv"), "n": len(done), "labels": counts,
            "wall_s": round(time.perf_counter() - t0, 1), "median_case_s": float(np.median(secs)) if secs else None}

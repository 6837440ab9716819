"""Held-out figures of the abdominal coverage check by geometry (:mod:`scanqc.checks.abdomen_coverage`).

``scanqc evaluate`` scores the coverage *network*; abdominal CT coverage is now decided from located anatomy
without one, so this runs the check itself on every CT row of a coverage manifest and reports accuracy with
the right end(s) named, per label, the distances it measured, and a 95 % bootstrap interval
(:func:`scanqc.evaluation.metrics.bootstrap_ci`, stratified by label).

    python -m scanqc.training.abdomen_coverage_eval --manifest DATA/cov-test/manifest.csv --out report.json
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def _one(row: dict[str, str]) -> dict[str, Any]:
    from scanqc.checks.base import CheckContext
    from scanqc.checks.coverage import CoverageCheck
    from scanqc.series import load_series

    series, _ = load_series(row["path"], modality_hint="CT")
    t0 = time.perf_counter()
    r = CoverageCheck()(series[0], CheckContext())
    truth = sorted(m for m in (row.get("missing") or "").replace(",", ";").split(";") if m)
    got = sorted(r.extra.get("missing") or []) if r.status in ("fail", "warn", "pass") else None
    return {"case_id": row["case_id"], "label": row["label"], "truth": truth, "status": r.status, "got": got,
            "correct": got == truth and r.status != "skipped", "message": r.message,
            "dome_mm": r.extra.get("liver_dome_below_first_slice_mm"),
            "kidneys_mm": r.extra.get("kidneys_above_last_slice_mm"), "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    from scanqc.evaluation.metrics import bootstrap_ci
    from scanqc.models.evaluate import manifest_sha256, read_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    rows = [r for r in read_manifest(a.manifest, "coverage", "all") if r.get("modality") == "CT"]
    with ProcessPoolExecutor(max_workers=max(1, a.workers)) as ex:
        res = list(ex.map(_one, rows, chunksize=2))
    y = np.array([["full", "superior", "inferior"].index(r["label"]) for r in res])
    c = np.array([r["correct"] for r in res], float)
    per = {lab: {"n": int(np.sum(y == i)), "accuracy": float(c[y == i].mean()) if (y == i).any() else None}
           for i, lab in enumerate(("full", "superior", "inferior"))}
    full_kid = [r["kidneys_mm"] for r in res if r["label"] == "full" and r["kidneys_mm"] is not None]
    out = {"manifest": str(a.manifest), "manifest_sha256": manifest_sha256(a.manifest), "n": len(res),
           "accuracy": float(c.mean()), "accuracy_ci95": bootstrap_ci(lambda t, k: float(np.mean(k)), y, c),
           "per_label": per, "status_counts": {s: sum(r["status"] == s for r in res)
                                               for s in ("pass", "warn", "fail", "skipped")},
           "full_scans_kidneys_above_last_slice_mm": {"min": min(full_kid) if full_kid else None,
                                                      "median": float(np.median(full_kid)) if full_kid else None},
           "median_check_seconds": float(np.median([r["seconds"] for r in res])),
           "errors": [r for r in res if not r["correct"]]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "errors"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

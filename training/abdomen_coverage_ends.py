"""Hard held-out test of the abdominal coverage check at each end: how much of the kidneys (liver dome) is cut.

``scanqc data generate --task coverage --generator abdomen`` cuts 5-35 % of the liver-dome-to-kidneys extent,
which places most inferior cuts well up through the kidneys. This draws the cases the check finds hard from the
same generator (:func:`scanqc.datasets.abdomen.make_abdomen`): one randomised CT per case rendered with room at
both ends, then cropped *after* rendering (the last native slice's profile sees what lies beyond it, as a real
scan's does):

- ``inferior``: the last slice runs through the lower kidney, ``cut`` mm of kidney beyond its centre (a few mm
  above the lower pole up through the kidneys);
- ``superior``: the first slice runs through the liver, ``cut`` mm of liver above its centre;
- ``full``: the kidneys end, and the dome lies, 0-40 mm (at least one slice) inside the scan.

The uncut end of a cut case keeps 0-40 mm too. Truth is the label map itself: kidney (liver) voxels in the last
(first) native slice. Slice thickness 1-5 mm, every phase. Each case's volume is written once (int16 npz) so a
changed rule is re-scored in about a minute:

    python -m scanqc.training.abdomen_coverage_ends --seed 7301 --variant test --n 240 --data D --out R.json

Reports per-end accuracy (a cut end must fail naming it; a covered end must neither fail nor warn), overall
accuracy with the right end named, the inferior sensitivity by how much kidney was cut off, and passes of full
scans by kidney margin, with 95 % stratified bootstrap intervals (:func:`scanqc.evaluation.metrics.bootstrap_ci`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

THICKNESSES = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
KINDS = ("inferior", "superior", "full")
KIND_P = (0.4, 0.2, 0.4)
ROOM_MM = 80.0  # rendered beyond the anatomy at both ends before cropping


def _slices(mm: float, sz: float) -> int:
    """Signed whole slices for ``mm`` beyond an end (> 0: cut, <= 0: margin), at least one either way."""
    k = max(1, int(np.round(abs(mm) / sz)))
    return k if mm > 0 else -k


def crop_ends(vol: Any, lab: np.ndarray, kidney_beyond_mm: float, liver_beyond_mm: float
              ) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """Crop a rendered CT (slice 0 inferior) so the lowest kidney voxel lies ``kidney_beyond_mm`` beyond the last
    slice's centre (> 0: that much kidney is cut off; <= 0: the kidneys end that far inside, at least one slice)
    and the top liver voxel ``liver_beyond_mm`` beyond the first slice's. Returns (volume, labels, truth)."""
    from scanqc.datasets.abdomen import KIDNEY_CODES, LIVER_CODES

    from scanqc.volume import Volume

    sz = vol.spacing[0]
    kid = np.flatnonzero(np.isin(lab, KIDNEY_CODES).any((1, 2)))
    liv = np.flatnonzero(np.isin(lab, LIVER_CODES).any((1, 2)))
    first = max(int(kid[0]) + _slices(kidney_beyond_mm, sz), 0)
    last = min(int(liv[-1]) - _slices(liver_beyond_mm, sz), lab.shape[0] - 1)
    arr = np.ascontiguousarray(vol.array[first:last + 1])
    lab = lab[first:last + 1]
    out = Volume(arr, vol.spacing, (vol.origin[0], vol.origin[1], vol.origin[2] + first * sz), vol.direction,
                 modality="CT")
    kid_rows = np.flatnonzero(np.isin(lab, KIDNEY_CODES).any((1, 2)))
    liv_rows = np.flatnonzero(np.isin(lab, LIVER_CODES).any((1, 2)))
    n = lab.shape[0]
    truth = {"inferior": bool(kid_rows.size and kid_rows[0] == 0),
             "superior": bool(liv_rows.size and liv_rows[-1] == n - 1),
             # > 0: mm of kidney (liver) beyond the end slice's centre; <= 0: -(margin to that centre).
             "kidney_beyond_last_mm": float((first - kid[0]) * sz),
             "liver_beyond_first_mm": float((liv[-1] - last) * sz)}
    return out, lab, truth


def draw(seed: int, index: int, variant: str, with_labels: bool = False) -> tuple[Any, ...]:
    """One case: (Volume, truth and parameters[, label map of the kept slices, slice 0 inferior])."""
    from scanqc.datasets.abdomen import KIDNEY_CODES, PHASES, make_abdomen

    rng = np.random.default_rng([int(seed), int(index), 19])
    kind = str(rng.choice(KINDS, p=KIND_P))
    phase = str(rng.choice(PHASES))
    th = float(rng.choice(THICKNESSES))
    vol, lab, _ = make_abdomen(rng, phase, "optimal", variant, coverage="full", margins_mm=(ROOM_MM, ROOM_MM),
                               thickness=th)
    kid = np.flatnonzero(np.isin(lab, KIDNEY_CODES).any((1, 2)))
    # Lower cut: d mm of kidney beyond the last slice's centre; half the cuts within 20 mm of the pole.
    if kind == "inferior":
        span = (kid[-1] - kid[0]) * vol.spacing[0]
        kmm = float(rng.uniform(1.0, 20.0)) if rng.uniform() < 0.5 else float(rng.uniform(20.0, 0.7 * span))
    else:
        kmm = -float(rng.uniform(0.0, 40.0))
    lmm = float(rng.uniform(1.0, 60.0)) if kind == "superior" else -float(rng.uniform(0.0, 40.0))
    out, lab, t = crop_ends(vol, lab, kmm, lmm)
    meta = {"index": index, "kind": kind, "phase": phase, "thickness_mm": th, "spacing_mm": list(vol.spacing),
            "truth": {e: t[e] for e in ("inferior", "superior")}, "kidney_beyond_last_mm": t["kidney_beyond_last_mm"],
            "liver_beyond_first_mm": t["liver_beyond_first_mm"], "slices": lab.shape[0], "variant": variant,
            "seed": seed}
    return (out, meta, lab) if with_labels else (out, meta)


def _case_path(data: Path, index: int) -> Path:
    return data / f"case_{index:04d}.npz"


def materialise(seed: int, n: int, variant: str, data: Path) -> None:
    """Write every case not yet on disk (int16 HU; the generator clips to [-1024, 3071])."""
    data.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = _case_path(data, i)
        if p.is_file():
            continue
        vol, meta = draw(seed, i, variant)
        tmp = p.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, hu=np.rint(vol.array).astype(np.int16), spacing=np.array(vol.spacing),
                            origin=np.array(vol.origin), meta=json.dumps(meta))
        tmp.rename(p)


def load(data: Path, index: int) -> tuple[Any, dict[str, Any]]:
    from scanqc.volume import Volume

    z = np.load(_case_path(data, index))
    vol = Volume(z["hu"].astype(np.float32), tuple(float(s) for s in z["spacing"]),
                 tuple(float(o) for o in z["origin"]), modality="CT")
    return vol, json.loads(str(z["meta"]))


def score_case(vol: Any, meta: dict[str, Any]) -> dict[str, Any]:
    from scanqc.checks.base import CheckContext
    from scanqc.checks.coverage import CoverageCheck
    from scanqc.series import Series

    s = Series(input="x", series_uid="1.2.3", modality="CT", volume=vol, source="nifti")
    s.sidecar["BodyPartExamined"] = "ABDOMEN"
    t0 = time.perf_counter()
    r = CoverageCheck()(s, CheckContext())
    sec = time.perf_counter() - t0
    missing = list(r.extra.get("missing") or [])
    uncertain = list(r.extra.get("uncertain") or [])
    return {**meta, "status": r.status, "missing": missing, "uncertain": uncertain, "message": r.message,
            "kidneys_mm": r.extra.get("kidneys_above_last_slice_mm"),
            "dome_mm": r.extra.get("liver_dome_below_first_slice_mm"),
            "end_slices": r.extra.get("end_slices"), "seconds": round(sec, 3)}


def _acc(y: np.ndarray, c: np.ndarray) -> dict[str, Any]:
    from scanqc.evaluation.metrics import bootstrap_ci

    if len(c) == 0:
        return {"n": 0}
    ci = bootstrap_ci(lambda t, k: float(np.mean(k)), y, c.astype(float)) if len(c) > 1 else None
    return {"n": len(c), "value": round(float(np.mean(c)), 3), "ci95": [round(v, 3) for v in ci] if ci else None}


def _share(res: list[dict[str, Any]], hit: Any) -> dict[str, Any]:
    return _acc(np.zeros(len(res), int), np.array([bool(hit(r)) for r in res]))


def summarise(res: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-end and overall figures; ``strict``: a covered end must pass (a warn is not a pass)."""
    out: dict[str, Any] = {"n": len(res), "kinds": {k: sum(r["kind"] == k for r in res) for k in KINDS}}
    for end in ("inferior", "superior"):
        y = np.array([r["truth"][end] for r in res])
        failed = np.array([end in r["missing"] for r in res])
        flagged = np.array([end in r["missing"] or end in r["uncertain"] for r in res])
        ok = np.where(y, failed, ~flagged)
        out[end] = {"accuracy": _acc(y, ok), "sensitivity_fail": _acc(y[y], failed[y]),
                    "sensitivity_fail_or_warn": _acc(y[y], flagged[y]),
                    "specificity_no_flag": _acc(y[~y], ~flagged[~y]),
                    "false_fail_on_covered": int(np.sum(failed & ~y))}
    yk = np.array([KINDS.index(r["kind"]) for r in res])
    truth = [sorted(e for e in ("superior", "inferior") if r["truth"][e]) for r in res]
    strict = np.array([sorted(r["missing"]) == t and (r["status"] == "pass" if not t else r["status"] == "fail")
                       for r, t in zip(res, truth)])
    lenient = np.array([sorted(r["missing"]) == t and r["status"] != "skipped" for r, t in zip(res, truth)])
    out["accuracy_strict"] = _acc(yk, strict)
    out["accuracy_as_abdomen_coverage_eval"] = _acc(yk, lenient)  # a warn on a full scan counts as right there
    bins = [(0, 5), (5, 10), (10, 20), (20, 40), (40, 1e9)]
    cut = [r for r in res if r["truth"]["inferior"]]
    out["inferior_sensitivity_by_kidney_cut_mm"] = {
        f"{lo}-{hi if hi < 1e9 else ''}": _share(s, lambda r: "inferior" in r["missing"])
        for lo, hi in bins if (s := [r for r in cut if lo <= r["kidney_beyond_last_mm"] < hi])}
    full_inf = [r for r in res if not r["truth"]["inferior"]]
    out["inferior_covered_pass_by_kidney_margin_mm"] = {
        f"{lo}-{hi if hi < 1e9 else ''}": {
            **_share(s, lambda r: "inferior" not in r["missing"] + r["uncertain"]),
            "failed": sum("inferior" in r["missing"] for r in s)}
        for lo, hi in [(0, 5), (5, 10), (10, 20), (20, 1e9)]
        if (s := [r for r in full_inf if lo < -r["kidney_beyond_last_mm"] + 1e-6 <= hi or
                  (lo == 0 and -r["kidney_beyond_last_mm"] <= 0)])}
    sup_cut = [r for r in res if r["truth"]["superior"]]
    out["superior_sensitivity_by_liver_cut_mm"] = {
        f"{lo}-{hi if hi < 1e9 else ''}": _share(s, lambda r: "superior" in r["missing"])
        for lo, hi in bins if (s := [r for r in sup_cut if lo <= r["liver_beyond_first_mm"] < hi])}
    out["by_thickness_inferior_accuracy"] = {
        str(t): _acc(np.zeros(len(s), int), np.array([(("inferior" in r["missing"]) if r["truth"]["inferior"] else
                                                       not ({"inferior"} & set(r["missing"] + r["uncertain"])))
                                                      for r in s]))
        for t in THICKNESSES if (s := [r for r in res if r["thickness_mm"] == t])}
    out["median_check_seconds"] = float(np.median([r["seconds"] for r in res]))
    return out


def _correct(res: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per case: (strictly right at both ends, right at the inferior end)."""
    both, inf = [], []
    for r in res:
        t = sorted(e for e in ("superior", "inferior") if r["truth"][e])
        both.append(sorted(r["missing"]) == t and r["status"] == ("fail" if t else "pass"))
        inf.append(("inferior" in r["missing"]) if r["truth"]["inferior"]
                   else "inferior" not in r["missing"] + r["uncertain"])
    return np.array(both, float), np.array(inf, float)


def paired(res: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """This run minus ``base`` on the same cases, paired bootstrap (stratified by kind) 95 % intervals."""
    from scanqc.evaluation.metrics import bootstrap_ci

    by = {r["index"]: r for r in base}
    res = [r for r in res if r["index"] in by]
    y = np.array([KINDS.index(r["kind"]) for r in res])
    (nb, ni), (ob, oi) = _correct(res), _correct([by[r["index"]] for r in res])
    out = {}
    for name, a, b in (("accuracy_strict", nb, ob), ("inferior_accuracy", ni, oi)):
        ci = bootstrap_ci(lambda t, u, v: float(np.mean(u) - np.mean(v)), y, a, b)
        out[name] = {"n": len(res), "difference": round(float(a.mean() - b.mean()), 3),
                     "ci95": [round(v, 3) for v in ci] if ci else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--variant", default="test", choices=("train", "test"))
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--data", type=Path, required=True, help="folder for the cases' volumes (reused when present)")
    ap.add_argument("--out", type=Path, required=True, help="report JSON (summary and every case)")
    ap.add_argument("--paired-with", type=Path, help="an earlier report on the same cases (e.g. the code before a "
                                                     "change): adds the paired difference with a 95 %% interval")
    a = ap.parse_args(argv)
    materialise(a.seed, a.n, a.variant, a.data)
    res = [score_case(*load(a.data, i)) for i in range(a.n)]
    args = " ".join(argv if argv is not None else sys.argv[1:])
    out = {"command": f"python -m scanqc.training.abdomen_coverage_ends {args}",
           "seed": a.seed, "variant": a.variant, "summary": summarise(res), "cases": res}
    if a.paired_with:
        out["summary"]["paired_vs"] = {"report": str(a.paired_with),
                                       **paired(res, json.loads(a.paired_with.read_text())["cases"])}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

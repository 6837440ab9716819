"""Evaluating a model version on a labeled manifest (numpy + onnxruntime only).

Used by ``scanqc models evaluate`` / ``promote`` (is the candidate better on the same held-out set?),
by ``scanqc export`` (test metrics into metadata) and by ``scanqc baseline`` (same metrics for the
classical baseline, so the CNN is always compared with something simpler).

Manifest contract (``scanqc.datasets``): CSV with ``case_id, path, modality, task, label, severity,
phase, enhancement, missing, body_region, split, provenance``; paths relative to the manifest folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.inference import COVERAGE_ENDS, MOTION_LABELS, PHASES

#: The metric each task is ranked by when comparing versions (higher is better).
PRIMARY_METRIC = {"motion": "auc_any", "contrast_phase": "accuracy", "coverage": "accuracy"}


def read_manifest(path: str | Path, task: str | None = None, split: str | None = None) -> list[dict[str, str]]:
    """Validated manifest rows (:func:`scanqc.datasets.manifest.read_manifest`) as dicts with ``path`` made
    absolute; filtered by task and split ("all" = no filter)."""
    from scanqc.datasets.manifest import read_manifest as read_rows

    p = Path(path)
    p = p / "manifest.csv" if p.is_dir() else p
    out = []
    for row in read_rows(p):
        if (task and row.task != task) or (split and split != "all" and row.split != split):
            continue
        rec = row.to_csv()
        rec["path"] = str(row.resolve(p.parent).resolve())
        out.append(rec)
    return out


def _case_problem(task: str, row: dict[str, str]) -> str | None:
    """Why one manifest case cannot be used (cheap: one DICOM header or sidecar), or None."""
    import json

    import pydicom

    from scanqc.io.sources import is_nifti_name

    p = Path(row["path"])
    if not p.exists():
        return f"{p}: no such file or folder"
    try:
        encode_row(task, row)
    except ScanQCError as exc:
        return exc.message
    stated = (row.get("modality") or "").upper()
    found = ""
    if p.is_file() and is_nifti_name(p.name):
        side = Path(str(p)[:-7] if p.name.endswith(".nii.gz") else str(p)[:-4]).with_suffix(".json")
        try:
            found = str(json.loads(side.read_text()).get("Modality") or "").upper() if side.is_file() else ""
        except (OSError, ValueError, AttributeError):
            found = ""
    elif p.is_file() and p.suffix.lower() == ".zip":
        return None  # read when loading; not unpacked twice
    else:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            return f"{p}: folder holds no files"
        if any(is_nifti_name(f.name) or f.suffix.lower() == ".zip" for f in files[:50]):
            return None
        for f in files[:5]:  # the first readable header decides; a series has one modality
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"], force=True)
                found = str(ds.get("Modality", "") or "").upper()
            except Exception:
                continue
            if found:
                break
        if not found:
            return f"{p}: no DICOM header with a Modality in its first {min(len(files), 5)} file(s)"
    if found and stated and found != stated:
        return f"{p}: reads as {found} (DICOM Modality), the manifest says {stated}"
    return None


def check_cases(rows: list[dict[str, str]], task: str, max_listed: int = 10) -> None:
    """Every case exists, has a valid label and reads as its stated modality, or one coded error (USAGE;
    NOT_FOUND when only paths are missing) listing the bad cases. Run before training so a typo costs
    seconds, not the minutes of caching that used to end in a traceback."""
    bad = [(r.get("case_id", ""), why) for r in rows if (why := _case_problem(task, r))]
    if not bad:
        return
    code = ErrorCode.NOT_FOUND if all("no such file or folder" in w for _, w in bad) else ErrorCode.USAGE
    listed = "; ".join(f"case {cid!r}: {why}" for cid, why in bad[:max_listed])
    more = f"; and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
    raise ScanQCError(code, f"{len(bad)} of {len(rows)} {task} case(s) cannot be used (fix the manifest): "
                            f"{listed}{more}")


def manifest_sha256(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.csv"
    return hashlib.sha256(p.read_bytes()).hexdigest()


def portable_path(path: str | Path, base: str | Path | None = None) -> str:
    """``path`` as recorded in model metadata and reports: relative to ``base`` (default: the working
    directory) when inside it, else only its last two parts (a manifest's folder and name).

    An absolute path names a folder of the machine that trained the model and means nothing elsewhere; a
    manifest is identified on any machine by the SHA-256 recorded next to it (the case paths inside a
    manifest are relative to the manifest's folder already).
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    root = Path(base) if base is not None else Path.cwd()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return Path(*p.parts[-2:]).as_posix() if len(p.parts) > 2 else p.name


def portable_command(command: str, base: str | Path | None = None) -> str:
    """A recorded command line with every absolute path argument (``/x`` or ``--opt=/x``) made portable."""
    import shlex

    def one(tok: str) -> str:
        key, eq, val = tok.partition("=") if tok.startswith("-") else ("", "", tok)
        return f"{key}{eq}{portable_path(val, base)}" if val.startswith("/") else tok

    try:
        toks = shlex.split(command)
    except ValueError:  # unbalanced quotes: leave it, it was never run from a shell
        return command
    return " ".join(shlex.quote(one(t)) for t in toks)


def encode_row(task: str, row: dict[str, str]) -> np.ndarray:
    """Training/evaluation target for one manifest row, as a float vector.

    motion ``[class]`` (none/mild/severe); contrast_phase ``[phase, suboptimal, has_enhancement_label]``;
    coverage ``[superior_missing, inferior_missing]``.
    """
    label = (row.get("label") or "").strip()
    if task == "motion":
        if label not in MOTION_LABELS:
            raise ScanQCError(ErrorCode.USAGE, f"motion label {label!r} not one of {list(MOTION_LABELS)}")
        return np.array([MOTION_LABELS.index(label)], np.float32)
    if task == "contrast_phase":
        phase = label if label in PHASES else (row.get("phase") or "").strip()
        if phase not in PHASES:
            raise ScanQCError(ErrorCode.USAGE, f"contrast phase label {label!r} not one of {list(PHASES)}")
        enh = (row.get("enhancement") or "").strip().lower()
        known = enh in ("optimal", "suboptimal") and phase != "non_contrast"
        return np.array([PHASES.index(phase), float(enh == "suboptimal"), float(known)], np.float32)
    if task == "coverage":
        miss = {m.strip() for m in (row.get("missing") or "").replace(",", ";").split(";") if m.strip()}
        if not miss and label in COVERAGE_ENDS:
            miss = {label}
        if not miss and label == "both":
            miss = set(COVERAGE_ENDS)
        if label not in ("full", *COVERAGE_ENDS, "both", "") and not miss:
            raise ScanQCError(ErrorCode.USAGE, f"coverage label {label!r} not one of full/superior/inferior/both")
        bad = miss - set(COVERAGE_ENDS)
        if bad:
            raise ScanQCError(ErrorCode.USAGE, f"coverage missing end(s) {sorted(bad)} not superior/inferior")
        return np.array([float(e in miss) for e in COVERAGE_ENDS], np.float32)
    raise ScanQCError(ErrorCode.USAGE, f"unknown task {task!r}")


def roc_auc(y: Iterable[float], s: Iterable[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tie correction); None if one class is absent."""
    y = np.asarray(list(y), dtype=bool)
    s = np.asarray(list(s), dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def task_metrics(task: str, targets: np.ndarray, outputs: list[dict[str, Any]],
                 thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metrics from per-case calibrated outputs (the :func:`scanqc.inference.postprocess` format)."""
    thr = thresholds or {}
    n = len(outputs)
    m: dict[str, Any] = {"n": n}
    if n == 0:
        return m
    t = np.asarray(targets)
    if task == "motion":
        cls = t[:, 0].astype(int)
        p_any = np.array([o["motion"] for o in outputs])
        p_sev = np.array([o["severe"] for o in outputs])
        probs = np.array([[o["probabilities"][k] for k in MOTION_LABELS] for o in outputs])
        m["auc_any"] = roc_auc(cls > 0, p_any)
        m["auc_severe"] = roc_auc(cls == 2, p_sev)
        m["accuracy_3class"] = float(np.mean(probs.argmax(1) == cls))
        w = float(thr.get("motion_warn", 0.5))
        flagged = p_any >= w
        if (cls == 0).any():
            m["specificity_at_warn"] = float(np.mean(~flagged[cls == 0]))
        if (cls > 0).any():
            m["sensitivity_at_warn"] = float(np.mean(flagged[cls > 0]))
    elif task == "contrast_phase":
        cls = t[:, 0].astype(int)
        pred = np.array([PHASES.index(o["predicted"]) for o in outputs])
        m["accuracy"] = float(np.mean(pred == cls))
        m["per_phase_accuracy"] = {ph: (float(np.mean(pred[cls == i] == i)) if (cls == i).any() else None)
                                   for i, ph in enumerate(PHASES)}
        m["confusion"] = {ph: {q: int(np.sum((cls == i) & (pred == j))) for j, q in enumerate(PHASES)}
                          for i, ph in enumerate(PHASES)}
        known = t[:, 2] > 0.5
        if known.any():
            m["auc_suboptimal"] = roc_auc(t[known, 1] > 0.5, np.array([o["suboptimal"] for o in outputs])[known])
    elif task == "coverage":
        y = t > 0.5
        flagged = np.zeros_like(y)
        for j, e in enumerate(COVERAGE_ENDS):
            p = np.array([o[f"missing_{e}"] for o in outputs])
            m[f"auc_{e}"] = roc_auc(y[:, j], p)
            flagged[:, j] = p >= float((thr.get(f"missing_{e}") or {}).get("fail", 0.5))
        m["accuracy"] = float(np.mean(np.all(flagged == y, axis=1)))
        m["accuracy_full_vs_cut"] = float(np.mean(flagged.any(1) == y.any(1)))
    m["primary"] = PRIMARY_METRIC[task]
    return m


def load_inputs(rows: list[dict[str, str]], spec: Any,
                progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> np.ndarray:
    """Read every row's series and preprocess it exactly as serving does."""
    from scanqc.preprocessing import preprocess
    from scanqc.series import load_series

    xs = []
    for r in (progress(rows) if progress else rows):
        series, _ = load_series(r["path"], modality_hint=(r.get("modality") or None))
        if not series or series[0].volume is None:
            raise ScanQCError(ErrorCode.UNREADABLE, f"{r['path']}: no volume read for manifest case {r.get('case_id')}")
        xs.append(preprocess(series[0].volume, spec, r.get("modality") or series[0].modality))
    return np.stack(xs) if xs else np.zeros((0, spec.in_channels, *spec.shape), np.float32)


def model_outputs(model: Any, manifest: str | Path, split: str = "test", batch_size: int = 8,
                  limit: int | None = None, progress: Callable | None = None
                  ) -> tuple[list[dict[str, str]], np.ndarray, list[dict[str, Any]]]:
    """(rows, targets, calibrated per-case outputs) of an installed model on a manifest split."""
    rows = read_manifest(manifest, model.task, split)
    if limit:
        rows = rows[:limit]
    if not rows:
        present = sorted({r.get("split", "") for r in read_manifest(manifest, model.task, "all")})
        hint = f" (splits present: {', '.join(present)}; --split all uses every row)" if present else ""
        raise ScanQCError(ErrorCode.USAGE, f"{manifest}: no {model.task} rows in split {split!r}{hint}")
    targets = np.stack([encode_row(model.task, r) for r in rows])
    return rows, targets, case_outputs(model, rows, batch_size, progress)


def case_outputs(model: Any, rows: list[dict[str, str]], batch_size: int = 8,
                 progress: Callable | None = None) -> list[dict[str, Any]]:
    """Calibrated outputs per row. A model with delegates (``metadata["delegate"]``: coverage 2.1.0 locates the
    brain on MR and hands abdominal CT to the coverage CNN) runs each row through the model for its modality;
    a delegate's coverage probabilities are mapped so that its fail threshold reads 0.5, the composite's own.
    Abdominal CT coverage is scored as served: by the geometry check unless ``SCANQC_ABDOMINAL_COVERAGE=cnn``."""
    def run(m: Any, sub: list[dict[str, str]]) -> list[dict[str, Any]]:
        x = load_inputs(sub, m.spec, progress)
        logits = np.concatenate([m.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        return m.postprocess(logits)

    if not (getattr(model, "metadata", None) or {}).get("delegate"):
        return run(model, rows)
    from scanqc.checks.brain_coverage import cut_score

    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.get("modality") or "").upper(), []).append(i)
    out: list[dict[str, Any]] = [{} for _ in rows]
    for mod, idx in groups.items():
        if model.task == "coverage" and mod == "CT" and _abdominal_geometry():
            for i in idx:  # what `scanqc check` serves on abdominal CT: the geometry, not the delegate CNN
                out[i] = _geometry_coverage(rows[i])
            continue
        m = model.for_modality(mod)
        outs = run(m, [rows[i] for i in idx])
        if m is not model and model.task == "coverage":
            thr = m.thresholds
            outs = [{**o, **{k: cut_score(o[k], float((thr.get(k) or {}).get("fail", 0.5)))
                             for k in ("missing_superior", "missing_inferior")}} for o in outs]
        for i, o in zip(idx, outs):
            out[i] = o
    return out


def _abdominal_geometry() -> bool:
    from scanqc.checks import abdomen_coverage

    return bool(abdomen_coverage.ENABLED)


def _geometry_coverage(row: dict[str, str]) -> dict[str, Any]:
    """Coverage outputs of the abdominal geometry check on one CT row: 1.0 for a cut end, 0.45 for an end it
    could not verify (a warn: ranks above a pass, below the 0.5 fail), 0.0 otherwise (a skip included)."""
    from scanqc.checks.abdomen_coverage import abdominal_coverage
    from scanqc.checks.base import CheckContext
    from scanqc.series import load_series

    series, _ = load_series(row["path"], modality_hint="CT")
    r = abdominal_coverage(series[0], CheckContext())
    missing, unsure = r.extra.get("missing") or [], r.extra.get("uncertain") or []
    return {f"missing_{e}": 1.0 if e in missing else 0.45 if e in unsure else 0.0 for e in COVERAGE_ENDS}


#: The training-data generators of this project; a held-out figure on their output is not independent evidence.
TRAINING_GENERATORS = ("scanqc.datasets.generate",)


def held_out_sources(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Where the held-out rows come from: generator names (``real`` for labelled scans) and whether any of them
    is independent of the training generator (the blind cross-simulator, real scans)."""
    names: dict[str, int] = {}
    for r in rows:
        prov = r.get("provenance") or ""
        gen = "real" if prov == "real" else "unknown"
        if prov.startswith("{"):
            try:
                gen = str(json.loads(prov).get("generator", "unknown")).split(":")[0]
            except ValueError:
                pass
        names[gen] = names.get(gen, 0) + 1
    independent = sum(n for g, n in names.items() if g not in TRAINING_GENERATORS)
    return {"generators": names, "independent_rows": independent, "independent": independent == len(rows) > 0}


def evaluate_model(model: Any, manifest: str | Path, split: str = "test", batch_size: int = 8,
                   limit: int | None = None, progress: Callable | None = None) -> dict[str, Any]:
    """Metrics of an installed model (:class:`scanqc.models.InstalledModel`) on a manifest split."""
    rows, targets, outputs = model_outputs(model, manifest, split, batch_size, limit, progress)
    out = task_metrics(model.task, targets, outputs, model.thresholds)
    out["manifest"] = portable_path(manifest)
    out["manifest_sha256"] = manifest_sha256(manifest)
    out["split"] = split
    out["data"] = data_kind(rows)
    return out


def data_kind(rows: list[dict[str, str]]) -> str:
    """``real``, ``synthetic`` or ``mixed (k real)``: the manifest rows' ``provenance``."""
    real = sum((r.get("provenance") or "real").strip() == "real" for r in rows)
    return "real" if real == len(rows) else "synthetic" if real == 0 else f"mixed ({real} of {len(rows)} real)"


def _strata(task: str, targets: np.ndarray) -> np.ndarray:
    t = np.asarray(targets)
    return t[:, 0].astype(int) if task != "coverage" else (t[:, 0] > 0.5).astype(int) * 2 + (t[:, 1] > 0.5)


def paired_difference(task: str, targets: np.ndarray, candidate: list[dict[str, Any]], cand_thr: dict[str, Any],
                      current: list[dict[str, Any]], cur_thr: dict[str, Any], n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Primary-metric difference (candidate - current) on the same cases, with a paired bootstrap interval.

    Both models' outputs are resampled together (the same cases in every replicate), stratified by label
    so each replicate keeps the class mix (percentile bootstrap; Efron & Tibshirani 1993, ch. 13). Pairing
    removes the case-to-case variation the two share, so the interval is much narrower than two separate
    intervals would suggest.
    """
    key = PRIMARY_METRIC[task]
    t = np.asarray(targets)

    def diff(idx: np.ndarray) -> float | None:
        a = task_metrics(task, t[idx], [candidate[i] for i in idx], cand_thr).get(key)
        b = task_metrics(task, t[idx], [current[i] for i in idx], cur_thr).get(key)
        return None if a is None or b is None else float(a) - float(b)

    everything = np.arange(len(t))
    d = diff(everything)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(_strata(task, t) == v) for v in np.unique(_strata(task, t))]
    vals = [v for _ in range(n_boot)
            if (v := diff(np.concatenate([rng.choice(g, len(g)) for g in groups]))) is not None]
    lo, hi = (np.percentile(vals, [(1 - level) / 2 * 100, (1 + level) / 2 * 100]) if vals else (np.nan, np.nan))
    return {"metric": key, "difference": d, f"ci{round(level * 100)}": [float(lo), float(hi)], "n": len(t),
            "n_boot": len(vals), "method": "paired percentile bootstrap over the same cases, stratified by label"}


def promotion_decision(diff: dict[str, Any], margin: float = 0.0) -> tuple[bool, str]:
    """(promote?, why) from :func:`paired_difference`: refused only when the candidate is worse beyond noise,
    i.e. the whole interval of the difference lies below ``-margin``."""
    lo, hi = next(v for k, v in diff.items() if k.startswith("ci"))
    d, key = diff["difference"], diff["metric"]
    if d is None or not np.isfinite(hi):
        return False, f"{key} undefined on these cases; cannot compare"
    span = f"{key} difference {d:+.4f}, 95 % CI [{lo:+.4f}, {hi:+.4f}] over {diff['n']} paired cases"
    if hi < -margin:
        return False, f"worse beyond noise: {span}, all below {0.0 - margin:+.4g}"
    if lo > 0:
        return True, f"better beyond noise: {span}"
    return True, f"no worse within noise: {span} (refused only when the whole interval is below {0.0 - margin:+.4g})"


def is_better(candidate: dict[str, Any], current: dict[str, Any], task: str, margin: float = 0.0) -> bool:
    """Candidate's primary metric strictly above the current one's (plus ``margin``), same data."""
    key = PRIMARY_METRIC[task]
    c, o = candidate.get(key), current.get(key)
    if c is None:
        return False
    if o is None:
        return True
    return float(c) > float(o) + margin

"""``scanqc evaluate``: how good are the verdicts? Per task, on labeled held-out manifests.

For each task found in the manifests: the promoted ONNX model (or the one in ``--models DIR``) and the
classical baseline (:mod:`scanqc.training.baseline`, fitted on a training manifest or loaded from
``scanqc baseline --out``) are run on the same cases, through the serving reader and preprocessing
(:func:`scanqc.models.evaluate.load_inputs`). Reported side by side:

- the task metrics of :func:`scanqc.models.evaluate.task_metrics` (what ``scanqc models evaluate`` prints);
- per binary quantity (any motion, severe motion, phase one-vs-rest, suboptimal enhancement, missing
  superior / inferior end): ROC AUC, best sensitivity at 95 % and 90 % specificity, sensitivity and
  specificity at the shipped threshold, ECE (10 equal-width bins) and Brier score;
- confusion matrix, and breakdowns by motion severity, contrast phase / enhancement, missing end and
  body region;
- ``REPORT_DIR/report.md`` (+ ``report.html``) embedding ``roc_<task>.png``, ``reliability_<task>.png``,
  ``confusion_<task>.png``, ``breakdown_<task>_<by>.png``; all figures in ``report.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scanqc.evaluation import metrics as M
from scanqc.models.evaluate import (
    PRIMARY_METRIC,
    case_outputs,
    encode_row,
    manifest_sha256,
    read_manifest,
    roc_auc,
    task_metrics,
)

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.inference import TASKS

SEVERITY_BINS = [(0.0, 0.0, "none (0)"), (0.0, 0.25, "0-0.25"), (0.25, 0.4, "0.25-0.4"), (0.4, 0.6, "0.4-0.6"),
                 (0.6, 0.8, "0.6-0.8"), (0.8, 1.0, "0.8-1.0")]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- models and baselines ---------------------------------------------------------------------------

def resolve_model(task: str, models_dir: Path | None) -> Any:
    """The model to evaluate: ``models_dir``'s promoted (else newest) version, else the promoted one."""
    from scanqc.models.registry import ModelRegistry, default_registry

    if models_dir is None:
        return default_registry().get(task)
    reg = ModelRegistry.for_folder(models_dir)  # "bundled" only for the bundled folder itself
    rec = reg.promoted_record(task)
    if rec is not None:
        return reg.find(task, rec["version"])
    versions = reg.versions(task)
    return versions[-1] if versions else None


def load_baseline(task: str, baselines: Path | None, train_manifests: list[Path], seed: int = 0,
                  progress: Callable | None = None) -> tuple[dict[str, Any] | None, str]:
    """Fitted baseline models for a task and where they came from (None when neither source has one)."""
    if baselines is not None:
        for cand in (baselines / task / "baseline.pkl", baselines / f"{task}-baseline" / "baseline.pkl",
                     baselines / "baseline.pkl"):
            if cand.is_file():
                with cand.open("rb") as fh:
                    obj = pickle.load(fh)
                if obj.get("task") == task:
                    return obj["models"], str(cand)
    from scanqc.training import baseline as B

    rows, used = [], []
    for m in train_manifests:  # every manifest given (it used to stop at the first with rows)
        got = [r for r in read_manifest(m, task, "all") if r.get("split") in ("train", "val")]
        if got:
            rows += got
            used.append(f"{m} ({len(got)})")
    if not rows:
        return None, "no baseline given (--baselines DIR or --baseline-train MANIFEST)"
    _log(f"[{task}] fitting the baseline on {len(rows)} cases of {', '.join(used)}")
    x = np.stack([B.features(task, r) for r in (progress(rows) if progress else rows)])
    t = np.stack([encode_row(task, r) for r in rows])
    return B.fit(task, x, t, seed), f"fitted on {', '.join(used)} (train+val, {len(rows)} cases, seed {seed})"


def constant_output_warning(who: str, outputs: list[dict[str, Any]]) -> str | None:
    """A warning when every case got the same output (e.g. a baseline fitted on too few cases to split)."""
    if len(outputs) < 2:
        return None
    first = json.dumps(outputs[0], sort_keys=True)
    if all(json.dumps(o, sort_keys=True) == first for o in outputs[1:]):
        return (f"{who} gives the same output for all {len(outputs)} cases (a constant prediction): its figures "
                "say nothing about the cases; fit it on more cases (the baseline's trees need >= 20 per leaf)")
    return None


# -- breakdowns ------------------------------------------------------------------------------------

def _severity_group(r: dict[str, str]) -> str | None:
    try:
        s = float(r.get("severity") or "nan")
    except ValueError:
        return None
    if np.isnan(s):
        return None
    for lo, hi, name in SEVERITY_BINS:
        if (lo == hi == s) or (lo < s <= hi):
            return name
    return None


#: Artefact-to-noise ratio bands (RMS change inside the brain / Rician noise sigma, recorded by the generator).
ANR_BINS = [(0.0, 0.3, "ANR < 0.3"), (0.3, 0.6, "ANR 0.3-0.6"), (0.6, 1.2, "ANR 0.6-1.2"),
            (1.2, float("inf"), "ANR >= 1.2")]


def _anr_group(r: dict[str, str]) -> str | None:
    """Motion cases by how far the artefact stands out of the noise; clean cases form their own group."""
    if r.get("label") == "none":
        return "none"
    try:
        anr = json.loads(r.get("provenance") or "")["artefact"]["artefact_to_noise"]
    except (ValueError, KeyError, TypeError):
        return None  # not a generated case, or generated before the ratio was recorded
    return next((name for lo, hi, name in ANR_BINS if lo <= float(anr) < hi), None)


def _coverage_group(r: dict[str, str]) -> str:
    miss = {m.strip() for m in (r.get("missing") or "").split(";") if m.strip()}
    end = "both" if len(miss) == 2 else (next(iter(miss)) if miss else "full")
    return f"{r.get('body_region') or '?'}: {end}"


def _provenance(r: dict[str, str], key: str) -> str | None:
    p = r.get("provenance") or ""
    if not p.startswith("{"):
        return None
    try:
        v = json.loads(p).get(key)
    except ValueError:
        return None
    return str(v) if isinstance(v, str) else None


BREAKDOWNS: dict[str, list[tuple[str, str, Callable[[dict[str, str]], str | None]]]] = {
    # (key, title, group function); the motion figure is "flagged at the warn threshold == has motion".
    "motion": [("severity", "by motion severity (share flagged correctly at the warn threshold)", _severity_group),
               ("orientation", "by slice orientation (share flagged correctly)",
                lambda r: _provenance(r, "orientation")),
               ("label", "by label (share flagged correctly)", lambda r: r.get("label") or None),
               ("artefact_to_noise", "by artefact-to-noise ratio of the moved cases (share flagged correctly; "
                                     "AUC against all clean cases in brackets)", _anr_group)],
    "contrast_phase": [("phase", "by true phase (share with the right phase)", lambda r: r.get("label") or None),
                       ("enhancement", "by enhancement (share with the right phase)",
                        lambda r: r.get("enhancement") or "none (non-contrast)")],
    "coverage": [("missing", "by missing end and region (share with exactly the right ends)", _coverage_group),
                 ("region", "by body region (share with exactly the right ends)",
                  lambda r: r.get("body_region") or None)],
}


def breakdown(task: str, rows: list[dict[str, str]], outcomes: dict[str, dict[str, np.ndarray]],
              fn: Callable[[dict[str, str]], str | None]) -> list[dict[str, Any]]:
    key = "flag_correct" if task == "motion" else "correct"
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        g = fn(r)
        if g is not None:
            groups.setdefault(g, []).append(i)
    order = ([name for _, _, name in SEVERITY_BINS] + ["none", "mild", "severe"] + [n for _, _, n in ANR_BINS]
             if task == "motion" else sorted(groups))
    clean = [i for i, r in enumerate(rows) if r.get("label") == "none"] if task == "motion" else []
    table = []
    for g in [g for g in order if g in groups] + [g for g in sorted(groups) if g not in order]:
        idx = np.array(groups[g])
        row: dict[str, Any] = {"group": g, "n": len(idx)}
        moved_only = bool(clean) and not set(groups[g]) & set(clean)
        for who, o in outcomes.items():
            row[who] = float(np.mean(o[key][idx]))
            row[f"{who}_mean_score"] = float(np.mean(o["score"][idx]))
            if moved_only:
                # How well this group of moved cases is told apart from the clean ones (threshold-free).
                y = np.r_[np.zeros(len(clean)), np.ones(len(idx))]
                row[f"{who}_auc_vs_clean"] = roc_auc(y, np.r_[o["score"][clean], o["score"][idx]])
        table.append(row)
    return table


# -- one task --------------------------------------------------------------------------------------

def _native_array(r: dict[str, str]) -> np.ndarray:
    from scanqc.preprocessing import canonicalize
    from scanqc.series import load_series

    series, _ = load_series(r["path"], modality_hint=r.get("modality") or None)
    return canonicalize(series[0].volume)[0]


def evaluate_task(task: str, manifests: list[Path], split: str, model: Any, baseline: dict[str, Any] | None,
                  limit: int | None = None, progress: Callable | None = None) -> dict[str, Any]:
    """All figures for one task; ``_curves`` / ``_matrices`` / ``_rows`` (in-memory) feed the plots."""
    from scanqc.training import baseline as B

    rows: list[dict[str, str]] = []
    used = []
    for m in manifests:
        got = read_manifest(m, task, split)
        if got:
            rows += got
            used.append({"path": str(m), "sha256": manifest_sha256(m), "rows": len(got)})
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ScanQCError(ErrorCode.USAGE, f"no {task} rows in split {split!r} of "
                                           f"{', '.join(str(m) for m in manifests)} (--split all uses every row)")
    targets = np.stack([encode_row(task, r) for r in rows])
    res: dict[str, Any] = {"task": task, "n": len(rows), "manifests": used, "split": split,
                           "primary_metric": PRIMARY_METRIC[task]}
    outputs: dict[str, list[dict[str, Any]]] = {}
    thresholds: dict[str, dict[str, Any]] = {}
    timing: dict[str, float] = {}
    if model is not None:
        t0 = time.perf_counter()
        _log(f"[{task}] CNN {model.version}: reading + preprocessing {len(rows)} cases")
        outputs["CNN"] = case_outputs(model, rows, 8, progress)  # per modality when the model delegates one
        thresholds["CNN"] = model.thresholds
        timing["CNN_s"] = time.perf_counter() - t0
        res["model"] = {"version": model.version, "source": model.source, "folder": str(model.folder),
                        "thresholds": model.thresholds, "calibration": model.calibration}
    if baseline is not None:
        t0 = time.perf_counter()
        _log(f"[{task}] baseline: features of {len(rows)} cases")
        xf = np.stack([B.features(task, r) for r in (progress(rows) if progress else rows)])
        outputs["baseline"] = B.predict(task, baseline, xf)
        thresholds["baseline"] = dict(B.BASELINE_THRESHOLDS)
        timing["baseline_s"] = time.perf_counter() - t0
    if task == "motion":
        # The classical peer, alone and threshold-free: MRIQC's QI2-style background index (no fitting, no labels).
        t0 = time.perf_counter()
        _log(f"[{task}] QI2-style index of {len(rows)} cases (native resolution)")
        q = np.array([B.qi2(_native_array(r)) for r in (progress(rows) if progress else rows)])
        y = (targets[:, 0] > 0).astype(int)
        if 0 < y.sum() < len(y):
            auc = float(M.roc_auc(y, q))
            res["classical"] = {"qi2": {"auc_any": auc, "auc_any_ci95": M.bootstrap_ci(M.roc_auc, y, q)}}
        timing["qi2_s"] = time.perf_counter() - t0
    res["seconds"] = {k: round(v, 1) for k, v in timing.items()}
    res["warnings"] = [w for who, outs in outputs.items() if (w := constant_output_warning(who, outs))]
    for w in res["warnings"]:
        _log(f"[{task}] warning: {w}")
    curves: dict[str, list[M.Quantity]] = {}
    matrices: dict[str, np.ndarray] = {}
    outcomes: dict[str, dict[str, np.ndarray]] = {}
    for who, outs in outputs.items():
        thr = thresholds[who]
        block: dict[str, Any] = {"task_metrics": task_metrics(task, targets, outs, thr)}
        curves[who] = M.quantities(task, targets, outs)
        block["quantities"] = {q.name: M.quantity_metrics(q, threshold=M.shipped_threshold(task, q.name, thr))
                               for q in curves[who]}
        oc = M.case_outcomes(task, targets, outs, thr)
        outcomes[who] = oc
        cm = M.confusion(oc["true"], oc["pred"], len(M.CONFUSION_CLASSES[task]))
        matrices[who] = cm
        block["confusion"] = {"classes": M.CONFUSION_CLASSES[task], "matrix": cm.tolist()}
        block["accuracy"] = float(np.mean(oc["correct"]))
        block["accuracy_ci95"] = M.bootstrap_ci(lambda t, c: float(np.mean(c)), oc["true"], oc["correct"])
        if task == "contrast_phase":
            aucs = [block["quantities"][f"{ph} vs rest"]["auc"] for ph in M.CONFUSION_CLASSES[task]]
            block["task_metrics"]["macro_auc_ovr"] = (float(np.mean(aucs)) if all(a is not None for a in aucs)
                                                      else None)
        res[who] = block
    res["breakdowns"] = {}
    for key, title, fn in BREAKDOWNS[task]:
        table = breakdown(task, rows, outcomes, fn)
        if table:
            res["breakdowns"][key] = {"title": title, "table": table}
    res["_curves"], res["_matrices"], res["_rows"] = curves, matrices, rows
    return res


# -- report ----------------------------------------------------------------------------------------

def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _ci(v: Any, ci: list[float] | None) -> str:
    """A figure with its 95 % bootstrap interval: 0.947 [0.90, 0.98]."""
    return _f(v) if v is None or not ci else f"{_f(v)} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _sens(d: dict[str, Any] | None) -> str:
    if not d or d.get("sensitivity") is None:
        return "–"
    return f"{d['sensitivity']:.3f}"


def _at_thr(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    return f"{_f(d.get('sensitivity'))} / {_f(d.get('specificity'))} @ {d['threshold']:.2f}"


class CpuSteal:
    """Share of the machine's CPU time taken by the hypervisor for other guests (``steal`` in ``/proc/stat``)
    between construction and :meth:`stop`: on a shared VM it runs to tens of percent and moves every timing
    with it, so a benchmark reports it beside its figures. None where ``/proc/stat`` is missing."""

    def __init__(self) -> None:
        self._t0 = self._read()

    @staticmethod
    def parse(stat: str) -> list[int] | None:
        """user, nice, system, idle, iowait, irq, softirq, steal (jiffies) from ``/proc/stat``'s first line."""
        head = stat.split("\n", 1)[0].split()
        return [int(x) for x in head[1:9]] if len(head) >= 9 and head[0] == "cpu" else None

    @classmethod
    def _read(cls) -> list[int] | None:
        try:
            return cls.parse(Path("/proc/stat").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> float | None:
        """Percent of all CPU time (user .. steal) that was stolen since construction."""
        t1 = self._read()
        if self._t0 is None or t1 is None:
            return None
        d = [b - a for a, b in zip(self._t0, t1)]
        return round(100.0 * d[7] / sum(d), 1) if sum(d) > 0 else 0.0


def machine_info() -> dict[str, Any]:
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": load}


def write_report(results: list[dict[str, Any]], out: Path, command: str, extra: dict[str, Any]) -> Path:
    """``report.md``, ``report.html``, ``report.json`` and the PNGs under ``out``."""
    from scanqc.evaluation import plots

    out.mkdir(parents=True, exist_ok=True)
    md: list[str] = ["# scanqc model quality report", "",
                     f"- command: `{command}`",
                     f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
                     f"- machine: {extra['machine']['cpu']}, {extra['machine']['cores']} cores, "
                     f"load average at start {extra['machine']['loadavg_at_start']}", ""]
    md += ["## Summary", "",
           "| task | n | model | primary metric | CNN | baseline | key quantity | AUC CNN / baseline | "
           "sens @ 95 % spec CNN / baseline | ECE CNN / baseline |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    key_q = {"motion": "any motion", "contrast_phase": "suboptimal enhancement", "coverage": "missing superior end"}
    for r in results:
        pm = r["primary_metric"]
        c, b = r.get("CNN", {}), r.get("baseline", {})
        q = key_q[r["task"]]
        cq, bq = c.get("quantities", {}).get(q, {}), b.get("quantities", {}).get(q, {})
        md.append(f"| {r['task']} | {r['n']} | {(r.get('model') or {}).get('version', '–')} | {pm} | "
                  f"{_f(c.get('task_metrics', {}).get(pm))} | {_f(b.get('task_metrics', {}).get(pm))} | {q} | "
                  f"{_f(cq.get('auc'))} / {_f(bq.get('auc'))} | {_sens(cq.get('sens_at_spec95'))} / "
                  f"{_sens(bq.get('sens_at_spec95'))} | {_f(cq.get('ece'))} / {_f(bq.get('ece'))} |")
    md += ["", "Sensitivity at a fixed specificity picks the threshold on the test cases themselves "
               "(threshold-free, like the AUC); *at shipped threshold* uses the cut-off stored in the model's "
               "metadata (chosen on validation) or 0.5 for the baseline. ECE: 10 equal-width bins.", ""]
    for r in results:
        task = r["task"]
        md += [f"## {task}", "",
               f"- cases: {r['n']} (split `{r['split']}`) from "
               + ", ".join(f"`{m['path']}` ({m['rows']} rows, sha256 {m['sha256'][:12]}…)" for m in r["manifests"]),
               f"- CNN: {task} {(r.get('model') or {}).get('version', 'none installed')} "
               f"({(r.get('model') or {}).get('source', '')}); baseline: {r.get('baseline_source', '–')}",
               f"- seconds (read + preprocess + run): {r.get('seconds')}",
               *(f"- classical peer, alone: QI2-style background index (Mortamet et al. 2009), any-motion ROC AUC "
                 f"{_ci(q['auc_any'], q.get('auc_any_ci95'))}" for q in [(r.get("classical") or {}).get("qi2")] if q),
               *(f"- **warning**: {w}" for w in r.get("warnings", [])), ""]
        who = [w for w in ("CNN", "baseline") if w in r]
        if not who:
            continue
        md += ["| quantity | n (pos) | " + " | ".join(f"{w} AUC | {w} sens@95%spec | {w} sens@90%spec | "
                                                    f"{w} sens / spec @ shipped thr | {w} ECE" for w in who) + " |",
               "|---|---|" + "---|" * (5 * len(who))]
        extra_lines: list[str] = []
        for qname, qm in r[who[0]]["quantities"].items():
            if qname == "predicted phase correct":  # calibration only (top-label confidence)
                for w in who:
                    x = r[w]["quantities"][qname]
                    md_cal = f"top-label ECE ({w}): {_f(x.get('ece'))}"
                    extra_lines.append(md_cal)
                continue
            cells = []
            for w in who:
                x = r[w]["quantities"].get(qname, {})
                cells += [_ci(x.get("auc"), x.get("auc_ci95")), _sens(x.get("sens_at_spec95")),
                          _sens(x.get("sens_at_spec90")),
                          _at_thr(x.get("at_shipped_threshold")), _f(x.get("ece"))]
            md.append(f"| {qname} | {qm['n']} ({qm['n_positive']}) | " + " | ".join(cells) + " |")
        if extra_lines:
            md += ["", "Calibration of the reported phase's probability: " + "; ".join(extra_lines) + "."]
        md += ["", "| metric | " + " | ".join(who) + " |", "|---|" + "---|" * len(who)]
        tm_keys = [k for k, v in r[who[0]]["task_metrics"].items() if isinstance(v, float)]
        for k in tm_keys:
            md.append(f"| {k} | " + " | ".join(_f(r[w]["task_metrics"].get(k)) for w in who) + " |")
        md.append("| confusion-matrix accuracy | " + " | ".join(_ci(r[w]["accuracy"], r[w].get("accuracy_ci95"))
                                                              for w in who) + " |")
        md.append("")
        pics = [plots.confusion_figure(task, r["_matrices"], out / f"confusion_{task}.png"),
                plots.roc_figure(task, r["_curves"], out / f"roc_{task}.png"),
                plots.reliability_figure(task, r["_curves"], out / f"reliability_{task}.png")]
        for p in pics:
            md += [f"![{p.stem}]({p.name})", ""]
        for key, bd in r["breakdowns"].items():
            md += [f"### {task} {bd['title']}", "", "| group | n | " + " | ".join(who) + " |",
                   "|---|---|" + "---|" * len(who)]
            for row in bd["table"]:
                md.append(f"| {row['group']} | {row['n']} | " + " | ".join(
                    _f(row.get(w)) + (f" ({_f(row[w + '_auc_vs_clean'])})" if row.get(f"{w}_auc_vs_clean") is not None
                                      else "") for w in who) + " |")
            p = plots.breakdown_figure(task, bd["title"], bd["table"], out / f"breakdown_{task}_{key}.png")
            md += ["", f"![{p.stem}]({p.name})", ""]
    text = "\n".join(md) + "\n"
    (out / "report.md").write_text(text)
    _write_html(text, out / "report.html")
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (out / "report.json").write_text(json.dumps({"command": command, **extra, "tasks": clean}, indent=2,
                                                default=str) + "\n")
    return out / "report.md"


def _write_html(md_text: str, path: Path) -> None:
    """A dependency-free HTML rendering of the report (tables, headings, images, lists)."""
    import html
    import re

    out = ["<!doctype html><meta charset='utf-8'><title>scanqc model quality</title>",
           "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto}table{border-collapse:collapse;"
           "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}img{max-width:100%}</style>"]
    in_table = False
    for line in md_text.splitlines():
        esc = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(line))
        if line.startswith("|"):
            cells = [c.strip() for c in esc.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        m = re.match(r"!\[(.*)\]\((.*)\)", line)
        if m:
            out.append(f"<p><img alt='{html.escape(m.group(1))}' src='{html.escape(m.group(2))}'></p>")
        elif line.startswith("#"):
            n = len(line) - len(line.lstrip("#"))
            out.append(f"<h{n}>{esc[n:].strip()}</h{n}>")
        elif line.startswith("- "):
            out.append(f"<li>{esc[2:]}</li>")
        elif line.strip():
            out.append(f"<p>{esc}</p>")
    if in_table:
        out.append("</table>")
    path.write_text("\n".join(out) + "\n")


def run_evaluation(manifests: list[Path], out: Path, models_dir: Path | None = None, split: str = "test",
                   baselines: Path | None = None, baseline_train: list[Path] | None = None,
                   tasks: list[str] | None = None, limit: int | None = None, command: str = "",
                   progress: Callable | None = None) -> dict[str, Any]:
    """Evaluate every task present in ``manifests``; write the report; return the JSON-able figures."""
    present: list[str] = []
    for m in manifests:
        for r in read_manifest(m, None, split):
            if r.get("task") in TASKS and r["task"] not in present:
                present.append(r["task"])
    wanted = [t for t in TASKS if t in present and (not tasks or t in tasks)]
    if not wanted:
        raise ScanQCError(ErrorCode.USAGE, f"no rows of tasks {', '.join(tasks or TASKS)} in split {split!r} of "
                                           f"{', '.join(str(m) for m in manifests)} (--split all uses every row)")
    results = []
    for task in wanted:
        model = resolve_model(task, models_dir)
        base, source = load_baseline(task, baselines, list(baseline_train or []), progress=progress)
        if model is None and base is None:
            _log(f"[{task}] skipped: no model installed and no baseline")
            continue
        r = evaluate_task(task, manifests, split, model, base, limit, progress)
        r["baseline_source"] = source
        results.append(r)
    extra = {"machine": machine_info(), "models_dir": str(models_dir) if models_dir else "promoted (registry)"}
    report = write_report(results, out, command, extra)
    return {"report": str(report), "tasks": [{k: v for k, v in r.items() if not k.startswith("_")}
                                             for r in results]}

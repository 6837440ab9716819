"""Scanner qualification: phantom series are recognised, measured and judged; patient series learn
whether their scanner is qualified.

- :func:`phantom_route` decides whether a series is a phantom (the guideline's ``phantom:`` section:
  a station/AE list, a qualification-only study, or a regex on SeriesDescription, ProtocolName,
  PatientName, PatientID and StudyDescription; header conventions such as "PHANTOM" by default). The
  pipeline then runs only :data:`PHANTOM_CHECK_NAMES` on it: no motion, coverage or contrast verdict on
  a water phantom, and the verdict's ``kind`` is ``"phantom"`` so it never counts in patient QC figures.
- :class:`PhantomCheck` runs the measurements of :mod:`scanqc.measure` for the phantom's kind, compares each
  with its criterion (:mod:`scanqc.measure.criteria`, overridden by the guideline's tolerances), and, when
  the caller supplies the scanner's history (``CheckContext.scanners``), applies the drift rules of
  :class:`scanqc.guideline.DriftRules`: one result outside tolerance fails; a run of results trending or
  near a limit warns.
- :class:`ScannerQualificationCheck` gives patient series from a scanner whose qualification expired,
  failed or never happened a warning (only where the study requires qualification and a registry exists,
  i.e. in the service).

The scanner is identified by station (calling AE title), Manufacturer, ManufacturerModelName,
DeviceSerialNumber and SoftwareVersions: a software upgrade makes a new record that must qualify again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import re
from typing import Any, Protocol

from scanqc.checks.base import CheckContext
from scanqc.errors import ErrorCode, ScanQCError
from scanqc.guideline import DEFAULT_PHANTOM_MATCH, DriftRules, Guideline, PhantomSpec
from scanqc.measure import Measurement, ct, mr
from scanqc.measure.criteria import Criterion, default_criteria
from scanqc.series import Series
from scanqc.verdict import CheckResult

PHANTOM_CHECK_NAMES = frozenset({"integrity", "phantom"})  # the only checks a phantom series gets
_ROUTE_KEYWORDS = ("SeriesDescription", "ProtocolName", "PatientName", "PatientID", "StudyDescription")
_DEFAULT_SPEC = PhantomSpec(match=DEFAULT_PHANTOM_MATCH)
KIND_LABELS = {"ct_water": "CT water phantom", "ct_acr": "ACR CT phantom", "mr_uniform": "MR uniformity phantom",
               "mr_acr": "ACR MR phantom"}
_ACR = re.compile(r"(?i)\bACR\b")


def phantom_spec(guideline: Guideline | None) -> PhantomSpec:
    return guideline.phantom if guideline is not None and guideline.phantom is not None else _DEFAULT_SPEC


def phantom_route(series: Series, guideline: Guideline | None, station: str | None = None) -> str | None:
    """Why this series is a phantom (``"study"``, ``"station QA_CT1"``, ``"SeriesDescription"``...) or None."""
    spec = phantom_spec(guideline)
    if spec.all_series:
        return "study"
    if station and station in spec.stations:
        return f"station {station}"
    rx = re.compile(spec.match)
    for kw in _ROUTE_KEYWORDS:
        v = series.get(kw)
        if v not in (None, "") and rx.search(str(v)):
            return kw
    return None


def phantom_kind(series: Series) -> str:
    """``ct_acr`` / ``ct_water`` / ``mr_acr`` / ``mr_uniform``: ACR when the description or protocol says so."""
    text = " ".join(str(series.get(k) or "") for k in ("SeriesDescription", "ProtocolName"))
    acr = bool(_ACR.search(text))
    modality = (series.modality or "").upper()
    if modality == "CT":
        return "ct_acr" if acr else "ct_water"
    if modality == "MR":
        return "mr_acr" if acr else "mr_uniform"
    raise ScanQCError(ErrorCode.UNSUPPORTED_IMAGE, f"phantom analysis supports CT and MR, not {modality or 'unknown'}")


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def scanner_identity(series: Series, station: str | None) -> dict[str, str]:
    """The per-scanner record's key fields (station/AE, manufacturer, model, serial, software)."""
    return {"station": station or _text(series.get("StationName")), "manufacturer": _text(series.get("Manufacturer")),
            "model": _text(series.get("ManufacturerModelName")), "serial": _text(series.get("DeviceSerialNumber")),
            "software": _text(series.get("SoftwareVersions"))}


def scanner_key(identity: dict[str, Any]) -> str:
    """Stable key of a scanner record: a hash of the five identity fields (what the store indexes)."""
    fields = {k: str(identity.get(k) or "") for k in ("station", "manufacturer", "model", "serial", "software")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def scanner_label(s: dict[str, Any]) -> str:
    parts = [s.get("station") or "?", " ".join(x for x in (s.get("manufacturer"), s.get("model")) if x)]
    if s.get("serial"):
        parts.append(f"SN {s['serial']}")
    if s.get("software"):
        parts.append(f"software {s['software']}")
    return ", ".join(p for p in parts if p)


def acquired_at(series: Series) -> dt.datetime | None:
    """Acquisition date/time from the header (naive, scanner time), for ordering a scanner's history."""
    raw = _text(series.get("AcquisitionDateTime"))
    if not raw:
        for d, t in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")):
            if series.get(d):
                raw = _text(series.get(d)) + _text(series.get(t)).split(".")[0]
                break
    digits = re.sub(r"[^0-9]", "", raw.split(".")[0].split("+")[0])
    try:
        return dt.datetime.strptime(digits[:14].ljust(14, "0"), "%Y%m%d%H%M%S") if len(digits) >= 8 else None
    except ValueError:
        return None


class ScannerRegistry(Protocol):
    """What the service's store offers the checks (``serving.store.ScannerRegistry``)."""

    def phantom_history(self, scanner: dict[str, str], *, before: dt.datetime | None,
                        exclude_series: str | None) -> list[dict[str, Any]]:
        """Earlier phantom results of this scanner, oldest first: ``{"acquired_at", "values": {name: value}}``."""
        ...

    def qualification(self, scanner: dict[str, str]) -> dict[str, Any] | None:
        """The scanner's latest phantom: ``{"status", "acquired_at", "valid_until", "drift"}``; None if never."""
        ...


def criteria_for(kind: str, spec: PhantomSpec, field_strength_t: float | None) -> dict[str, Criterion]:
    out = default_criteria(kind, field_strength_t)
    for name, (lo, hi) in spec.tolerances.items():
        if name in out:
            out[name] = out[name].with_bounds(lo, hi)
    return out


def measure(series: Series, kind: str) -> list[Measurement]:
    if series.volume is None:
        raise ScanQCError(ErrorCode.NO_PIXEL_DATA, "phantom series has no volume")
    fn = {"ct_water": ct.measure_water, "ct_acr": ct.measure_acr_ct, "mr_uniform": mr.measure_uniform,
          "mr_acr": mr.measure_acr_mr}[kind]
    return fn(series.volume)


def evaluate_drift(values: list[float], crit: Criterion, rules: DriftRules,
                   nominal: float | None = None) -> list[dict[str, Any]]:
    """Drift findings over a measurement's history (oldest first, the current result last).

    Two-sided criteria trend in either direction; one-sided ones only towards their limit.
    """
    lo, hi = crit.bounds(nominal)
    out: list[dict[str, Any]] = []
    n = rules.trend_points
    if len(values) >= n:
        run = values[-n:]
        steps = [b - a for a, b in itertools.pairwise(run)]
        up, down = all(s > 0 for s in steps), all(s < 0 for s in steps)
        if (up and hi is not None) or (down and lo is not None):
            out.append({"rule": "trend", "points": n, "direction": "rising" if up else "falling",
                        "from": round(run[0], 3), "to": round(run[-1], 3)})
    if lo is not None and hi is not None and len(values) >= rules.warn_points:
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        wl_hi, wl_lo = centre + rules.warn_fraction * half, centre - rules.warn_fraction * half
        run = values[-rules.warn_points:]
        for side, beyond in (("high", all(v > wl_hi for v in run)), ("low", all(v < wl_lo for v in run))):
            if beyond:
                out.append({"rule": "warning_limit", "points": rules.warn_points, "side": side,
                            "limit": round(wl_hi if side == "high" else wl_lo, 3),
                            "values": [round(v, 3) for v in run]})
    return out


def _fmt(v: float, unit: str) -> str:
    u = {"[hnsf'U]": " HU", "1": "", "%": " %", "mm": " mm"}.get(unit, f" {unit}")
    return f"{v:.1f}{u}" if abs(v) >= 10 or unit != "1" else f"{v:.2f}{u}"


class PhantomCheck:
    """Measure a phantom series and judge each measurement against its tolerance (and drift rules)."""

    name = "phantom"

    def applies(self, series: Series, ctx: CheckContext) -> bool:
        return ctx.phantom is not None

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        spec = phantom_spec(ctx.guideline)
        kind = phantom_kind(series)
        field = series.get("MagneticFieldStrength")
        try:
            field_t = float(field) if field not in (None, "") else None
        except (TypeError, ValueError):
            field_t = None
        criteria = criteria_for(kind, spec, field_t)
        try:
            nominal = float(series.get("SliceThickness"))
        except (TypeError, ValueError):
            nominal = series.volume.spacing[0] if series.volume is not None else None
        identity = scanner_identity(series, ctx.station)
        when = acquired_at(series)
        extra: dict[str, Any] = {"phantom": {"kind": kind, "recognised_by": ctx.phantom}, "scanner": identity,
                                 "acquired_at": when.isoformat() if when else None}
        try:
            ms = measure(series, kind)
        except ScanQCError as exc:
            return CheckResult("fail", f"{KIND_LABELS[kind]} could not be analysed: {exc.message}", None,
                               "Repeat the phantom scan with the phantom centred and the full phantom in the field "
                               "of view, using the qualification protocol", {**extra, "measurements": []})
        history = []
        if ctx.scanners is not None:
            history = ctx.scanners.phantom_history(identity, before=when, exclude_series=series.series_uid)
        rows, failed, drift = [], [], []
        for m in ms:
            c = criteria.get(m.name)
            row = {**m.to_dict(), "label": c.label if c else m.name}
            if c is not None:
                nom = nominal if c.relative else None
                lo, hi = c.bounds(nom)
                ok = c.passes(m.value, nom)
                row.update(status="pass" if ok else "fail", tolerance=[lo, hi], tolerance_text=c.describe(nom),
                           source=c.source)
                if not ok:
                    failed.append((c, m, nom))
                past = [h["values"][m.name] for h in history if m.name in h.get("values", {})]
                for f in evaluate_drift([*past, m.value], c, spec.drift, nom) if ok else []:
                    drift.append({"measurement": m.name, "label": c.label, **f, "tolerance_text": c.describe(nom)})
            rows.append(row)
        extra.update(measurements=rows, drift=drift, history_points=len(history),
                     interval_days=spec.interval_days)
        label = KIND_LABELS[kind]
        if failed:
            what = "; ".join(f"{c.label} {_fmt(m.value, m.unit)}, tolerance {c.describe(nom)}" for c, m, nom in failed)
            return CheckResult("fail", f"{label}: {len(failed)} of {len(rows)} measurement(s) out of tolerance: {what}",
                               None, f"Call service: {what}. Do not scan trial patients on this scanner until a "
                                     "repeat phantom passes", extra)
        valid_until = (when or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)) + dt.timedelta(
            days=spec.interval_days)
        extra["valid_until"] = valid_until.isoformat()
        if drift:
            what = "; ".join(_drift_text(d) for d in drift)
            return CheckResult("warn", f"{label}: all {len(rows)} measurements within tolerance, but drifting: {what}",
                               None, f"Schedule service before the next qualification: {what}", extra)
        return CheckResult("pass", f"{label}: all {len(rows)} measurements within tolerance; qualified until "
                                   f"{valid_until.date().isoformat()}", extra=extra)


def _naive(v: Any) -> dt.datetime | None:
    if not v:
        return None
    try:
        t = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=None)


def _drift_text(d: dict[str, Any]) -> str:
    if d["rule"] == "trend":
        return (f"{d['label']} {d['direction']} over {d['points']} phantoms in a row ({d['from']:g} -> {d['to']:g}, "
                f"tolerance {d['tolerance_text']})")
    return (f"{d['label']} beyond the warning limit {d['limit']:g} on {d['points']} phantoms in a row "
            f"(tolerance {d['tolerance_text']})")


class ScannerQualificationCheck:
    """Patient series: is the scanner that acquired them qualified (a passing phantom within the interval)?"""

    name = "scanner_qualification"

    def applies(self, series: Series, ctx: CheckContext) -> bool:
        g = ctx.guideline
        return (ctx.scanners is not None and ctx.phantom is None and g is not None and g.phantom is not None
                and g.phantom.required)

    def __call__(self, series: Series, ctx: CheckContext) -> CheckResult:
        spec = phantom_spec(ctx.guideline)
        identity = scanner_identity(series, ctx.station)
        name = scanner_label(identity)
        q = ctx.scanners.qualification(identity) if ctx.scanners is not None else None
        extra: dict[str, Any] = {"scanner": identity, "qualification": q}
        send = (f"Scan the qualification phantom on this scanner and send it (required every {spec.interval_days} "
                "days); these images are accepted with a warning")
        if q is None:
            return CheckResult("warn", f"scanner {name} has no qualification phantom on record", None, send, extra)
        if q.get("status") == "fail":
            return CheckResult("warn", f"scanner {name}: last phantom ({str(q.get('acquired_at'))[:10]}) failed", None,
                               "Call service and repeat the qualification phantom; these images are accepted with "
                               "a warning", extra)
        when = acquired_at(series) or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        # This study's interval decides, whatever the study the phantom was sent under said.
        last = _naive(q.get("acquired_at"))
        until = (last + dt.timedelta(days=spec.interval_days)).isoformat() if last else None
        extra["valid_until"] = until
        if not until or when > dt.datetime.fromisoformat(until):
            return CheckResult("warn", f"scanner {name}: qualification expired {str(until)[:10]} (last phantom "
                                       f"{str(q.get('acquired_at'))[:10]})", None, send, extra)
        note = "; drift warning on record" if q.get("status") == "warn" else ""
        return CheckResult("pass", f"scanner {name} qualified until {str(until)[:10]}{note}", extra=extra)

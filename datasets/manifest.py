"""Dataset manifest: one CSV row per case, shared by generated and real (site-labeled) data.

Spec: docs/manifest.md. ``path`` is relative to the manifest's folder (absolute paths are allowed
for real data kept elsewhere) and points at a NIfTI file or a DICOM series folder.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scanqc.errors import ErrorCode, ScanQCError

COLUMNS: tuple[str, ...] = ("case_id", "path", "modality", "task", "label", "severity", "phase", "enhancement",
                            "missing", "body_region", "split", "provenance")
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "motion": ("none", "mild", "severe"),
    "contrast_phase": ("non_contrast", "arterial", "portal_venous", "delayed"),
    "coverage": ("full", "superior", "inferior"),
}
#: Labels a manifest may carry beyond the ones the generators draw: a real scan cut at both ends
#: (``missing`` = ``superior;inferior``; the coverage confusion matrix's "both" row).
EXTRA_LABELS: dict[str, tuple[str, ...]] = {"coverage": ("both",)}
MODALITIES = ("CT", "MR")
BODY_REGIONS = ("brain", "abdomen")
SPLITS = ("train", "val", "test")
ENHANCEMENTS = ("optimal", "suboptimal")
ENDS = ("superior", "inferior")


@dataclass
class ManifestRow:
    case_id: str
    path: str
    modality: str
    task: str
    label: str
    severity: float | None = None
    phase: str = ""
    enhancement: str = ""
    missing: list[str] = field(default_factory=list)  # ends cut: 'superior', 'inferior'
    body_region: str = ""
    split: str = "train"
    provenance: dict[str, Any] | str = "real"

    def resolve(self, manifest_dir: Path) -> Path:
        """Absolute path of the case (``path`` is relative to the manifest's folder)."""
        p = Path(self.path)
        return p if p.is_absolute() else Path(manifest_dir) / p

    def validate(self, where: str = "") -> ManifestRow:
        at = f"{where}: " if where else ""

        def bad(column: str, value: Any, expected: Iterable[str] | str) -> ScanQCError:
            exp = expected if isinstance(expected, str) else f"one of {list(expected)}"
            return ScanQCError(ErrorCode.USAGE, f"{at}column {column!r} is {value!r}; expected {exp}")

        if not self.case_id:
            raise bad("case_id", self.case_id, "a non-empty id")
        if not self.path:
            raise bad("path", self.path, "a NIfTI file or DICOM folder")
        if self.modality not in MODALITIES:
            raise bad("modality", self.modality, MODALITIES)
        if self.task not in TASK_LABELS:
            raise bad("task", self.task, TASK_LABELS)
        if self.label not in TASK_LABELS[self.task] + EXTRA_LABELS.get(self.task, ()):
            raise bad("label", self.label, TASK_LABELS[self.task] + EXTRA_LABELS.get(self.task, ()))
        if self.severity is not None and not (math.isfinite(self.severity) and 0 <= self.severity <= 1):
            raise bad("severity", self.severity, "a number in [0, 1] or empty")
        if self.phase and self.phase not in TASK_LABELS["contrast_phase"]:
            raise bad("phase", self.phase, TASK_LABELS["contrast_phase"])
        if self.enhancement and self.enhancement not in ENHANCEMENTS:
            raise bad("enhancement", self.enhancement, ENHANCEMENTS)
        for end in self.missing or []:
            if end not in ENDS:
                raise bad("missing", ";".join(self.missing or []), "ends from 'superior;inferior' or empty")
        if self.task == "coverage":
            expect = [] if self.label == "full" else list(ENDS) if self.label == "both" else [self.label]
            if sorted(self.missing or [], key=ENDS.index) != expect:
                want = ";".join(expect) or "empty"
                raise bad("missing", ";".join(self.missing or []), f"{want} for label {self.label!r}")
        if self.task == "contrast_phase" and self.phase and self.phase != self.label:
            raise bad("phase", self.phase, f"{self.label!r} (the label) or empty")
        if self.body_region and self.body_region not in BODY_REGIONS:
            raise bad("body_region", self.body_region, BODY_REGIONS)
        if self.split not in SPLITS:
            raise bad("split", self.split, SPLITS)
        if not (self.provenance == "real" or isinstance(self.provenance, dict)):
            raise bad("provenance", self.provenance, "'real' or a JSON object of generator parameters")
        return self

    def to_csv(self) -> dict[str, str]:
        d = asdict(self)
        d["severity"] = "" if self.severity is None else f"{self.severity:.4g}"
        d["missing"] = ";".join(self.missing or [])
        d["provenance"] = self.provenance if isinstance(self.provenance, str) else \
            json.dumps(self.provenance, sort_keys=True, separators=(",", ":"))
        return d

    @classmethod
    def from_csv(cls, rec: dict[str, str], where: str = "") -> ManifestRow:
        at = f"{where}: " if where else ""
        sev_text = (rec.get("severity") or "").strip()
        try:
            severity = float(sev_text) if sev_text else None
        except ValueError:
            raise ScanQCError(ErrorCode.USAGE,
                              f"{at}column 'severity' is {sev_text!r}; expected a number or empty") from None
        prov_text = (rec.get("provenance") or "").strip() or "real"
        if prov_text == "real":
            provenance: dict[str, Any] | str = "real"
        else:
            try:
                provenance = json.loads(prov_text)
            except ValueError:
                raise ScanQCError(ErrorCode.USAGE, f"{at}column 'provenance' is {prov_text[:80]!r}; expected "
                                                   "'real' or a JSON object") from None
            if not isinstance(provenance, dict):
                raise ScanQCError(ErrorCode.USAGE, f"{at}column 'provenance' is {prov_text[:80]!r}; expected "
                                                   "'real' or a JSON object")
        missing = [m.strip() for m in (rec.get("missing") or "").split(";") if m.strip()]
        row = cls(case_id=(rec.get("case_id") or "").strip(), path=(rec.get("path") or "").strip(),
                  modality=(rec.get("modality") or "").strip().upper(), task=(rec.get("task") or "").strip(),
                  label=(rec.get("label") or "").strip(), severity=severity, phase=(rec.get("phase") or "").strip(),
                  enhancement=(rec.get("enhancement") or "").strip(), missing=missing,
                  body_region=(rec.get("body_region") or "").strip(), split=(rec.get("split") or "").strip(),
                  provenance=provenance)
        return row.validate(where)


def write_manifest(rows: Iterable[ManifestRow], path: Path | str) -> Path:
    """Validate and write ``rows`` as CSV with :data:`COLUMNS` in order; duplicate ids are refused."""
    path = Path(path)
    rows = list(rows)
    seen: set[str] = set()
    for i, r in enumerate(rows):
        r.validate(f"row {i + 1}")
        if r.case_id in seen:
            raise ScanQCError(ErrorCode.USAGE, f"row {i + 1}: duplicate case_id {r.case_id!r}")
        seen.add(r.case_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow(r.to_csv())
    tmp.replace(path)
    return path


def read_manifest(path: Path | str) -> list[ManifestRow]:
    """Read and validate a manifest; errors are :class:`ScanQCError` (USAGE / NOT_FOUND) naming the
    row, column and bad value."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise ScanQCError(ErrorCode.NOT_FOUND, f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ScanQCError(ErrorCode.USAGE, f"{path}: missing column(s) {missing}; header is {header}")
        rows = []
        seen: set[str] = set()
        for i, rec in enumerate(reader, start=2):
            rec = {(k or "").strip(): v for k, v in rec.items()}
            row = ManifestRow.from_csv(rec, f"{path.name} line {i}")
            if row.case_id in seen:
                raise ScanQCError(ErrorCode.USAGE, f"{path.name} line {i}: duplicate case_id {row.case_id!r}")
            seen.add(row.case_id)
            rows.append(row)
    return rows


__all__ = ["COLUMNS", "EXTRA_LABELS", "TASK_LABELS", "ManifestRow", "read_manifest", "write_manifest"]

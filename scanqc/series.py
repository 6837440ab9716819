"""Series: files -> series grouped by SeriesInstanceUID -> one canonical :class:`Volume` each.

Slices are ordered by their position along the slice normal (never by InstanceNumber), rescaled
to modality units, and checked for geometry problems a reader must not hide: missing slices,
duplicate positions, mixed orientations or sizes, irregular spacing, gantry tilt. The assembly itself
(instance by instance) is :class:`scanqc.ingest.assembler.SeriesAssembler`; :func:`load_series` feeds it files.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from scanqc.cancel import checkpoint
from scanqc.errors import ErrorCode, ScanQCError, exc_summary
from scanqc.io.dicom import cached_value, non_image_reason, read_file
from scanqc.io.nifti import read_nifti
from scanqc.io.sources import InputFile, expand_input, is_nifti_name
from scanqc.limits import DEFAULT_LIMITS, Limits
from scanqc.volume import Volume


@dataclass
class IntegrityIssue:
    kind: Literal["gap", "duplicate", "mixed_orientation", "mixed_size", "irregular_spacing",
                  "gantry_tilt", "undecodable", "no_geometry", "multi_volume"]
    severity: Literal["info", "warn", "fail"]
    message: str
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "message": self.message, "count": self.count}


@dataclass
class Series:
    """One series from one input: the volume plus the headers checks need."""

    input: str
    series_uid: str | None
    modality: str | None
    volume: Volume | None
    source: Literal["dicom", "nifti"]
    header: Dataset | None = None  # representative instance (first slice), pixel data dropped
    headers: list[Dataset] = field(default_factory=list)  # every instance used, pixel data dropped
    n_instances: int = 0
    integrity: list[IntegrityIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: ScanQCError | None = None
    files: list[Path] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    sidecar: dict[str, Any] = field(default_factory=dict)  # NIfTI: BIDS-style JSON next to the file
    scratch: dict[Any, Any] = field(default_factory=dict)  # made while instances arrived; seeds the checks' cache

    def get(self, keyword: str) -> Any:
        from scanqc.io.dicom import header_value

        v = header_value(self.header, keyword)
        if v is None and keyword in self.sidecar:
            return self.sidecar[keyword]
        return v

    @property
    def study_uid(self) -> str | None:
        v = self.get("StudyInstanceUID")
        return str(v) if v else None

    @property
    def description(self) -> str | None:
        v = self.get("SeriesDescription")
        return str(v) if v else None

    @property
    def series_number(self) -> int | None:
        v = self.get("SeriesNumber")
        try:
            return int(v) if v not in (None, "") else None
        except (TypeError, ValueError):
            return None


def _nifti_series(f: InputFile, input_name: str, limits: Limits) -> Series:
    vol, summary = read_nifti(f.path, f.name, limits)
    sidecar: dict[str, Any] = {}
    base = str(f.path)
    for suffix in (".nii.gz", ".nii"):
        if base.lower().endswith(suffix):
            side = Path(base[: -len(suffix)] + ".json")
            if side.is_file() and side.stat().st_size < 1_000_000:
                try:
                    sidecar = json.loads(side.read_text())
                except (ValueError, OSError):
                    sidecar = {}
            break
    notes = list(summary["notes"])
    modality = sidecar.get("Modality")
    if not modality:
        # NIfTI carries no modality; CT is recognisable by air at about -1000 HU.
        lo = float(np.percentile(vol.array, 1)) if vol.array.size else 0.0
        modality = "CT" if lo < -500 else "MR"
        notes.append(f"modality inferred as {modality} from intensities (NIfTI has no modality tag)")
    vol.modality = modality
    return Series(input=input_name, series_uid=sidecar.get("SeriesInstanceUID"), modality=modality,
                  volume=vol, source="nifti", n_instances=1, notes=notes, files=[f.path], sidecar=sidecar)


def load_series(path: str | Path, limits: Limits = DEFAULT_LIMITS, modality_hint: str | None = None,
                inplane: dict[str, tuple[Any, ...]] | None = None) -> tuple[list[Series], list[str]]:
    """Read one user-given path into its series; returns (series, input-level notes).

    ``inplane``: per modality, the in-plane passes to make of each slice as it is read
    (:func:`scanqc.checks.ml.inplane_targets`, as the DICOM receiver does): made while the slice is still in the
    CPU cache, about half what the same pass costs over the assembled volume. They seed the checks' cache.

    Raises :class:`ScanQCError` when the input as a whole yields nothing to check.
    """
    from scanqc.ingest.assembler import MALFORMED_HEADER, SeriesAssembler

    input_name = str(path)
    notes: list[str] = []
    with expand_input(path, limits) as files:
        nifti: list[Series] = []
        # One assembler per SeriesInstanceUID, fed file by file: the same code the DICOM receiver runs
        # per C-STORE (scanqc.ingest), so a folder and a push give the same series.
        images: dict[str, SeriesAssembler] = {}
        skipped: dict[str, int] = defaultdict(int)
        errors: list[ScanQCError] = []
        parse_ms = 0.0
        for f in files:
            checkpoint()  # a cancelled check (its request timed out) stops between files
            if is_nifti_name(f.name):
                try:
                    nifti.append(_nifti_series(f, input_name, limits))
                except ScanQCError as exc:
                    errors.append(exc)
                continue
            t1 = time.perf_counter()
            try:
                ds = read_file(f.path, f.name)
            except ScanQCError as exc:
                errors.append(exc)
                continue
            try:
                reason = non_image_reason(ds)
                key = str(cached_value(ds, "SeriesInstanceUID", "")) or f"__file__{f.name}"
            except MALFORMED_HEADER as exc:
                errors.append(ScanQCError(ErrorCode.UNREADABLE, f"{f.name}: malformed header "
                                                                f"({exc_summary(exc)})"))
                continue
            finally:
                parse_ms += (time.perf_counter() - t1) * 1000
            if reason:
                skipped[reason] += 1
                continue
            asm = images.get(key)
            if asm is None:
                asm = images[key] = SeriesAssembler(input_name, limits, expected_frames=len(files),
                                                     inplane=inplane)
            asm.add(ds, f)
        series: list[Series] = list(nifti)
        total = max(sum(a.n_instances for a in images.values()), 1)
        for asm in images.values():
            t1 = time.perf_counter()
            s = asm.finish()
            s.timings_ms["read"] = parse_ms * asm.n_instances / total
            s.timings_ms.pop("decode_on_arrival", None)
            s.timings_ms.pop("assemble", None)
            s.timings_ms["assemble_decode"] = asm.decode_ms + (time.perf_counter() - t1) * 1000
            series.append(s)
    for reason, n in sorted(skipped.items()):
        notes.append(f"skipped {n} {reason}{'s' if n > 1 else ''}: not an image series")
    if errors:
        by_code: dict[str, int] = defaultdict(int)
        for e in errors:
            by_code[e.code.value] += 1
        if series:
            notes.append("ignored unreadable files: " + ", ".join(f"{n} {c}" for c, n in sorted(by_code.items())))
    if not series:
        if errors and len(files) == 1:
            raise errors[0]
        if errors and not skipped:
            worst = errors[0]
            raise ScanQCError(worst.code, f"{input_name}: no readable image among {len(files)} file(s); "
                                          f"first problem: {worst.message}")
        what = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())) or "nothing readable"
        raise ScanQCError(ErrorCode.NO_IMAGE_SERIES, f"{input_name}: no image series to check ({what})")
    if modality_hint:
        for s in series:
            if s.source == "nifti":
                s.modality = modality_hint
                if s.volume is not None:
                    s.volume.modality = modality_hint
    series.sort(key=lambda s: (s.source != "dicom", s.series_number if s.series_number is not None else 1 << 30,
                               s.series_uid or ""))
    for s in series:
        s.notes = notes + s.notes
    return series, notes

"""Series assembly: files -> series grouped by SeriesInstanceUID -> one canonical :class:`Volume` each.

Slices are ordered by their position along the slice normal (never by InstanceNumber), rescaled
to modality units, and checked for geometry problems a reader must not hide: missing slices,
duplicate positions, mixed orientations or sizes, irregular spacing, gantry tilt.
"""

from __future__ import annotations

import json
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException

from scanqc.cancel import CheckCancelled, checkpoint
from scanqc.errors import ErrorCode, ScanQCError, exc_summary
from scanqc.io.dicom import (
    FrameGeometry,
    check_image_size,
    decode_pixels,
    frame_geometries,
    non_image_reason,
    read_file,
)
from scanqc.io.nifti import read_nifti
from scanqc.io.sources import InputFile, expand_input, is_nifti_name
from scanqc.limits import DEFAULT_LIMITS, Limits
from scanqc.volume import Volume

# What pydicom raises when a lazily parsed element is malformed (wrong or unknown VR, bad length...).
_MALFORMED_HEADER = (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
                     NotImplementedError, BytesLengthException, EOFError, struct.error)

# Attributes that split a multi-volume series (multi-echo, dynamic, diffusion) into 3D volumes.
_VOLUME_SPLITTERS = ("EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber", "DiffusionBValue",
                     "TriggerTime", "ImageType")


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


@dataclass
class _Frame:
    ds: Dataset
    file: InputFile
    index: int  # frame index within ds
    geom: FrameGeometry


def _normal(ori: list[float]) -> np.ndarray:
    n = np.cross(np.asarray(ori[:3]), np.asarray(ori[3:]))
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def _stack_key(f: _Frame) -> tuple:
    ori = tuple(np.round(f.geom.orientation, 3)) if f.geom.orientation else None
    return (ori, int(f.ds.Rows), int(f.ds.Columns))


def _instance_number(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _split_multi_volume(frames: list[_Frame], pos: np.ndarray) -> tuple[list[_Frame], str] | None:
    """If repeated positions come from several volumes (echoes, time points), keep the first one."""
    n_unique = len(np.unique(np.round(pos, 2)))
    for attr in _VOLUME_SPLITTERS:
        values = [str(f.ds.get(attr, "")) for f in frames]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, v in enumerate(values):
            groups[v].append(i)
        if len(groups) < 2:
            continue
        ok = all(len(np.unique(np.round(pos[idx], 2))) == len(idx) for idx in groups.values())
        if ok and all(len(idx) == n_unique for idx in groups.values()):
            first = sorted(groups, key=lambda v: (len(v) == 0, _num_or_str(v)))[0]
            keep = [frames[i] for i in groups[first]]
            return keep, f"{len(groups)} volumes by {attr}; checked {attr}={first or '(empty)'}"
    return None


def _num_or_str(v: str) -> tuple:
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def build_volume(
    frames: list[_Frame], name: str, limits: Limits
) -> tuple[Volume, list[IntegrityIssue], list[str], list[_Frame]]:
    """Order frames along the normal, detect geometry issues, decode and stack them."""
    issues: list[IntegrityIssue] = []
    notes: list[str] = []
    # 1. One stack: largest group of identical orientation and size.
    stacks: dict[tuple, list[_Frame]] = defaultdict(list)
    for f in frames:
        stacks[_stack_key(f)].append(f)
    if len(stacks) > 1:
        keys = sorted(stacks, key=lambda k: -len(stacks[k]))
        oris = {k[0] for k in keys}
        sizes = {k[1:] for k in keys}
        dropped = len(frames) - len(stacks[keys[0]])
        if len(oris) > 1:
            issues.append(IntegrityIssue("mixed_orientation", "warn",
                                         f"series mixes {len(oris)} slice orientations (a localizer?); "
                                         f"checked the largest stack of {len(stacks[keys[0]])}, "
                                         f"set aside {dropped}", dropped))
        if len(sizes) > 1:
            issues.append(IntegrityIssue("mixed_size", "warn",
                                         f"series mixes image sizes {sorted(f'{r}x{c}' for r, c in sizes)}; "
                                         f"checked the largest stack, set aside {dropped}", dropped))
        frames = stacks[keys[0]]
    if len(frames) > limits.max_instances:
        raise ScanQCError(ErrorCode.TOO_LARGE, f"{name}: {len(frames)} slices exceeds limit {limits.max_instances}")
    rows, cols = int(frames[0].ds.Rows), int(frames[0].ds.Columns)
    if len(frames) * rows * cols > limits.max_voxels:
        raise ScanQCError(ErrorCode.TOO_LARGE,
                          f"{name}: {len(frames)}x{rows}x{cols} voxels exceeds {limits.max_voxels}")

    g0 = frames[0].geom
    have_geometry = all(f.geom.position is not None for f in frames) and g0.orientation is not None
    if have_geometry:
        normal = _normal(g0.orientation)  # type: ignore[arg-type]
        pos = np.array([np.dot(f.geom.position, normal) for f in frames])  # type: ignore[arg-type]
        order = np.argsort(pos, kind="stable")
        frames = [frames[i] for i in order]
        pos = pos[order]
        # 2. Duplicate positions: several volumes in one series, or true duplicates.
        if len(np.unique(np.round(pos, 2))) < len(pos):
            split = _split_multi_volume(frames, pos)
            if split is not None:
                frames, msg = split
                issues.append(IntegrityIssue("multi_volume", "info", msg))
                notes.append(msg)
            else:
                keep: dict[float, _Frame] = {}
                for f, p in sorted(zip(frames, pos), key=lambda t: _instance_number(t[0].ds)):
                    keep.setdefault(round(float(p), 2), f)
                n_dup = len(frames) - len(keep)
                frames = [keep[k] for k in sorted(keep)]
                issues.append(IntegrityIssue("duplicate", "warn",
                                             f"{n_dup} slice(s) share a position with another slice; "
                                             "kept one per position",
                                             n_dup))
            pos = np.array([np.dot(f.geom.position, normal) for f in frames])  # type: ignore[arg-type]
        # 3. Gaps and spacing regularity.
        spacing_z = float(g0.slice_thickness or 1.0)
        if len(frames) > 1:
            diffs = np.diff(pos)
            med = float(np.median(diffs))
            spacing_z = med
            gap_idx = np.where(diffs > 1.5 * med)[0]
            if len(gap_idx):
                missing = int(sum(round(diffs[i] / med) - 1 for i in gap_idx))
                where = ", ".join(f"{pos[i]:.1f}..{pos[i + 1]:.1f} mm" for i in gap_idx[:5])
                issues.append(IntegrityIssue("gap", "fail",
                                             f"{missing} slice(s) missing along the slice axis ({where})", missing))
            regular = np.delete(diffs, gap_idx)
            if len(regular) and np.max(np.abs(regular - med)) > 0.1 * med:
                issues.append(IntegrityIssue("irregular_spacing", "warn",
                                             f"slice spacing varies {regular.min():.2f}-{regular.max():.2f} mm"))
            step = np.asarray(frames[-1].geom.position) - np.asarray(frames[0].geom.position)
            cosang = abs(float(np.dot(step, normal))) / max(float(np.linalg.norm(step)), 1e-9)
            if cosang < np.cos(np.deg2rad(0.5)):
                tilt = float(np.degrees(np.arccos(min(cosang, 1.0))))
                issues.append(IntegrityIssue("gantry_tilt", "info",
                                             f"slices are sheared by {tilt:.1f} deg (gantry tilt); "
                                             "volume treated as orthogonal"))
        ori = g0.orientation
        direction = np.stack([normal, np.asarray(ori[3:]), np.asarray(ori[:3])], axis=1)  # type: ignore[index]
        origin = tuple(frames[0].geom.position)  # type: ignore[arg-type]
    else:
        frames = sorted(frames, key=lambda f: (_instance_number(f.ds), f.index))
        spacing_z = float(frames[0].ds.get("SpacingBetweenSlices") or g0.slice_thickness or 1.0)
        if len(frames) > 1:
            issues.append(IntegrityIssue("no_geometry", "warn",
                                         "no ImagePositionPatient/ImageOrientationPatient; slices ordered by "
                                         "InstanceNumber, gaps cannot be detected"))
        if g0.orientation:
            direction = np.stack([_normal(g0.orientation), np.asarray(g0.orientation[3:]),
                                  np.asarray(g0.orientation[:3])], axis=1)
        else:
            direction = np.eye(3)[:, ::-1].copy()
        origin = tuple(g0.position) if g0.position else (0.0, 0.0, 0.0)
    ps = g0.pixel_spacing or [1.0, 1.0]
    if g0.pixel_spacing is None:
        notes.append("no PixelSpacing; assumed 1 mm")

    # 4. Decode in order, once per instance, with per-frame rescale.
    decoded: dict[int, np.ndarray] = {}
    out = np.empty((len(frames), rows, cols), dtype=np.float32)
    bad: list[str] = []
    keep_rows: list[int] = []
    for z, f in enumerate(frames):
        checkpoint()
        key = id(f.ds)
        if key not in decoded:
            try:
                decoded[key] = decode_pixels(f.ds, f.file.name)
            except ScanQCError as exc:
                if len(frames) == 1 or len({id(x.ds) for x in frames}) == 1:
                    raise
                decoded[key] = None  # type: ignore[assignment]
                bad.append(f"{Path(f.file.name).name}: {exc.code.value}")
        arr = decoded[key]
        if arr is None:
            continue
        dst = out[z]
        dst[...] = arr[f.index]  # one conversion to float32, then rescale in place
        if f.geom.slope != 1.0:
            dst *= f.geom.slope
        if f.geom.intercept != 0.0:
            dst += f.geom.intercept
        keep_rows.append(z)
    if bad:
        if not keep_rows:
            raise ScanQCError(ErrorCode.DECODE_FAILED, f"{name}: no slice could be decoded ({bad[0]})")
        out = out[keep_rows]
        frames = [frames[i] for i in keep_rows]
        issues.append(IntegrityIssue("undecodable", "fail",
                                     f"{len(bad)} instance(s) could not be decoded and are missing: "
                                     f"{', '.join(bad[:3])}",
                                     len(bad)))
    spacing = (abs(spacing_z) if spacing_z else 1.0, float(ps[0]), float(ps[1]))
    modality = str(frames[0].ds.get("Modality", "")) or None
    vol = Volume(out, spacing, origin, direction, modality)  # type: ignore[arg-type]
    return vol, issues, notes, frames


def _assemble_dicom(group: list[tuple[InputFile, Dataset]], input_name: str, limits: Limits) -> Series:
    uid = str(group[0][1].get("SeriesInstanceUID", "")) or None
    modality = str(group[0][1].get("Modality", "")) or None
    # Same SOPInstanceUID received twice (re-send): keep one.
    seen: dict[str, tuple[InputFile, Dataset]] = {}
    notes: list[str] = []
    for f, ds in group:
        sop = str(ds.get("SOPInstanceUID", "")) or f"__{f.name}"
        seen.setdefault(sop, (f, ds))
    if len(seen) < len(group):
        notes.append(f"{len(group) - len(seen)} duplicate instance(s) with the same SOPInstanceUID ignored")
    group = list(seen.values())
    series = Series(input=input_name, series_uid=uid, modality=modality, volume=None, source="dicom",
                    n_instances=len(group), notes=notes)
    name = f"series {uid}" if uid else input_name
    try:
        frames: list[_Frame] = []
        for f, ds in group:
            check_image_size(ds, f.name, limits)
            for i, g in enumerate(frame_geometries(ds)):
                frames.append(_Frame(ds, f, i, g))
        vol, issues, more_notes, used = build_volume(frames, name, limits)
    except CheckCancelled:
        raise
    except ScanQCError as exc:
        series.error = exc
        series.header = _strip_pixels(group[0][1])
        return series
    except _MALFORMED_HEADER as exc:
        # Header values of the wrong type or shape (fuzzing finds these): name them, don't crash.
        series.error = ScanQCError(ErrorCode.INCONSISTENT_SERIES,
                                   f"{name}: cannot build a volume from the headers ({exc_summary(exc)})")
        series.header = _strip_pixels(group[0][1])
        return series
    series.volume = vol
    series.integrity = issues
    series.notes += more_notes
    used_ds: list[Dataset] = []
    for fr in used:
        if not used_ds or used_ds[-1] is not fr.ds:
            used_ds.append(fr.ds)
    series.headers = [_strip_pixels(ds) for ds in used_ds]
    series.header = series.headers[0]
    series.files = [f.path for f, _ in group]
    return series


def _strip_pixels(ds: Dataset) -> Dataset:
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in ds:
            del ds[kw]
    return ds


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


def load_series(path: str | Path, limits: Limits = DEFAULT_LIMITS,
                modality_hint: str | None = None) -> tuple[list[Series], list[str]]:
    """Read one user-given path into its series; returns (series, input-level notes).

    Raises :class:`ScanQCError` when the input as a whole yields nothing to check.
    """
    input_name = str(path)
    t0 = time.perf_counter()
    notes: list[str] = []
    with expand_input(path, limits) as files:
        nifti: list[Series] = []
        images: dict[str, list[tuple[InputFile, Dataset]]] = defaultdict(list)
        skipped: dict[str, int] = defaultdict(int)
        errors: list[ScanQCError] = []
        for f in files:
            checkpoint()
            if is_nifti_name(f.name):
                try:
                    nifti.append(_nifti_series(f, input_name, limits))
                except ScanQCError as exc:
                    errors.append(exc)
                continue
            try:
                ds = read_file(f.path, f.name)
            except ScanQCError as exc:
                errors.append(exc)
                continue
            try:
                reason = non_image_reason(ds)
                key = str(ds.get("SeriesInstanceUID", "")) or f"__file__{f.name}"
            except _MALFORMED_HEADER as exc:
                errors.append(ScanQCError(ErrorCode.UNREADABLE, f"{f.name}: malformed header "
                                                                f"({exc_summary(exc)})"))
                continue
            if reason:
                skipped[reason] += 1
                continue
            images[key].append((f, ds))
        read_ms = (time.perf_counter() - t0) * 1000
        series: list[Series] = list(nifti)
        for group in images.values():
            t1 = time.perf_counter()
            s = _assemble_dicom(group, input_name, limits)
            s.timings_ms["read"] = read_ms * len(group) / max(sum(len(g) for g in images.values()), 1)
            s.timings_ms["assemble_decode"] = (time.perf_counter() - t1) * 1000
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

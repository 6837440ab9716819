"""Streaming series assembly: one instance at a time, decoded on arrival, one :class:`Series` at the end.

``SeriesAssembler`` is the only place a DICOM series becomes a volume. ``scanqc.series.load_series`` feeds it
the files of a folder or archive; the DICOM receiver feeds it each C-STORE dataset the moment it arrives, so
that when the series is complete only the model checks remain. Usage::

    asm = SeriesAssembler("series 1.2.3", limits)
    for ds, file in arrivals:            # pydicom Dataset with pixels + where it is stored
        asm.add(ds, file)                # validates, decodes, rescales; returns "added" | "duplicate" | "error"
    asm.stack()                          # StackState now: slices, gaps, duplicates, regular spacing
    series = asm.finish()                # the Series load_series would build from the same files

``add`` never raises for bad input: the first problem becomes the series' error (as ``load_series`` always
did). After ``add`` the dataset's pixel data is dropped; the assembler keeps one float32 slice per frame.
``add`` copies the stored values aside; rescaling them into the volume and the models' in-plane passes run
in a background thread, a chunk of slices at a time, while the caller parses the next headers (pydicom holds
the GIL, numpy does not); ``finish`` waits for what is still in flight.
``finish`` may be called more than once (a provisional verdict, then more instances, then the final one).
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException

from scanqc.cancel import checkpoint
from scanqc.errors import ErrorCode, ScanQCError, exc_summary
from scanqc.io.dicom import PIXEL_TAGS, FrameGeometry, cached_value, check_image_size, decode_pixels, frame_geometries
from scanqc.io.sources import InputFile
from scanqc.limits import DEFAULT_LIMITS, Limits
from scanqc.preprocessing import InplanePass, slice_pass, stack_inplane
from scanqc.series import IntegrityIssue, Series

# What pydicom raises when a lazily parsed element is malformed (wrong or unknown VR, bad length...).
MALFORMED_HEADER = (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
                    NotImplementedError, BytesLengthException, EOFError, struct.error)

# Attributes that split a multi-volume series (multi-echo, dynamic, diffusion) into 3D volumes.
_VOLUME_SPLITTERS = ("EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber", "DiffusionBValue",
                     "TriggerTime", "ImageType")

AddResult = Literal["added", "duplicate", "error"]


class _BlockPool:
    """Volume blocks kept for the next series, so that its slices are written into memory already resident.

    A fresh 200 MB block has every page faulted in as the conversion thread first writes it; on the VMs this is
    measured on, that made the slowest in-process CT checks 100-300 ms slower (bench CT, 20 runs: p95 432-528 ->
    270-273 ms, p50 unchanged). A block is free again when no array refers to it: every view of a numpy array
    refers to the array that owns the memory, so the pool's own reference is then the only one (CPython's
    reference count). At most ``max_bytes`` are kept (``SCANQC_BLOCK_POOL_MB``, default 512: two 200-slice CTs;
    0 keeps none); a request the free blocks cannot serve gets a block of its own, pooled while there is room.
    """

    _FREE_REFS = 2  # the pool's list and getrefcount's own argument

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._blocks: list[np.ndarray] = []  # flat float32 owners
        self._lock = threading.Lock()

    def _free(self, i: int) -> bool:
        return sys.getrefcount(self._blocks[i]) <= self._FREE_REFS

    def take(self, n: int) -> np.ndarray:
        """``n`` float32 values (flat, contents undefined)."""
        with self._lock:
            fits = [i for i in range(len(self._blocks)) if self._blocks[i].size >= n and self._free(i)]
            if fits:
                best = min(fits, key=lambda i: self._blocks[i].size)
                return self._blocks[best][:n]
            if n * 4 > self.max_bytes:
                return np.empty(n, np.float32)
            # Room for it: drop free blocks too small to serve it, the smallest first, while over the budget.
            kept = sum(b.nbytes for b in self._blocks)
            drop = set()
            for i in sorted((i for i in range(len(self._blocks)) if self._free(i)),
                            key=lambda i: self._blocks[i].size):
                if kept + n * 4 <= self.max_bytes:
                    break
                kept -= self._blocks[i].nbytes
                drop.add(i)
            self._blocks = [b for i, b in enumerate(self._blocks) if i not in drop]
            block = np.empty(n, np.float32)
            if kept + block.nbytes > self.max_bytes:
                return block  # the room is taken by blocks in use
            self._blocks.append(block)
            return block[:n]


_pool = _BlockPool(int(float(os.environ.get("SCANQC_BLOCK_POOL_MB", "512")) * 2**20))


class _SliceBuffer:
    """Decoded slices of one in-plane size in one float32 block, in arrival order.

    Each frame is cast and rescaled straight into its slot (one pass over the pixels, no per-slice array), and a
    volume whose slices are consecutive slots (the usual case: instances arrive, or files sort, in table order)
    is a view of the block: no 200 MB copy after the last instance. The block doubles when full (while
    instances arrive). Blocks come from :class:`_BlockPool`: pages of spare capacity are only touched when
    written, and a reused block's pages are already resident.
    """

    def __init__(self, rows: int, cols: int, capacity: int) -> None:
        cap = max(int(capacity), 1)
        self.block = _pool.take(cap * rows * cols).reshape(cap, rows, cols)
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n == len(self.block)

    def take(self) -> tuple[np.ndarray, int]:
        if self.full:
            shape = (2 * len(self.block), *self.block.shape[1:])
            bigger = _pool.take(int(np.prod(shape))).reshape(shape)
            bigger[:self.n] = self.block[:self.n]
            self.block = bigger  # earlier frames' views keep the old block (same values)
        self.n += 1
        return self.block[self.n - 1], self.n - 1

    def stack(self, slots: list[int]) -> np.ndarray:
        """The slices in ``slots`` order: a view when they are consecutive, else one gathered copy."""
        i0 = slots[0]
        if slots == list(range(i0, i0 + len(slots))):
            return self.block[i0:i0 + len(slots)]
        return np.take(self.block, slots, axis=0)


@dataclass
class _Frame:
    ds: Dataset
    file: InputFile
    index: int  # frame index within ds
    geom: FrameGeometry
    pixels: np.ndarray | None = None  # rescaled float32 (rows, cols), decoded on arrival (a view of its slot)
    slot: tuple[_SliceBuffer, int] | None = None  # where ``pixels`` lives
    inplane: dict[InplanePass, np.ndarray] | None = None  # in-plane pass per model grid, made on arrival
    error: ScanQCError | None = None  # decoding failed for this frame's instance
    key: tuple | None = None  # (orientation, rows, cols), computed once: pydicom attribute access is slow


#: Slices per background conversion: each numpy call in the worker needs the GIL back from a thread that is
#: parsing headers (it gets it at the next switch interval), so the worker must make few, large calls: one
#: rescale and one in-plane pass per 16 slices overlapped a CT's header parsing (200 x 512^2: 220 -> 155 ms);
#: one per slice did not overlap at all.
CHUNK_FRAMES = 16

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _converter() -> ThreadPoolExecutor:
    """The process' one conversion thread (shared by every assembler: the cores, not the threads, are scarce)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanqc-convert")
        return _executor


def _forget_converter() -> None:
    # A forked child inherits the executor but not its thread: work submitted there would never run.
    global _executor, _executor_lock
    _executor, _executor_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_converter)


@dataclass
class _Chunk:
    """Stored values of up to ``CHUNK_FRAMES`` frames of one size and dtype, waiting to be rescaled into their
    volume slots and passed through the models' in-plane grids."""

    stage: np.ndarray  # (CHUNK_FRAMES, rows, cols), the stored dtype
    buf: _SliceBuffer
    grids: tuple[InplanePass, ...]
    frames: list[_Frame] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return len(self.frames) == len(self.stage)

    def convert(self) -> None:
        """Rescale into the slots, then the in-plane passes: runs of consecutive slots with the same rescale
        (the usual case: the whole chunk) take one call each. Same arithmetic as slice by slice."""
        fs = self.frames
        i = 0
        while i < len(fs):
            j, s0 = i + 1, fs[i].slot[1]  # type: ignore[index]
            g = fs[i].geom
            while (j < len(fs) and fs[j].slot[1] == s0 + j - i  # type: ignore[index]
                   and (fs[j].geom.slope, fs[j].geom.intercept) == (g.slope, g.intercept)):
                j += 1
            _rescale(self.stage[i:j], self.buf.block[s0:s0 + j - i], g.slope, g.intercept)
            for grid in self.grids:
                self._passes(grid, fs[i:j], self.buf.block[s0:s0 + j - i])
            i = j

    @staticmethod
    def _passes(grid: InplanePass, frames: list[_Frame], block: np.ndarray) -> None:
        from scanqc.preprocessing import BlockMeans, block_mean

        flips = [_axial_flips(f.geom.orientation) for f in frames]
        if isinstance(grid, BlockMeans):
            # One 3D call when the run shares flips and pixel spacing (block means along axis 0 are 1: the very
            # sums of the per-slice pass); else slice by slice.
            same = (flips[0] is not None and all(fl == flips[0] for fl in flips)
                    and all(f.geom.pixel_spacing == frames[0].geom.pixel_spacing for f in frames))
            if same and frames[0].geom.pixel_spacing is not None:
                fr, fc = flips[0]  # type: ignore[misc]
                view = block[:, ::-1 if fr else 1, ::-1 if fc else 1]
                out = block_mean(view, (1, *grid.factors(view.shape[1:], tuple(frames[0].geom.pixel_spacing))))
                for f, a in zip(frames, out):
                    f.inplane = {**(f.inplane or {}), grid: a}
                return
        elif flips[0] is not None and all(fl == flips[0] for fl in flips):
            # A model grid: the chunk's slices in two stacked matrix products (slice_inplane's, slice by slice).
            for f, a in zip(frames, stack_inplane(block, grid, *flips[0])):  # type: ignore[misc]
                f.inplane = {**(f.inplane or {}), grid: a}
            return
        for f, fl, a in zip(frames, flips, block):
            if fl is not None:
                made = slice_pass(grid, a, *fl, f.geom.pixel_spacing)
                if made is not None:
                    f.inplane = {**(f.inplane or {}), grid: made}


def _rescale(src: np.ndarray, dst: np.ndarray, slope: float, inter: float) -> None:
    slope32, inter32 = np.float32(slope), np.float32(inter)
    if slope32 != 1.0:  # cast and scale in one pass (then shift in place)
        np.multiply(src, slope32, out=dst)
        if inter32 != 0.0:
            dst += inter32
    elif inter32 != 0.0:  # the usual CT (slope 1): cast and shift in one pass
        np.add(src, inter32, out=dst)
    else:
        np.copyto(dst, src, casting="unsafe")


@dataclass
class StackState:
    """Geometry of what has arrived so far (the largest stack), for completion decisions."""

    n_frames: int
    positions: list[float] = field(default_factory=list)  # along the normal, sorted
    spacing: float | None = None  # median step
    missing: int = 0  # slices missing inside the covered range
    duplicates: int = 0
    regular: bool = False  # >= 3 slices, no gap, steps within 10 % of the median

    @property
    def complete(self) -> bool:
        """A regular, gap-free stack (nothing missing *between* its ends; the ends cannot be known)."""
        return self.regular and self.missing == 0


def _normal(ori: list[float]) -> np.ndarray:
    return _normal_of(tuple(ori))


@lru_cache(maxsize=64)
def _normal_of(ori: tuple[float, ...]) -> np.ndarray:
    # Cached: every slice of a series has the same orientation, and np.cross costs ~30 us (~10 ms per CT).
    n = np.cross(np.asarray(ori[:3]), np.asarray(ori[3:]))
    norm = np.linalg.norm(n)
    n = n / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
    n.flags.writeable = False  # shared by every caller
    return n


def _axial_flips(ori: list[float] | None) -> tuple[bool, bool] | None:
    """(flip rows, flip columns) of the canonical view when the slices are axial (their in-plane axes are the
    canonical in-plane axes), else None: only then can a model grid's in-plane pass be made slice by slice."""
    return None if ori is None else _axial_flips_of(tuple(ori))


@lru_cache(maxsize=64)
def _axial_flips_of(ori: tuple[float, ...]) -> tuple[bool, bool] | None:
    from scanqc.preprocessing import canonical_axes

    axes = canonical_axes(np.stack([_normal_of(ori), np.asarray(ori[3:]), np.asarray(ori[:3])], axis=1))
    if axes is None or axes[0] != (0, 1, 2):
        return None
    return 1 in axes[1], 2 in axes[1]


def _stack_key(f: _Frame) -> tuple:
    if f.key is None:
        ori = tuple(np.round(f.geom.orientation, 3)) if f.geom.orientation else None
        f.key = (ori, int(cached_value(f.ds, "Rows")), int(cached_value(f.ds, "Columns")))  # type: ignore[call-overload]
    return f.key


def _instance_number(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _num_or_str(v: str) -> tuple:
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


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


def _largest_stack(frames: list[_Frame]) -> tuple[list[_Frame], dict[tuple, list[_Frame]]]:
    stacks: dict[tuple, list[_Frame]] = defaultdict(list)
    for f in frames:
        stacks[_stack_key(f)].append(f)
    best = max(stacks.values(), key=len) if stacks else []
    # max() keeps the first of equal-sized stacks, as the sort by -len in build_volume does
    return best, stacks


def stack_state(frames: list[_Frame]) -> StackState:
    """Slices, gaps and duplicates of the largest stack, as pure geometry (no pixels)."""
    frames, _ = _largest_stack(frames)
    if not frames or frames[0].geom.orientation is None or any(f.geom.position is None for f in frames):
        return StackState(len(frames))
    normal = _normal(frames[0].geom.orientation)
    return positions_state([float(np.dot(f.geom.position, normal)) for f in frames])  # type: ignore[arg-type]


def positions_state(positions: list[float]) -> StackState:
    """:class:`StackState` of one stack from its slice positions along the normal (any order)."""
    pos = np.sort(np.asarray(positions, dtype=np.float64))
    st = StackState(len(pos))
    uniq = np.unique(np.round(pos, 2))
    st.duplicates = len(pos) - len(uniq)
    st.positions = [float(p) for p in uniq]
    if len(uniq) < 2:
        return st
    diffs = np.diff(uniq)
    med = float(np.median(diffs))
    st.spacing = med
    gaps = diffs > 1.5 * med
    st.missing = int(sum(round(d / med) - 1 for d in diffs[gaps]))
    regular = diffs[~gaps]
    st.regular = len(uniq) >= 3 and not gaps.any() and bool(np.max(np.abs(regular - med)) <= 0.1 * med)
    return st


def build_volume(frames: list[_Frame], name: str,
                 limits: Limits) -> tuple[np.ndarray, tuple, tuple, np.ndarray, list[IntegrityIssue], list[str],
                                          list[_Frame]]:
    """Order decoded frames along the normal, detect geometry issues and stack them.

    Returns (array, spacing, origin, direction, issues, notes, frames used).
    """
    issues: list[IntegrityIssue] = []
    notes: list[str] = []
    # 1. One stack: largest group of identical orientation and size.
    _best, stacks = _largest_stack(frames)
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

    # 4. Stack the slices decoded on arrival; instances that failed to decode are reported, not hidden.
    n_instances = len({id(f.ds) for f in frames})
    bad: list[str] = []
    seen_bad: set[int] = set()
    good = [f for f in frames if f.pixels is not None]
    for f in frames:
        if f.pixels is None and id(f.ds) not in seen_bad:
            if len(frames) == 1 or n_instances == 1:
                raise f.error or ScanQCError(ErrorCode.DECODE_FAILED, f"{name}: no pixels")
            seen_bad.add(id(f.ds))
            bad.append(f"{Path(f.file.name).name}: {(f.error.code.value if f.error else 'DECODE_FAILED')}")
    if bad:
        if not good:
            raise ScanQCError(ErrorCode.DECODE_FAILED, f"{name}: no slice could be decoded ({bad[0]})")
        frames = good
        issues.append(IntegrityIssue("undecodable", "fail",
                                     f"{len(bad)} instance(s) could not be decoded and are missing: "
                                     f"{', '.join(bad[:3])}",
                                     len(bad)))
    buf = frames[0].slot[0] if frames[0].slot is not None else None
    if buf is not None and all(f.slot is not None and f.slot[0] is buf for f in frames):
        out = buf.stack([f.slot[1] for f in frames])  # type: ignore[index]
    else:
        out = np.empty((len(frames), rows, cols), dtype=np.float32)
        for z, f in enumerate(frames):
            out[z] = f.pixels
    spacing = (abs(spacing_z) if spacing_z else 1.0, float(ps[0]), float(ps[1]))
    return out, spacing, origin, direction, issues, notes, frames


def _inplane_scratch(vol: Any, frames: list[_Frame], grids: tuple[InplanePass, ...]) -> dict[Any, Any]:
    """The in-plane passes made on arrival, under the keys ``resample_fit`` / ``block_means_inplane`` look up
    for this volume."""
    from scanqc.preprocessing import BlockMeans, block_means_key, canonical_axes, canonicalize, inplane_key

    out: dict[Any, Any] = {}
    if not grids or canonical_axes(vol.direction) is None or canonical_axes(vol.direction)[0] != (0, 1, 2):
        return out
    arr, spacing = canonicalize(vol)
    flip0 = 0 in canonical_axes(vol.direction)[1]  # type: ignore[index]
    for g in grids:
        parts = [f.inplane.get(g) if f.inplane is not None else None for f in frames]
        if any(p is None for p in parts) or len({p.shape for p in parts}) != 1:  # type: ignore[union-attr]
            continue  # a slice without the pass, or of another size: the check makes it from the volume
        if isinstance(g, BlockMeans):
            key = block_means_key(arr, g.factors(arr.shape[1:], spacing[1:]))
            if parts[0].shape != tuple(-(-n // k) for n, k in zip(arr.shape[1:], key[-1])):  # type: ignore[union-attr]
                continue  # per-slice pixel spacing other than the volume's
        else:
            key = inplane_key(arr, g, True)
        stack = np.stack(parts)  # type: ignore[arg-type]
        out[key] = stack[::-1] if flip0 else stack  # in the canonical view's order
    return out


def _strip_pixels(ds: Dataset) -> Dataset:
    for tag in PIXEL_TAGS:  # tags, not keywords: pydicom resolves a keyword on every test (~30 us a slice)
        if tag in ds:
            del ds[tag]
    return ds


def _as_input_file(file: InputFile | Path | str | None, sop: str) -> InputFile:
    if isinstance(file, InputFile):
        return file
    if file is None:
        return InputFile(Path(f"{sop}.dcm"), f"{sop}.dcm")
    return InputFile(Path(file), str(file))


class SeriesAssembler:
    """Build one DICOM series instance by instance (see the module docstring). Not thread-safe: one owner."""

    def __init__(self, input_name: str, limits: Limits = DEFAULT_LIMITS, expected_frames: int = 64,
                 inplane: dict[str, tuple[InplanePass, ...]] | None = None) -> None:
        """``inplane``: per modality, the in-plane passes of the installed models (``scanqc.checks.ml.
        inplane_targets``); each axial slice is resampled onto them as it arrives (the receiver passes them)."""
        self.input_name = input_name
        self.limits = limits
        self._inplane = inplane or {}
        self._expected = max(int(expected_frames), 1)  # first block size (a folder knows its file count)
        self._buffers: dict[tuple[int, int], _SliceBuffer] = {}
        self._instances: dict[str, tuple[InputFile, Dataset]] = {}  # SOPInstanceUID -> first arrival
        self._frames: list[_Frame] = []
        self._duplicates = 0
        self._error: ScanQCError | None = None
        self._first_ds: Dataset | None = None
        self._uid: str | None = None  # the first instance's SeriesInstanceUID ("" when it has none)
        self._voxels = 0
        self.decode_ms = 0.0
        # Per stack key: frame count and positions along that stack's normal (None: a frame without geometry),
        # kept as instances arrive so that stack() costs O(n log n), not a pass over every header.
        self._stack_n: dict[tuple, int] = {}
        self._stack_pos: dict[tuple, list[float] | None] = {}
        self._stack_normal: dict[tuple, np.ndarray] = {}
        self._chunk: _Chunk | None = None  # filling
        self._in_flight: list[Future] = []
        self._stages: list[np.ndarray] = []  # staging arrays of converted chunks, for reuse

    # -- what has arrived ------------------------------------------------------------------------
    @property
    def n_instances(self) -> int:
        return len(self._instances)

    @property
    def n_frames(self) -> int:
        return len(self._frames)

    @property
    def sop_uids(self) -> set[str]:
        return set(self._instances)

    @property
    def header(self) -> Dataset | None:
        """The first instance's header (pixel data dropped)."""
        return self._first_ds

    @property
    def series_uid(self) -> str | None:
        if self._first_ds is None:
            return None
        if self._uid is None:  # the first instance's, read once (add() names the series on every instance)
            self._uid = str(cached_value(self._first_ds, "SeriesInstanceUID", ""))
        return self._uid or None

    @property
    def error(self) -> ScanQCError | None:
        return self._error

    def headers(self) -> list[Dataset]:
        return [ds for _, ds in self._instances.values()]

    def stack(self) -> StackState:
        """Geometry of the largest stack so far (same as :func:`stack_state` of every frame)."""
        if self._error is not None or not self._stack_n:
            return StackState(len(self._frames))
        key = max(self._stack_n, key=lambda k: self._stack_n[k])  # first of equal-sized, as _largest_stack
        pos = self._stack_pos[key]
        return positions_state(pos) if pos is not None else StackState(self._stack_n[key])

    def _track(self, frames: list[_Frame]) -> None:
        for fr in frames:
            key = _stack_key(fr)
            self._stack_n[key] = self._stack_n.get(key, 0) + 1
            pos = self._stack_pos.setdefault(key, [])
            if pos is None or fr.geom.position is None or fr.geom.orientation is None:
                self._stack_pos[key] = None
                continue
            normal = self._stack_normal.get(key)
            if normal is None:
                normal = self._stack_normal[key] = _normal(fr.geom.orientation)
            pos.append(float(np.dot(fr.geom.position, normal)))

    # -- feeding ---------------------------------------------------------------------------------
    def add(self, ds: Dataset, file: InputFile | Path | str | None = None, sop: str | None = None) -> AddResult:
        """Take one instance: validate its size, read its geometry, decode and rescale its frames.

        ``sop``: the instance's key when the caller already has one (the receiver's validated UID); by
        default its SOPInstanceUID (or the file name when it has none).
        """
        sop = sop or str(cached_value(ds, "SOPInstanceUID", "")) or f"__{getattr(file, 'name', file)}"
        if sop in self._instances:  # the same instance again (a re-send): keep the first
            self._duplicates += 1
            return "duplicate"
        f = _as_input_file(file, sop)
        self._instances[sop] = (f, ds)
        if self._first_ds is None:
            self._first_ds = ds
        if self._error is not None:
            _strip_pixels(ds)
            return "error"
        name = f"series {self.series_uid}" if self.series_uid else self.input_name
        checkpoint()  # before the decode: a cancelled check stops here (scanqc.cancel)
        t0 = time.perf_counter()
        try:
            n_frames, rows, cols = check_image_size(ds, f.name, self.limits)
            geoms = frame_geometries(ds)
            frames = [_Frame(ds, f, i, g) for i, g in enumerate(geoms)]
            for fr in frames:
                _stack_key(fr)  # Rows/Columns/orientation must be usable before anything is decoded
            self._voxels += n_frames * rows * cols
            if self._voxels > self.limits.max_voxels:  # over the budget: nothing more is decoded
                for fr in frames:
                    fr.error = ScanQCError(ErrorCode.TOO_LARGE, f"{name}: more than {self.limits.max_voxels} voxels")
            else:
                grids = self._inplane.get(str(cached_value(self._first_ds, "Modality", "")).upper(), ())
                buf = self._buffers.get((rows, cols))
                if buf is None:
                    cap = min(self._expected, max(self.limits.max_voxels // max(rows * cols, 1), 1))
                    buf = self._buffers[(rows, cols)] = _SliceBuffer(rows, cols, cap)

                def into(dtype: np.dtype, n: int) -> np.ndarray | None:
                    # One frame read from the file goes straight into its staging row (no copy after).
                    if n != rows * cols:
                        return None
                    if buf.full:
                        self.wait()  # the growth below would submit this chunk first (then a copy after all)
                    c = self._chunk_for(buf, dtype, grids)
                    return c.stage[len(c.frames)].reshape(-1)

                try:
                    arr = decode_pixels(ds, f.name, scratch=True, into=into)  # copied out below, at once
                except ScanQCError as exc:
                    for fr in frames:
                        fr.error = exc
                else:
                    for fr in frames:
                        if buf.full:
                            self.wait()  # the block is copied into a bigger one: nothing may still be written
                        fr.pixels, i = buf.take()  # its values are written by the conversion thread
                        fr.slot = (buf, i)
                        chunk = self._chunk_for(buf, arr.dtype, grids)
                        row = chunk.stage[len(chunk.frames)]
                        if row.ctypes.data != arr.ctypes.data + arr.strides[0] * fr.index:
                            row[...] = arr[fr.index]  # out of the scratch buffer
                        chunk.frames.append(fr)
                        if chunk.full:
                            self._submit()
        except ScanQCError as exc:
            self._error = exc
            return "error"
        except MALFORMED_HEADER as exc:
            # Header values of the wrong type or shape (fuzzing finds these): name them, don't crash.
            self._error = ScanQCError(ErrorCode.INCONSISTENT_SERIES,
                                      f"{name}: cannot build a volume from the headers ({exc_summary(exc)})")
            return "error"
        finally:
            _strip_pixels(ds)
            self.decode_ms += (time.perf_counter() - t0) * 1000
        self._frames.extend(frames)
        self._track(frames)
        return "added"

    # -- background conversion -------------------------------------------------------------------
    def _chunk_for(self, buf: _SliceBuffer, dtype: np.dtype, grids: tuple[InplanePass, ...]) -> _Chunk:
        c = self._chunk
        if c is not None and c.buf is buf and c.stage.dtype == dtype and c.grids == grids:
            return c
        self._submit()
        shape = (CHUNK_FRAMES, *buf.block.shape[1:])
        # (the conversion thread only appends to _stages: an index found here stays valid)
        i = next((i for i, a in enumerate(self._stages) if a.shape == shape and a.dtype == dtype), None)
        stage = np.empty(shape, dtype) if i is None else self._stages.pop(i)
        self._chunk = _Chunk(stage, buf, grids)
        return self._chunk

    def _submit(self) -> None:
        c, self._chunk = self._chunk, None
        if c is not None and c.frames:
            self._in_flight.append(_converter().submit(self._convert, c))

    def _convert(self, c: _Chunk) -> None:
        try:
            c.convert()
        except Exception as exc:  # a bug must cost these slices, not the series or the conversion thread
            err = ScanQCError(ErrorCode.DECODE_FAILED, f"{self.input_name}: rescaling failed ({exc_summary(exc)})")
            for f in c.frames:
                f.pixels, f.error, f.inplane = None, err, None
        finally:
            self._stages.append(c.stage)  # list.append is atomic: the owner's thread may be reading the list

    def wait(self) -> None:
        """Convert what is staged and wait until every slice so far is in the volume."""
        self._submit()
        futures, self._in_flight = self._in_flight, []
        for fut in futures:
            fut.result()

    # -- the series ------------------------------------------------------------------------------
    def finish(self) -> Series:
        """The series as it stands: volume, integrity issues, headers (same as ``load_series`` builds)."""
        from scanqc.volume import Volume

        t0 = time.perf_counter()
        self.wait()
        self._stages.clear()  # a late instance stages afresh; a receiver holding many series holds no spare chunks
        group = list(self._instances.values())
        first = self._first_ds
        if first is None:
            raise ScanQCError(ErrorCode.NO_IMAGE_SERIES, f"{self.input_name}: no image instance received "
                                                         "(only non-image objects, or none)")
        uid = str(first.get("SeriesInstanceUID", "")) or None
        modality = str(first.get("Modality", "")) or None
        notes: list[str] = []
        if self._duplicates:
            notes.append(f"{self._duplicates} duplicate instance(s) with the same SOPInstanceUID ignored")
        series = Series(input=self.input_name, series_uid=uid, modality=modality, volume=None, source="dicom",
                        n_instances=len(group), notes=notes)
        name = f"series {uid}" if uid else self.input_name
        if self._error is not None:
            series.error = self._error
            series.header = first
            return series
        try:
            arr, spacing, origin, direction, issues, more_notes, used = build_volume(list(self._frames), name,
                                                                                     self.limits)
            vmod = str(used[0].ds.get("Modality", "")) or None
            vol = Volume(arr, spacing, origin, direction, vmod)  # type: ignore[arg-type]
        except ScanQCError as exc:
            series.error = exc
            series.header = first
            return series
        except MALFORMED_HEADER as exc:
            series.error = ScanQCError(ErrorCode.INCONSISTENT_SERIES,
                                       f"{name}: cannot build a volume from the headers ({exc_summary(exc)})")
            series.header = first
            return series
        series.volume = vol
        series.scratch = _inplane_scratch(vol, used, self._inplane.get(str(vmod or "").upper(), ()))
        series.integrity = issues
        series.notes += more_notes
        used_ds: list[Dataset] = []
        for fr in used:
            if not used_ds or used_ds[-1] is not fr.ds:
                used_ds.append(fr.ds)
        series.headers = used_ds
        series.header = used_ds[0]
        series.files = [f.path for f, _ in group]
        series.timings_ms["decode_on_arrival"] = self.decode_ms  # spent while instances arrived
        series.timings_ms["assemble"] = (time.perf_counter() - t0) * 1000  # after the last one: ordering, stacking
        return series

"""When is a series complete? Combine the signals a sender gives, and record which one decided.

DICOM has no "end of series" message. Each signal below is either **final** (the verdict it triggers is the
series' last word unless another instance arrives) or **provisional** (shown at once, marked provisional, and
replaced or confirmed later):

==================== ======= ===============================================================================
signal               final?  fires when
==================== ======= ===============================================================================
mpps                 final   an MPPS COMPLETED/DISCONTINUED from the sender's site names the series (and
                             every image it lists has arrived)
expected_count       final   the header says how many: ``NumberOfFrames`` of an enhanced multi-frame object,
                             ``ImagesInAcquisition`` (one acquisition), or ``NumberOfTemporalPositions`` x
                             the slices of the first time point; that many frames have arrived
quiet_period         final   ``quiet_period_s`` (the configured upper bound) without a new instance
restart              final   the same, for a series found on disk without a verdict at start-up
association_release  prov.   the association that delivered the series' last instance was released after
                             delivering at least two of them (a per-instance forwarder opens one per
                             instance, so one instance on an association says nothing)
geometry             prov.   a regular, gap-free stack of >= 3 slices and an adaptive quiet period
adaptive_quiet       prov.   three adaptive quiet periods, whatever the geometry (gaps may be real)
==================== ======= ===============================================================================

The adaptive quiet period is ``gap_factor`` times the sender's median inter-arrival gap (tens of milliseconds
on a LAN), never below ``min_quiet_s`` and never above ``quiet_period_s``. A provisional verdict becomes final
without a re-check when a final signal follows and no instance arrived in between.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from scanqc.ingest.assembler import SeriesAssembler, StackState

Signal = Literal["mpps", "expected_count", "quiet_period", "restart", "association_release", "geometry",
                 "adaptive_quiet", "first_instance"]  # first_instance: header checks only, shown at once
FINAL_SIGNALS: frozenset[str] = frozenset({"mpps", "expected_count", "quiet_period", "restart"})
GAP_WINDOW = 64  # inter-arrival gaps remembered per series and per sender


@dataclass(frozen=True)
class CompletionPolicy:
    """Knobs of :func:`decide`. ``adaptive=False`` keeps only the final signals (the old behaviour)."""

    quiet_period_s: float = 5.0
    adaptive: bool = True
    min_quiet_s: float = 0.2  # a sender's scheduling jitter on a loaded host stays below this
    gap_factor: float = 10.0
    default_gap_s: float = 0.05  # before a sender has shown its pace

    def adaptive_quiet_s(self, gaps: Iterable[float]) -> float:
        g = [x for x in gaps if x >= 0]
        typical = statistics.median(g) if len(g) >= 3 else self.default_gap_s
        return min(self.quiet_period_s, max(self.min_quiet_s, self.gap_factor * typical))


@dataclass
class Progress:
    """What :func:`decide` looks at for one pending series (filled by the tracker)."""

    last_mono: float  # monotonic time of the last instance
    n_frames: int = 0
    expected_frames: int | None = None
    stack: StackState | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=GAP_WINDOW))
    released: bool = False  # the association that delivered the last instance has been released
    release_count: int = 0  # instances of this series on that association
    mpps_final: bool = False
    mpps_sops: set[str] | None = None  # images an MPPS listed
    sops: set[str] = field(default_factory=set)
    recovered: bool = False


@dataclass(frozen=True)
class Decision:
    signal: Signal
    final: bool
    detail: str = ""


def expected_frames(asm: SeriesAssembler) -> int | None:
    """Frames the header promises for the whole series, or None when it does not say."""
    h = asm.header
    if h is None:
        return None
    try:
        nf = int(h.get("NumberOfFrames", 1) or 1)
        if nf > 1:
            return nf
        iia = int(h.get("ImagesInAcquisition", 0) or 0)
        headers = asm.headers()
        if iia > 0 and len({str(d.get("AcquisitionNumber", "")) for d in headers}) == 1:
            return iia
        ntp = int(h.get("NumberOfTemporalPositions", 0) or 0)
        if ntp > 1:
            tp = [str(d.get("TemporalPositionIdentifier", "")) for d in headers]
            first = tp[0]
            if any(t != first for t in tp):  # the first time point is complete once the next one starts
                return ntp * sum(1 for t in tp if t == first)
    except (TypeError, ValueError):
        return None
    return None


def decide(p: Progress, now: float, policy: CompletionPolicy) -> Decision | None:
    """The signal that completes the series now, or None to keep waiting."""
    if p.mpps_final and (p.mpps_sops is None or p.mpps_sops <= p.sops):
        return Decision("mpps", True)
    if p.expected_frames and p.n_frames >= p.expected_frames:
        return Decision("expected_count", True, f"{p.n_frames} of {p.expected_frames} frames")
    quiet = now - p.last_mono
    if quiet >= policy.quiet_period_s:
        return Decision("restart" if p.recovered else "quiet_period", True)
    if not policy.adaptive or p.recovered:
        return None
    if p.released and p.release_count >= 2:
        return Decision("association_release", False)
    t = policy.adaptive_quiet_s(p.gaps)
    if quiet >= t and p.stack is not None and p.stack.complete:
        return Decision("geometry", False, f"{len(p.stack.positions)} regular slices, quiet {quiet:.2f} s")
    if quiet >= min(3 * t, policy.quiet_period_s):
        return Decision("adaptive_quiet", False, f"quiet {quiet:.2f} s")
    return None


def finalize_due(p: Progress, now: float, policy: CompletionPolicy) -> Signal | None:
    """For a series with a provisional verdict and nothing new since: the final signal that confirms it."""
    d = decide(p, now, CompletionPolicy(policy.quiet_period_s, adaptive=False))
    return d.signal if d is not None else None

"""The verdict contract.

``scanqc check --json`` prints one :class:`Verdict` per series as JSON Lines; the HTTP API and the
DICOM receiver return the same objects. Scanner-side scripts depend on this shape: later
changes may add fields, never rename or remove them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CheckStatus = Literal["pass", "warn", "fail", "skipped"]
VerdictStatus = Literal["pass", "warn", "fail", "error"]

_SEVERITY = {"skipped": 0, "pass": 0, "warn": 1, "fail": 2}


@dataclass
class CheckResult:
    """Outcome of one check on one series.

    ``score`` is a probability in [0, 1] that there is a problem, or ``None`` for rule-based
    checks and skipped checks. ``extra`` holds check-specific fields merged into the JSON
    object (``predicted``/``probabilities`` for contrast phase, ``missing`` for coverage,
    ``deviations`` for protocol, ``tags`` for de-identification...).
    """

    status: CheckStatus
    message: str
    score: float | None = None
    action: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in _SEVERITY:
            raise ValueError(f"check status must be one of {sorted(_SEVERITY)}, got {self.status!r}")
        if self.score is not None:
            self.score = float(self.score)
            if not 0.0 <= self.score <= 1.0:
                raise ValueError(f"score must be a probability in [0, 1], got {self.score}")
        if self.status in ("warn", "fail") and not self.action:
            raise ValueError(f"a {self.status} result must carry a technologist action ({self.message!r})")

    @classmethod
    def skipped(cls, message: str, **extra: Any) -> CheckResult:
        return cls("skipped", message, None, None, dict(extra))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "status": self.status,
            "score": None if self.score is None else round(self.score, 4),
            "message": self.message,
            "action": self.action,
        }
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        extra = {k: v for k, v in d.items() if k not in ("status", "score", "message", "action")}
        return cls(d["status"], d.get("message", ""), d.get("score"), d.get("action"), extra)


def overall_status(checks: dict[str, CheckResult]) -> VerdictStatus:
    """Worst check wins; skipped checks do not count."""
    worst = max((_SEVERITY[c.status] for c in checks.values()), default=0)
    return ("pass", "warn", "fail")[worst]  # type: ignore[return-value]


@dataclass
class Verdict:
    input: str
    series_uid: str | None
    modality: str | None
    status: VerdictStatus
    checks: dict[str, CheckResult] = field(default_factory=dict)
    error: dict[str, str] | None = None
    elapsed_ms: float = 0.0
    # Additive fields beyond the minimal contract.
    study_uid: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    n_instances: int | None = None
    shape: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    kind: Literal["patient", "phantom"] = "patient"  # phantom series never count in patient QC figures
    # False while more instances of the series may still arrive (a verdict from a fast completion signal,
    # replaced or confirmed later; see docs/dicom.md). ``completion``: which signal decided, what it replaces.
    final: bool = True
    completion: dict[str, Any] | None = None

    @property
    def actions(self) -> list[str]:
        """Technologist actions of failing checks first, then warnings."""
        out: list[str] = []
        for wanted in ("fail", "warn"):
            for c in self.checks.values():
                if c.status == wanted and c.action and c.action not in out:
                    out.append(c.action)
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "input": self.input,
            "series_uid": self.series_uid,
            "modality": self.modality,
            "status": self.status,
            "checks": {name: c.to_dict() for name, c in self.checks.items()},
        }
        if self.error is not None:
            d["error"] = self.error
        d["elapsed_ms"] = round(self.elapsed_ms, 2)
        d.update(
            study_uid=self.study_uid,
            series_description=self.series_description,
            series_number=self.series_number,
            n_instances=self.n_instances,
            shape=list(self.shape) if self.shape else None,
            spacing_mm=[round(s, 4) for s in self.spacing_mm] if self.spacing_mm else None,
            actions=self.actions,
            notes=self.notes,
            timings_ms={k: round(v, 2) for k, v in self.timings_ms.items()},
            kind=self.kind,
            final=self.final,
        )
        if self.completion is not None:
            d["completion"] = self.completion
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(
            input=d["input"],
            series_uid=d.get("series_uid"),
            modality=d.get("modality"),
            status=d["status"],
            checks={k: CheckResult.from_dict(v) for k, v in d.get("checks", {}).items()},
            error=d.get("error"),
            elapsed_ms=d.get("elapsed_ms", 0.0),
            study_uid=d.get("study_uid"),
            series_description=d.get("series_description"),
            series_number=d.get("series_number"),
            n_instances=d.get("n_instances"),
            shape=tuple(d["shape"]) if d.get("shape") else None,
            spacing_mm=tuple(d["spacing_mm"]) if d.get("spacing_mm") else None,
            notes=list(d.get("notes", [])),
            timings_ms=dict(d.get("timings_ms", {})),
            kind=d.get("kind", "patient"),
            final=bool(d.get("final", True)),
            completion=d.get("completion"),
        )

    @classmethod
    def from_error(cls, input: str, code: str, message: str, elapsed_ms: float = 0.0, **kw: Any) -> Verdict:
        return cls(input=input, series_uid=kw.pop("series_uid", None), modality=kw.pop("modality", None),
                   status="error", error={"code": code, "message": message}, elapsed_ms=elapsed_ms, **kw)

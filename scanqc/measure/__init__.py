"""Phantom measurements: pure numpy/scipy functions returning :class:`Measurement`.

A :class:`Measurement` is the core of DICOM TID 300 (a named numeric value, its unit and the region it
was measured in), so ``serving/sr.py`` can later write it as TID 1500 content. The functions know the
geometry of the phantoms they measure (:mod:`scanqc.measure.ct`, :mod:`scanqc.measure.mr`) and find
the phantom in the image themselves (centroid and size of the object); they never read DICOM.

Acceptance criteria with their published sources live in :mod:`scanqc.measure.criteria`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Measurement:
    """One measured quantity: ``name`` (stable key, e.g. ``water_hu``), ``value``, UCUM-ish ``unit``, and
    ``roi``: where it was measured (slice index, centre in pixels, radius in mm, ...), JSON-serialisable."""

    name: str
    value: float
    unit: str
    roi: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": round(float(self.value), 4), "unit": self.unit, "roi": self.roi}


__all__ = ["Measurement"]

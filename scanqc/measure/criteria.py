"""Acceptance criteria for phantom measurements, with their published sources.

Defaults per phantom kind (:data:`KINDS`); a study's guideline may override any of them
(``phantom.tolerances`` in the guideline YAML, docs/guidelines.md). Where no accreditation body sets a
limit (CT noise, MR SNR) the default is scanqc's own and says so: a trial should set it from the
scanner's baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

KINDS = ("ct_water", "ct_acr", "mr_uniform", "mr_acr")

ACR_CT = ("ACR CT Accreditation Program, Phantom Testing Instructions (rev. 2017), "
          "https://accreditationsupport.acr.org/support/solutions/articles/11000056197")
ACR_MR = ("ACR Phantom Test Guidance for Use of the Large MRI Phantom (2018), "
          "https://www.acraccreditation.org/-/media/ACRAccreditation/Documents/MRI/LargePhantomGuidance.pdf")
SCANQC = "scanqc default; no accreditation limit exists: set it from the scanner's baseline in the study guideline"
STUDY = "study guideline"


@dataclass(frozen=True)
class Criterion:
    """``lo <= value <= hi`` (either may be None); ``relative``: the bounds are offsets from the nominal value
    (slice thickness from the header's SliceThickness)."""

    name: str
    label: str
    unit: str
    lo: float | None
    hi: float | None
    source: str
    relative: bool = False

    def bounds(self, nominal: float | None = None) -> tuple[float | None, float | None]:
        if not self.relative:
            return self.lo, self.hi
        n = nominal or 0.0
        return (None if self.lo is None else n + self.lo), (None if self.hi is None else n + self.hi)

    def passes(self, value: float, nominal: float | None = None) -> bool:
        lo, hi = self.bounds(nominal)
        return (lo is None or value >= lo) and (hi is None or value <= hi)

    def describe(self, nominal: float | None = None) -> str:
        unit = {"[hnsf'U]": " HU", "1": "", "%": " %", "mm": " mm"}.get(self.unit, f" {self.unit}")
        if self.relative and self.lo is not None and self.hi is not None and -self.lo == self.hi:
            return f"{nominal:g} +-{self.hi:g}{unit}"
        lo, hi = self.bounds(nominal)
        if lo is not None and hi is not None:
            if -lo == hi:
                return f"+-{hi:g}{unit}"
            return f"{lo:g}..{hi:g}{unit}"
        return f">= {lo:g}{unit}" if lo is not None else f"<= {hi:g}{unit}"

    def with_bounds(self, lo: float | None, hi: float | None) -> Criterion:
        return replace(self, lo=lo, hi=hi, source=STUDY)


HU = "[hnsf'U]"
_CT_COMMON = {
    "water_hu": Criterion("water_hu", "water CT number", HU, -7.0, 7.0, ACR_CT),
    "uniformity_hu": Criterion("uniformity_hu", "uniformity (edge - centre)", HU, -5.0, 5.0, ACR_CT),
    "noise_hu": Criterion("noise_hu", "noise (SD, centre ROI)", HU, None, 10.0, SCANQC),
}
_CT_ACR = {
    "insert_polyethylene_hu": Criterion("insert_polyethylene_hu", "polyethylene CT number", HU, -107.0, -84.0, ACR_CT),
    "insert_acrylic_hu": Criterion("insert_acrylic_hu", "acrylic CT number", HU, 110.0, 135.0, ACR_CT),
    "insert_bone_hu": Criterion("insert_bone_hu", "bone CT number", HU, 850.0, 970.0, ACR_CT),
    "insert_air_hu": Criterion("insert_air_hu", "air CT number", HU, -1005.0, -970.0, ACR_CT),
    "slice_thickness_mm": Criterion("slice_thickness_mm", "slice thickness", "mm", -1.5, 1.5, ACR_CT, relative=True),
    "low_contrast_cnr": Criterion("low_contrast_cnr", "low-contrast CNR (25 mm rod)", "1", 1.0, None, ACR_CT),
}
_MR_COMMON = {
    "piu_pct": Criterion("piu_pct", "percent integral uniformity", "%", 87.5, None, ACR_MR),  # 82.0 at 3 T
    "ghosting_pct": Criterion("ghosting_pct", "percent signal ghosting", "%", None, 2.5, ACR_MR),
    "diameter_error_mm": Criterion("diameter_error_mm", "geometric accuracy (190 mm diameter)", "mm", -2.0, 2.0,
                                   ACR_MR),
    "snr": Criterion("snr", "SNR", "1", 50.0, None, SCANQC),
}
_MR_ACR = {
    "slice_thickness_mm": Criterion("slice_thickness_mm", "slice thickness", "mm", -0.7, 0.7, ACR_MR, relative=True),
}
PIU_3T = 82.0  # ACR: PIU >= 82 % at 3 T, >= 87.5 % below


def default_criteria(kind: str, field_strength_t: float | None = None) -> dict[str, Criterion]:
    """The published (or scanqc) acceptance criteria for a phantom kind."""
    if kind not in KINDS:
        raise ValueError(f"phantom kind {kind!r} not one of {list(KINDS)}")
    if kind.startswith("ct"):
        out = dict(_CT_COMMON)
        if kind == "ct_acr":
            out.update(_CT_ACR)
        return out
    out = dict(_MR_COMMON)
    if field_strength_t is not None and field_strength_t >= 2.5:
        out["piu_pct"] = replace(out["piu_pct"], lo=PIU_3T)
    if kind == "mr_acr":
        out.update(_MR_ACR)
    return out


MEASUREMENT_NAMES = frozenset(n for k in KINDS for n in default_criteria(k))

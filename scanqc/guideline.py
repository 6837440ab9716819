"""Image acquisition guidelines: the per-study YAML that says what a compliant series looks like.

A guideline lists the series a study expects (matched by modality and SeriesDescription), with
the acquisition parameters allowed for each, the study visits with their windows, and the series
each visit requires. See ``scanqc/guidelines/*.yaml`` for the shipped examples and
``docs/guidelines.md`` for the schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex
import yaml

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.measure.criteria import MEASUREMENT_NAMES

PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")
COVERAGE_REGIONS = ("whole_brain", "liver_dome_to_kidneys")
_RANGE_FIELDS = ("slice_thickness_mm", "pixel_spacing_mm", "fov_mm", "matrix", "kvp", "tr_ms", "te_ms",
                 "field_strength_t")
EXAMPLES_DIR = Path(__file__).parent / "guidelines"

# Guideline regexes (series ``match``, ``subject_id_pattern``) may come from the admin API, so they are
# bounded three ways: shapes that backtrack exponentially are refused when the guideline is read, header
# values longer than MAX_MATCH_INPUT never match (DICOM LO/SH values hold at most 64 characters), and every
# match runs under the ``regex`` package's timeout (the stdlib ``re`` has none), so a pattern that still
# backtracks costs at most MATCH_TIMEOUT_S per distinct value (results are cached per pattern and value).
MAX_PATTERN_CHARS = 256
MAX_MATCH_INPUT = 256
MATCH_TIMEOUT_S = 0.05


def _backtracking_shape(tokens: Any, in_repeat: bool = False) -> bool:
    """A variable repeat or an alternation inside a repeat: ``(a+)+``, ``(a|a)*``, ``(x?)*``."""
    for op, av in tokens:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, sub = av
            if in_repeat and lo != hi:
                return True
            if _backtracking_shape(sub, in_repeat or hi > 1):
                return True
        elif name == "BRANCH":
            if in_repeat or any(_backtracking_shape(alt, in_repeat) for alt in av[1]):
                return True
        elif name == "SUBPATTERN":
            if _backtracking_shape(av[-1], in_repeat):
                return True
        elif name in ("ASSERT", "ASSERT_NOT", "ATOMIC_GROUP"):
            if _backtracking_shape(av[-1] if isinstance(av, tuple) else av, in_repeat):
                return True
        elif name == "GROUPREF_EXISTS":
            if any(b is not None and _backtracking_shape(b, in_repeat) for b in av[1:]):
                return True
    return False


def validate_pattern(pattern: Any, where: str) -> str:
    """A guideline regex, checked: a string, compiles, short, and not of a catastrophic-backtracking shape."""
    if not isinstance(pattern, str):
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: must be a regular expression string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: pattern longer than {MAX_PATTERN_CHARS} characters")
    try:
        re.compile(pattern)
        regex.compile(pattern)
    except (re.error, regex.error) as exc:
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: bad regex {pattern!r} ({exc})") from None
    try:
        try:
            from re import _parser as sre_parse  # Python 3.11+
        except ImportError:  # pragma: no cover - Python 3.10
            import sre_parse  # type: ignore[no-redef]
        tokens = sre_parse.parse(pattern)
    except Exception:  # the parser is internal; the match timeout still bounds the pattern
        return pattern
    if _backtracking_shape(tokens):
        raise ScanQCError(ErrorCode.BAD_GUIDELINE,
                          f"{where}: regex {pattern!r} nests a repeat or an alternation inside a repeat "
                          "(catastrophic backtracking); use a character class or a fixed count, "
                          "e.g. [A-Z]{2}-[0-9]{4}")
    return pattern


@lru_cache(maxsize=4096)
def _match(pattern: str, text: str, full: bool) -> bool | None:
    """True/False, or None when the match ran past MATCH_TIMEOUT_S (cached too, so it costs once)."""
    try:
        fn = regex.fullmatch if full else regex.search
        return fn(pattern, text, timeout=MATCH_TIMEOUT_S) is not None
    except TimeoutError:
        return None


def pattern_matches(pattern: str, text: str, *, full: bool, where: str = "guideline regex") -> bool:
    """Bounded regex match of a header value (``full``: the whole value must match)."""
    if len(text) > MAX_MATCH_INPUT:
        return False
    hit = _match(pattern, text, full)
    if hit is None:
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: pattern took longer than {MATCH_TIMEOUT_S:g} s "
                                                   "on a header value; simplify it")
    return hit


def _range(value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        lo, hi = float(value[0]), float(value[1])
        if lo <= hi:
            return lo, hi
    raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: expected a number or [min, max], got {value!r}")


@dataclass
class SeriesRule:
    id: str
    label: str = ""
    modality: str | None = None
    match: str | None = None  # regex on SeriesDescription
    body_part: list[str] = field(default_factory=list)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    contrast: str | None = None  # "required" | "none" | None (not checked)
    expected_phase: str | None = None
    coverage: str | None = None
    actions: dict[str, str] = field(default_factory=dict)  # per-field technologist action overrides

    def matches(self, modality: str | None, description: str | None) -> bool:
        if self.modality and modality and self.modality.upper() != modality.upper():
            return False
        if self.match:
            return bool(description) and pattern_matches(self.match, description or "", full=False,
                                                         where=f"series {self.id} match")
        return True


# Header conventions for phantom series: SeriesDescription, ProtocolName, PatientName, PatientID or
# StudyDescription containing one of these words.
DEFAULT_PHANTOM_MATCH = r"(?i)\bphantom\b|\bACR\b|\bQA\b|\bqualification\b"


@dataclass
class DriftRules:
    """Westgard/Shewhart-style rules over a scanner's phantom history (docs/phantom-qc.md).

    - ``trend_points`` consecutive results each higher (or each lower) than the one before -> warn
      (Nelson rule 3 uses six);
    - ``warn_points`` consecutive results beyond ``warn_fraction`` of the tolerance half-width from its
      centre, on the same side -> warn (Westgard 2-2s with the warning limit at 2/3 of the tolerance).
    One result outside the tolerance is the phantom check's own fail.
    """

    trend_points: int = 6
    warn_points: int = 2
    warn_fraction: float = 2.0 / 3.0


@dataclass
class PhantomSpec:
    """The guideline's ``phantom:`` section: how phantom series are recognised and judged."""

    match: str = DEFAULT_PHANTOM_MATCH
    stations: list[str] = field(default_factory=list)  # AE titles / stations whose every series is a phantom
    all_series: bool = False  # a qualification-only study: every series is a phantom
    interval_days: int = 30  # qualification valid this long after a passing phantom
    required: bool = False  # patient series from a scanner not qualified carry a warning
    drift: DriftRules = field(default_factory=DriftRules)
    tolerances: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


def _open_range(value: Any, where: str) -> tuple[float | None, float | None]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)
    if ok and value[0] is not None and value[1] is not None and value[0] > value[1]:
        ok = False
    if not ok or (value[0] is None and value[1] is None):
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: expected [min, max] (either may be null), got {value!r}")
    return (None if value[0] is None else float(value[0])), (None if value[1] is None else float(value[1]))


def parse_phantom(data: Any, source: str) -> PhantomSpec:
    where = f"{source}: phantom"
    if not isinstance(data, dict):
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: must be a mapping, got {type(data).__name__}")
    unknown = set(data) - {"match", "stations", "all_series", "interval_days", "required", "drift", "tolerances"}
    if unknown:
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: unknown field(s) {sorted(unknown)}")
    spec = PhantomSpec(required=True)
    if "match" in data:
        try:
            re.compile(str(data["match"]))
        except re.error as exc:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}.match: bad regex {data['match']!r} ({exc})") from None
        spec.match = str(data["match"])
    stations = data.get("stations") or []
    if not isinstance(stations, list) or not all(isinstance(x, str) for x in stations):
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}.stations: expected a list of AE titles, got {stations!r}")
    spec.stations = [x.strip() for x in stations]
    for key in ("all_series", "required"):
        if key in data:
            if not isinstance(data[key], bool):
                raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}.{key}: expected true/false, got {data[key]!r}")
            setattr(spec, key, data[key])
    if "interval_days" in data:
        v = data["interval_days"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE,
                              f"{where}.interval_days: expected a whole number >= 1, got {v!r}")
        spec.interval_days = v
    drift = data.get("drift") or {}
    if not isinstance(drift, dict) or set(drift) - {"trend_points", "warn_points", "warn_fraction"}:
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}.drift: fields are trend_points, warn_points, "
                                                   f"warn_fraction; got {drift!r}")
    for key in ("trend_points", "warn_points"):
        v = drift.get(key, getattr(spec.drift, key))
        if not isinstance(v, int) or isinstance(v, bool) or v < 2:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}.drift.{key}: expected a whole number >= 2, got {v!r}")
        setattr(spec.drift, key, v)
    frac = drift.get("warn_fraction", spec.drift.warn_fraction)
    if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 < frac < 1:
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}.drift.warn_fraction: expected 0 < x < 1, got {frac!r}")
    spec.drift.warn_fraction = float(frac)
    tol = data.get("tolerances") or {}
    if not isinstance(tol, dict):
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}.tolerances: must be a mapping")
    bad = set(tol) - MEASUREMENT_NAMES
    if bad:
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}.tolerances: unknown measurement(s) {sorted(bad)} "
                                                   f"(known: {sorted(MEASUREMENT_NAMES)})")
    spec.tolerances = {k: _open_range(v, f"{where}.tolerances.{k}") for k, v in tol.items()}
    return spec


@dataclass
class Visit:
    name: str
    day: int
    window_days: int = 0
    required_series: list[str] = field(default_factory=list)


@dataclass
class Guideline:
    study: str
    title: str = ""
    modality: str | None = None
    series: list[SeriesRule] = field(default_factory=list)
    visits: list[Visit] = field(default_factory=list)
    subject_id_pattern: str | None = None
    source: str | None = None  # file it was read from
    raw: dict[str, Any] = field(default_factory=dict)
    phantom: PhantomSpec | None = None  # the ``phantom:`` section; None = header conventions and defaults

    def rule_for(self, modality: str | None, description: str | None) -> SeriesRule | None:
        """First rule matching modality and description; a lone rule of the modality otherwise."""
        for r in self.series:
            if r.matches(modality, description):
                return r
        # A description that names a rule of another modality: match it so the modality deviation shows.
        for r in self.series:
            if r.match and r.matches(None, description):
                return r
        same = [r for r in self.series if not r.modality or not modality or r.modality.upper() == modality.upper()]
        return same[0] if len(same) == 1 and not description else None

    def visit(self, name: str | None) -> Visit | None:
        if not name:
            return None
        for v in self.visits:
            if v.name.lower() == str(name).strip().lower():
                return v
        return None

    @property
    def baseline(self) -> Visit | None:
        return min(self.visits, key=lambda v: v.day) if self.visits else None


def parse_guideline(data: dict[str, Any], source: str = "<dict>") -> Guideline:
    if not isinstance(data, dict):
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{source}: top level must be a mapping, got {type(data).__name__}")
    if not data.get("study"):
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{source}: missing 'study' (the study identifier)")
    default_modality = data.get("modality")
    rules: list[SeriesRule] = []
    for i, s in enumerate(data.get("series") or []):
        where = f"{source}: series[{i}]"
        if not isinstance(s, dict) or not s.get("id"):
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: each series needs an 'id'")
        unknown = set(s) - {"id", "label", "modality", "match", "body_part", "contrast", "expected_phase",
                            "coverage", "actions", *_RANGE_FIELDS}
        if unknown:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: unknown field(s) {sorted(unknown)}")
        if s.get("match"):
            validate_pattern(s["match"], f"{where}: 'match'")
        phase = s.get("expected_phase")
        if phase is not None and phase not in PHASES:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: expected_phase {phase!r} not one of {list(PHASES)}")
        contrast = s.get("contrast")
        if contrast is not None and contrast not in ("required", "none"):
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: contrast {contrast!r} must be 'required' or 'none'")
        cov = s.get("coverage")
        if cov is not None and cov not in COVERAGE_REGIONS:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: coverage {cov!r} not one of {list(COVERAGE_REGIONS)}")
        body = s.get("body_part") or []
        rules.append(SeriesRule(
            id=str(s["id"]), label=str(s.get("label", "")), modality=s.get("modality", default_modality),
            match=s.get("match"), body_part=[str(b).upper() for b in ([body] if isinstance(body, str) else body)],
            ranges={k: _range(s[k], f"{where}.{k}") for k in _RANGE_FIELDS if k in s},
            contrast=contrast, expected_phase=phase, coverage=cov, actions=dict(s.get("actions") or {}),
        ))
    ids = {r.id for r in rules}
    visits: list[Visit] = []
    for i, v in enumerate(data.get("visits") or []):
        where = f"{source}: visits[{i}]"
        if not isinstance(v, dict) or "name" not in v or "day" not in v:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: each visit needs 'name' and 'day'")
        req = list(v.get("required_series") or [])
        missing = [r for r in req if r not in ids]
        if missing:
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: required_series {missing} not defined under 'series'")
        try:
            visits.append(Visit(str(v["name"]), int(v["day"]), int(v.get("window_days", 0)), req))
        except (TypeError, ValueError):
            raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{where}: day/window_days must be integers") from None
    pattern = data.get("subject_id_pattern")
    if pattern:
        validate_pattern(pattern, f"{source}: subject_id_pattern")
    phantom = parse_phantom(data["phantom"], source) if data.get("phantom") is not None else None
    return Guideline(study=str(data["study"]), title=str(data.get("title", "")), modality=default_modality,
                     series=rules, visits=visits, subject_id_pattern=pattern, source=source, raw=data,
                     phantom=phantom)


def shipped_guideline_path(name: str) -> Path | None:
    """The file of a guideline shipped with scanqc (``abdomen_ct``, ``brain_mr``), or None: never another file."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(name or "")):
        return None
    p = EXAMPLES_DIR / f"{name}.yaml"
    return p if p.is_file() else None


def load_guideline(path: str | Path) -> Guideline:
    """Read a guideline YAML file; a bare name like ``brain_mr`` loads a shipped example.

    For the operator's own paths (CLI ``--protocol``, the settings file's ``studies``); never call it with a
    name a client sent (the service resolves those through its configuration only).
    """
    p = Path(path)
    if not p.exists() and (EXAMPLES_DIR / f"{path}.yaml").exists():
        p = EXAMPLES_DIR / f"{path}.yaml"
    if not p.is_file():
        shipped = sorted(x.stem for x in EXAMPLES_DIR.glob("*.yaml"))
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{path}: guideline file not found (shipped examples: {shipped})")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ScanQCError(ErrorCode.BAD_GUIDELINE, f"{path}: not valid YAML ({exc})") from None
    return parse_guideline(data, str(p))

"""Write a labeled training set to disk: volumes (NIfTI or DICOM) plus ``manifest.csv``.

Tasks:

- ``motion``: brain MR from the MNI152 template with benign variation; rigid k-space motion
  (:mod:`~scanqc.datasets.motion`) or periodic ghosting (:mod:`~scanqc.datasets.ghosting`); labels
  none / mild / severe with the severity parameter; a moved case whose artefact is buried in the noise
  (artefact-to-noise ratio below ``min_artefact_to_noise``) is drawn again (:func:`_motion_visible`).
- ``contrast_phase``: abdominal CT phantom (:mod:`~scanqc.datasets.ct_phantom`); label = the phase the
  image shows, plus enhancement optimal / suboptimal (a portal-venous scan timed early is labelled
  arterial, see :func:`_contrast_case`).
- ``coverage``: brain MR and abdominal CT, cut at the superior or inferior end or complete.

``generator="abdomen"`` (contrast_phase, coverage) draws the abdominal CT cases from the domain-randomised
generator :mod:`~scanqc.datasets.abdomen` instead of the phantom (coverage then has abdominal cases only);
the default ``"phantom"`` reproduces the data of the models up to contrast_phase 1.2.0 / coverage 1.2.0.

Every case has its own generator seeded from ``(seed, case index, variant)``, so the data do not
depend on ``workers`` and the same seed gives the same data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scanqc.datasets import motion as motion_mod
from scanqc.datasets.manifest import TASK_LABELS, ManifestRow, write_manifest
from scanqc.datasets.variants import BRAIN_VARIANTS, check_variant, pick_range

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.volume import Volume

TASKS = tuple(TASK_LABELS)
FORMATS = ("nifti", "dicom")
ANATOMIES = ("template", "head")
GENERATORS = ("phantom", "abdomen")
BRAIN_RESOLUTION_MM = 2.0
_VARIANT_CODE = {"train": 0, "test": 1}
# Orientations of brain acquisitions: (name, array order from canonical, flips) - see geometry.reorient.
ORIENTATIONS = {
    "axial": ((0, 1, 2), (False, False, False)),
    "sagittal": ((2, 0, 1), (False, True, False)),
    "coronal": ((1, 0, 2), (False, True, False)),
}


# Redraws of a motion case whose artefact is buried in the noise; 1/4-1/3 of mild draws are, so 50 never run out
# unless the threshold is far above the data (then a coded error says so).
MAX_MOTION_DRAWS = 50


def case_rng(seed: int, index: int, variant: str, draw: int = 0) -> np.random.Generator:
    """The case's generator; ``draw > 0`` is an independent stream for a redrawn case (draw 0 is unchanged)."""
    key = [int(seed), int(index), _VARIANT_CODE[variant]]
    return np.random.default_rng(key + [int(draw)] if draw else key)


# ----------------------------------------------------------------------------- brain MR
def _brain_base(rng: np.random.Generator, variant: str, orientation: str | None = None,
                spacing: tuple[float, float, float] | None = None,
                ) -> tuple[Volume, np.ndarray, dict[str, Any]]:
    """MNI base -> deformation -> orientation -> resolution. Returns volume, required mask, params."""
    from scanqc.datasets.base import mni_t1, required_brain_mask
    from scanqc.datasets.deform import apply_deformation, random_deformation
    from scanqc.datasets.geometry import reorient, reorient_array
    from scanqc.datasets.resample import apply_resample, random_spacing

    v = BRAIN_VARIANTS[variant]
    base = mni_t1(BRAIN_RESOLUTION_MM)
    mask = required_brain_mask(BRAIN_RESOLUTION_MM).astype(np.float32)
    d = random_deformation(rng, pick_range(rng, v["rotation_deg"]), pick_range(rng, v["scale"]),  # type: ignore[arg-type]
                           bool(v["flip_lr"]), pick_range(rng, v["elastic_mm"]))  # type: ignore[arg-type]
    arr = apply_deformation(base.array, d, base.spacing)
    mask = apply_deformation(mask, d, base.spacing)
    vol = base.with_array(arr.astype(np.float32))
    if orientation is None:
        orientation = str(rng.choice(list(ORIENTATIONS), p=[0.6, 0.25, 0.15]))
    order, flips = ORIENTATIONS[orientation]
    vol = reorient(vol, order, flips)
    mask = reorient_array(mask, order, flips)
    sp = spacing or random_spacing(rng, BRAIN_RESOLUTION_MM, (1.0, 1.25), (1.0, 2.2))
    m_vol = apply_resample(vol.with_array(mask), sp)
    vol = apply_resample(vol, sp)
    params = {"base": f"MNI152_2009a_{BRAIN_RESOLUTION_MM:g}mm", "deformation": d.to_dict(),
              "orientation": orientation, "spacing_mm": list(sp)}
    return vol, m_vol.array > 0.5, params


def _brain_finish(vol: Volume, rng: np.random.Generator, variant: str, params: dict,
                  artefact: Callable[[Volume], Volume] | None = None, fov_axes: tuple[int, ...] = (0, 1, 2),
                  mask: np.ndarray | None = None) -> Volume:
    """Bias field -> artefact (k-space) -> FOV padding -> Rician noise -> gamma -> scale."""
    from scanqc.datasets.bias_field import apply_bias_field, random_bias_coefficients
    from scanqc.datasets.geometry import crop_pad
    from scanqc.datasets.intensity import apply_gamma, apply_scale, random_scale
    from scanqc.datasets.noise import apply_rician_noise

    v = BRAIN_VARIANTS[variant]
    coef = random_bias_coefficients(rng, 3, pick_range(rng, v["bias_strength"]))  # type: ignore[arg-type]
    vol = vol.with_array(apply_bias_field(vol.array, coef))
    if artefact is not None:
        vol = artefact(vol)
    before = [int(rng.integers(0, 10)) if a in fov_axes else 0 for a in range(3)]
    after = [int(rng.integers(0, 10)) if a in fov_axes else 0 for a in range(3)]
    vol = crop_pad(vol, before, after, 0.0)
    sigma = float(rng.uniform(0.01, 0.04))  # relative to the [0, 1] template: SNR ~ 20-80 in white matter
    vol = vol.with_array(apply_rician_noise(vol.array, sigma, rng))
    gamma = float(np.exp(rng.uniform(*pick_range(rng, v["log_gamma"]))))  # type: ignore[arg-type]
    scale = random_scale(rng)
    vol = vol.with_array(apply_scale(apply_gamma(vol.array, gamma), scale))
    vol.modality = "MR"
    params.update({"bias_coefficients_max": round(max(abs(c) for c in coef), 3), "fov_pad": [before, after],
                   "rician_sigma": round(sigma, 4), "gamma": round(gamma, 3), "intensity_scale": round(scale, 1)})
    return vol


def _motion_case(rng: np.random.Generator, label: str, variant: str) -> tuple[Volume, dict, dict]:
    from scanqc.datasets.ghosting import simulate_ghosting

    vol, brain, params = _brain_base(rng, variant)
    lo, hi = motion_mod.LABEL_RANGES[label]
    severity = float(rng.uniform(lo, hi)) if hi > 0 else 0.0
    kind = "none" if severity == 0 else ("rigid" if rng.uniform() < 0.7 else "periodic")
    info: dict[str, Any] = {}

    def artefact(v: Volume) -> Volume:
        if kind == "rigid":
            arr, p = motion_mod.simulate_motion(v.array, severity, rng, v.spacing)
            info.update(p.to_dict())
        elif kind == "periodic":
            arr, g = simulate_ghosting(v.array, severity, rng, v.spacing)
            info.update(g.to_dict())
        else:
            return v
        # How much the artefact changed the brain, in template intensity units (no noise yet).
        info["artefact_rms"] = float(np.sqrt(np.mean((arr - v.array)[brain] ** 2))) if brain.any() else 0.0
        return v.with_array(arr)

    vol = _brain_finish(vol, rng, variant, params, artefact)
    if "artefact_rms" in info:
        # Artefact-to-noise ratio: RMS change inside the brain over the Rician noise sigma added afterwards.
        # Below ~0.3 the artefact is buried in the noise (docs/models.md: detection by this ratio).
        info["artefact_to_noise"] = round(info["artefact_rms"] / params["rician_sigma"], 4)
        info["artefact_rms"] = round(info["artefact_rms"], 5)
    params["artefact"] = {"kind": kind, "severity": round(severity, 4), **info}
    acq = info.get("acquisition", "3d")
    fields = {"modality": "MR", "label": label, "severity": round(severity, 4), "body_region": "brain"}
    return vol, fields, {"mr_acquisition": acq, "orientation": params["orientation"], **params}


def _brain_coverage_case(rng: np.random.Generator, label: str, variant: str) -> tuple[Volume, dict, dict]:
    from scanqc.datasets.coverage import crop_coverage, random_coverage
    from scanqc.datasets.geometry import superior_axis

    vol, mask, params = _brain_base(rng, variant)
    # The MNI template ends ~8 mm below the cerebellum: small inferior margins avoid padding air
    # under a brainstem that would then look cut.
    cp = random_coverage(rng, label, margin_mm=(4.0, 30.0))
    from scanqc.datasets.coverage import CoverageParams
    cp = CoverageParams(cp.end, cp.margin_superior_mm, min(cp.margin_inferior_mm, float(rng.uniform(3, 8))),
                        cp.cut_fraction)
    vol, mask, cinfo = crop_coverage(vol, mask, cp, fill=0.0)
    ax, _ = superior_axis(vol)
    vol = _brain_finish(vol, rng, variant, params, None, fov_axes=tuple(a for a in range(3) if a != ax))
    params["coverage"] = cinfo
    fields = {"modality": "MR", "label": label, "missing": cp.missing, "body_region": "brain"}
    return vol, fields, params


# ----------------------------------------------------------------------------- abdomen CT
def _contrast_case(rng: np.random.Generator, label: str, variant: str,
                   suboptimal_rate: float = 0.3) -> tuple[Volume, dict, dict]:
    from scanqc.datasets.ct_phantom import make_abdomen_phantom

    enh = "suboptimal" if label != "non_contrast" and rng.uniform() < suboptimal_rate else "optimal"
    vol, _, info = make_abdomen_phantom(rng, label, enh, variant=variant)
    shown, shown_enh = label, ("" if label == "non_contrast" else enh)
    if label == "portal_venous" and (info.get("suboptimal") or {}).get("kind") == "mistimed_early":
        # Scanned 10-33 % of the way from the arterial to the portal-venous phase: the image *is* a late
        # arterial phase (aorta > 230 HU, liver < 100 HU), and nothing in it can tell the intended phase.
        # The label is the phase the image shows, so the check answers "expected portal venous, got
        # arterial" (the timing error a technologist can act on); how well a late-arterial scan enhanced
        # for the phase it was meant to be is undefined, so enhancement is left unlabelled.
        shown, shown_enh = "arterial", ""
        info["intended_phase"] = label
    fields = {"modality": "CT", "label": shown, "phase": shown, "enhancement": shown_enh, "body_region": "abdomen"}
    return vol, fields, info


def _ct_coverage_case(rng: np.random.Generator, label: str, variant: str) -> tuple[Volume, dict, dict]:
    from scanqc.datasets.coverage import crop_coverage, random_coverage
    from scanqc.datasets.ct_phantom import PHASES, make_abdomen_phantom, required_abdomen_mask

    phase = str(rng.choice(PHASES))
    vol, labels, info = make_abdomen_phantom(rng, phase, "optimal", variant=variant, margins_mm=(85.0, 65.0))
    cp = random_coverage(rng, label, margin_mm=(5.0, 60.0))
    vol, _, cinfo = crop_coverage(vol, required_abdomen_mask(labels), cp, fill=-1000.0)
    info["coverage"] = cinfo
    fields = {"modality": "CT", "label": label, "missing": cp.missing, "phase": phase, "body_region": "abdomen"}
    return vol, fields, info


# ----------------------------------------------------------------------------- writing
def dicom_header(fields: dict, provenance: dict, case_id: str) -> dict[str, Any]:
    """Realistic acquisition attributes for a generated case."""
    if fields["modality"] == "CT":
        # The protocol's phase (what the site meant to acquire), not the one the image shows.
        phase = provenance.get("intended_phase") or fields.get("phase") or "non_contrast"
        desc = {"non_contrast": "ABD NON-CON", "arterial": "ABD ARTERIAL 35s", "portal_venous": "ABD PORTAL VENOUS 70s",
                "delayed": "ABD DELAYED 3min"}[phase]
        thick = provenance.get("spacing_mm", [3.0])[0]
        h: dict[str, Any] = {"Modality": "CT", "BodyPartExamined": "ABDOMEN", "KVP": 120,
                             "SeriesDescription": f"{desc} {thick:g}mm", "XRayTubeCurrent": 200,
                             "ConvolutionKernel": "STANDARD", "Manufacturer": "SCANQC-SIM",
                             "ProtocolName": "ABDOMEN ROUTINE"}
        if phase != "non_contrast":
            h.update({"ContrastBolusAgent": "IOHEXOL 350", "ContrastBolusRoute": "IV",
                      "ContrastBolusVolume": 100})
        return h
    if "contrast" in provenance:  # a randomised head (scanqc.datasets.head)
        from scanqc.datasets.head import head_header

        return head_header(provenance)
    acq = provenance.get("mr_acquisition", "3d")
    orient = {"axial": "AX", "sagittal": "SAG", "coronal": "COR"}[provenance.get("orientation", "axial")]
    return {"Modality": "MR", "BodyPartExamined": "BRAIN", "Manufacturer": "SCANQC-SIM",
            "SeriesDescription": f"T1 {'MPRAGE 3D' if acq == '3d' else 'SE 2D'} {orient}",
            "MRAcquisitionType": acq.upper(), "RepetitionTime": 2300 if acq == "3d" else 550,
            "EchoTime": 2.98 if acq == "3d" else 12.0, "InversionTime": 900 if acq == "3d" else None,
            "MagneticFieldStrength": 3.0, "FlipAngle": 9 if acq == "3d" else 90,
            "ScanningSequence": ["GR", "IR"] if acq == "3d" else ["SE"], "InPlanePhaseEncodingDirection": "COL",
            "ProtocolName": "BRAIN T1"}


def write_case(vol: Volume, out: Path, case_id: str, fmt: str, header: dict[str, Any]) -> str:
    """Write one case; returns its path relative to ``out``."""
    header = {k: v for k, v in header.items() if v is not None}
    # Pseudonym in the form the example guidelines accept, so de-identification passes.
    header.setdefault("PatientID", "SUBJ-0001")
    header.setdefault("PatientName", header["PatientID"])
    if fmt == "dicom":
        from scanqc.io.dicom_write import write_dicom_series

        folder = out / "cases" / case_id
        write_dicom_series(vol, folder, header["Modality"], header=header)
        return f"cases/{case_id}"
    from scanqc.io.nifti import write_nifti

    path = out / "cases" / f"{case_id}.nii.gz"
    write_nifti(vol, path)
    # BIDS-style sidecar: NIfTI has no modality; scanqc.series reads it next to the file.
    sidecar = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in header.items()}
    (out / "cases" / f"{case_id}.json").write_text(json.dumps(sidecar, indent=1))
    return f"cases/{case_id}.nii.gz"


def _motion_visible(index: int, label: str, seed: int, variant: str,
                    min_anr: float, anatomy: str = "template") -> tuple[Volume, dict, dict]:
    """A motion case whose artefact, if any, reaches ``min_anr`` times the noise sigma (visible-artefact rule).

    Draw 0 is the case as it always was; only a buried artefact is redrawn from an independent stream, so
    every case that already met the rule keeps its image.
    """
    for draw in range(MAX_MOTION_DRAWS):
        make = _motion_case
        if anatomy == "head":
            from scanqc.datasets.head import head_motion_case as make
        vol, fields, prov = make(case_rng(seed, index, variant, draw), label, variant)
        art = prov["artefact"]
        if art.get("artefact_to_noise", np.inf) >= min_anr:
            art["min_artefact_to_noise"] = min_anr
            if draw:
                art["redraws"] = draw
            return vol, fields, prov
    raise ScanQCError(ErrorCode.USAGE, f"motion case {index} ({label}): no draw in {MAX_MOTION_DRAWS} reached "
                                       f"artefact-to-noise {min_anr!r}; lower min_artefact_to_noise (default "
                                       f"{motion_mod.MIN_ARTEFACT_TO_NOISE})")


def _one_case(job: tuple) -> ManifestRow:
    task, index, label, seed, variant, split, out, fmt, kind, min_anr, anatomy, generator = job
    if task == "motion":  # draws its own generators (one per redraw)
        vol, fields, prov = _motion_visible(index, label, seed, variant, min_anr, anatomy)
    elif generator == "abdomen" and kind == "abdomen":
        from scanqc.datasets.abdomen import abdomen_case

        vol, fields, prov = abdomen_case(case_rng(seed, index, variant), task, label, variant)
    else:
        rng = case_rng(seed, index, variant)
        make = _contrast_case if task == "contrast_phase" else (
            _brain_coverage_case if kind == "brain" else _ct_coverage_case)
        if anatomy == "head" and make is _brain_coverage_case:
            from scanqc.datasets.head import head_coverage_case as make
        vol, fields, prov = make(rng, label, variant)
    case_id = f"{task}-{index:05d}"
    path = write_case(vol, Path(out), case_id, fmt, dicom_header(fields, prov, case_id))
    gen = f"scanqc.datasets.generate:{task}" + (":head" if anatomy == "head" and fields["modality"] == "MR" else "")
    prov = {"generator": gen, "seed": seed, "index": index, "variant": variant,
            "shape": list(vol.shape), "spacing_mm": [round(s, 3) for s in vol.spacing], **prov}
    return ManifestRow(case_id=case_id, path=path, modality=fields["modality"], task=task, label=fields["label"],
                       severity=fields.get("severity"), phase=fields.get("phase", ""),
                       enhancement=fields.get("enhancement", ""), missing=fields.get("missing", []),
                       body_region=fields["body_region"], split=split, provenance=_jsonable(prov))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float):
        return round(obj, 5)
    return obj


def plan(task: str, n: int, seed: int, variant: str, val_fraction: float,
         generator: str = "phantom") -> list[tuple[str, str, str]]:
    """(label, split, body kind) per case: classes balanced, splits ~(1 - val_fraction)/val_fraction."""
    classes = TASK_LABELS[task]
    rng = np.random.default_rng([int(seed), 7919, _VARIANT_CODE[variant]])
    labels = [classes[i % len(classes)] for i in rng.permutation(n)]
    n_val = round(n * val_fraction)
    val = set(rng.permutation(n)[:n_val].tolist())
    splits = ["test" if variant == "test" else ("val" if i in val else "train") for i in range(n)]
    if task == "motion":
        kinds = ["brain"] * n
    elif task == "contrast_phase" or generator == "abdomen":
        kinds = ["abdomen"] * n
    else:
        kinds = [("brain", "abdomen")[int(v)] for v in rng.permutation(n) % 2]
    return list(zip(labels, splits, kinds))


def generate(task: str, n: int, out: Path | str, seed: int = 0, workers: int = 1, fmt: str = "nifti",
             variant: str = "train", val_fraction: float = 0.2, progress: bool | Callable[[int, int], None] = False,
             min_artefact_to_noise: float = motion_mod.MIN_ARTEFACT_TO_NOISE, anatomy: str = "template",
             generator: str = "phantom") -> Path:
    """Generate ``n`` cases for ``task`` into ``out`` and return the path of ``out/manifest.csv``.

    ``variant='test'`` draws from ranges disjoint from training (:mod:`scanqc.datasets.variants`)
    and marks every row ``split=test``; otherwise ~``val_fraction`` of rows are ``val``.
    ``progress`` is True (rich progress bar) or a callback ``(done, total)``. ``min_artefact_to_noise``
    (motion): a moved case is redrawn until its artefact reaches this share of the noise sigma; 0 keeps every
    draw (the data of motion 1.0.0 and 1.1.0). ``anatomy`` (brain MR cases): ``template`` (the MNI152 brain, the
    data of every model up to motion 1.1.0 / coverage 1.2.0) or ``head`` (domain-randomised whole heads,
    :mod:`scanqc.datasets.head`). ``generator`` (abdominal CT cases of contrast_phase, coverage): ``phantom`` or
    the domain-randomised ``abdomen``.
    """
    if task not in TASKS:
        raise ScanQCError(ErrorCode.USAGE, f"task must be one of {list(TASKS)}, got {task!r}")
    if generator not in GENERATORS:
        raise ScanQCError(ErrorCode.USAGE, f"generator must be one of {list(GENERATORS)}, got {generator!r}")
    if generator == "abdomen" and task == "motion":
        raise ScanQCError(ErrorCode.USAGE, "generator 'abdomen' makes abdominal CT: tasks contrast_phase and "
                                           "coverage only, not motion")
    if fmt not in FORMATS:
        raise ScanQCError(ErrorCode.USAGE, f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    check_variant(variant)
    if int(n) < 1:
        raise ScanQCError(ErrorCode.USAGE, f"n must be >= 1, got {n!r}")
    if not 0 <= val_fraction < 1:
        raise ScanQCError(ErrorCode.USAGE, f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not 0 <= min_artefact_to_noise < 10:
        raise ScanQCError(ErrorCode.USAGE, f"min_artefact_to_noise must be in [0, 10), got {min_artefact_to_noise!r}")
    if anatomy not in ANATOMIES:
        raise ScanQCError(ErrorCode.USAGE, f"anatomy must be one of {list(ANATOMIES)}, got {anatomy!r}")
    workers = max(1, min(int(workers), os.cpu_count() or 1, int(n)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(task, i, label, int(seed), variant, split, str(out), fmt, kind, float(min_artefact_to_noise), anatomy,
             generator)
            for i, (label, split, kind) in enumerate(plan(task, int(n), int(seed), variant, val_fraction, generator))]
    rows: list[ManifestRow] = []
    if progress is True:
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            t = bar.add_task(f"{task} ({fmt})", total=len(jobs))
            for row in _run(jobs, workers):
                rows.append(row)
                bar.advance(t)
    else:
        for row in _run(jobs, workers):
            rows.append(row)
            if callable(progress):
                progress(len(rows), len(jobs))
    return write_manifest(rows, out / "manifest.csv")


def _run(jobs: list[tuple], workers: int):
    if workers == 1:
        for j in jobs:
            yield _one_case(j)
        return
    with ProcessPoolExecutor(max_workers=workers) as ex:
        yield from ex.map(_one_case, jobs, chunksize=1)

"""Realistic sample DICOM series for ``scanqc check --sample``, demos and other packages' tests.

- ``abdomen_ct``: the CT phantom (pure numpy/scipy, no nilearn needed) in the portal venous phase,
  2.5 mm slices, 512 x 512 matrix at 0.78 mm (the example guideline's protocol), with CT headers
  (KVP, contrast agent, bolus start 70 s before acquisition).
- ``brain_mr``: the MNI152 T1 template at 1 mm as a 3D T1 MPRAGE at 3 T, 256 x 256 in-plane
  (needs nilearn, the ``data`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError

KINDS = ("brain_mr", "abdomen_ct")


def _upsample2(a: np.ndarray, axis: int) -> np.ndarray:
    """Linear 2x upsampling along ``axis`` (a tenth of the cost of ``ndimage.zoom`` here)."""
    a = np.moveaxis(a, axis, 0)
    out = np.empty((2 * a.shape[0], *a.shape[1:]), dtype=a.dtype)
    out[0::2] = a
    out[1:-1:2] = (a[:-1] + a[1:]) * 0.5
    out[-1] = a[-1]
    return np.moveaxis(out, 0, axis)


def abdomen_ct_sample(seed: int = 0, phase: str = "portal_venous", enhancement: str = "optimal",
                      slice_mm: float = 2.5, pixel_mm: float = 0.78, matrix: int = 512, **kw: Any):
    """The abdomen sample as ``(Volume, header)``, without writing it."""
    from scanqc.datasets.ct_phantom import make_abdomen_phantom
    from scanqc.datasets.generate import dicom_header
    from scanqc.datasets.geometry import crop_pad_array

    from scanqc.volume import Volume

    rng = np.random.default_rng(seed)
    # Build at half the in-plane resolution and interpolate: same look, a quarter of the work.
    f = 2 if matrix >= 256 else 1
    fov = matrix * pixel_mm
    vol, _, info = make_abdomen_phantom(rng, phase, enhancement, spacing=(slice_mm, pixel_mm * f, pixel_mm * f),
                                        fov_mm=fov, **kw)
    arr = _upsample2(_upsample2(vol.array, 1), 2) if f > 1 else vol.array
    pad = [(0, 0)] + [((matrix - n) // 2, matrix - n - (matrix - n) // 2) for n in arr.shape[1:]]
    arr = crop_pad_array(arr, [0, pad[1][0], pad[2][0]], [0, pad[1][1], pad[2][1]], -1000.0)
    origin = (-(matrix - 1) / 2 * pixel_mm, -(matrix - 1) / 2 * pixel_mm + 5.0, vol.origin[2])
    out = Volume(arr.astype(np.float32), (slice_mm, pixel_mm, pixel_mm), origin, modality="CT")
    fields = {"modality": "CT", "phase": phase}
    header = dicom_header(fields, {"spacing_mm": [slice_mm]}, "sample")
    if phase != "non_contrast":
        delay = {"arterial": 35, "portal_venous": 70, "delayed": 180}[phase]
        header["ContrastBolusStartTime"] = "100000"
        header["AcquisitionTime"] = header["SeriesTime"] = f"10{delay // 60:02d}{delay % 60:02d}"
    header["PatientID"] = header["PatientName"] = "SUBJ-0001"
    return out, header, info


def brain_mr_sample(seed: int = 0, noise: float = 0.015, matrix: int = 256, **_: Any):
    """The brain sample as ``(Volume, header)``: MNI152 1 mm, Rician noise, 256 x 256 in-plane.

    ``seed`` 0 is the template itself (plus noise); any other seed also varies the anatomy with the
    training generator's deformation (rotation up to 8 degrees, scale 0.95-1.05, elastic up to 2.5 mm;
    ``scanqc.datasets.deform``), so different seeds give different heads, not only different noise.
    """
    from scanqc.datasets.base import mni_t1
    from scanqc.datasets.deform import apply_deformation, random_deformation
    from scanqc.datasets.geometry import crop_pad
    from scanqc.datasets.noise import apply_rician_noise

    vol = mni_t1(1.0)
    deformation = None
    if seed:
        d = random_deformation(np.random.default_rng([seed, 1]), (0.0, 8.0), (0.95, 1.05), False, (0.0, 2.5))
        vol = vol.with_array(apply_deformation(vol.array, d, vol.spacing).astype(np.float32))
        deformation = d.to_dict()
    pad_b = [0] + [(matrix - n) // 2 for n in vol.shape[1:]]
    pad_a = [0] + [matrix - n - (matrix - n) // 2 for n in vol.shape[1:]]
    vol = crop_pad(vol, pad_b, pad_a, 0.0)
    arr = apply_rician_noise(vol.array, noise, np.random.default_rng(seed)) * 1000.0
    vol = vol.with_array(arr)
    vol.modality = "MR"
    header = {"Modality": "MR", "BodyPartExamined": "BRAIN", "Manufacturer": "SCANQC-SIM",
              "SeriesDescription": "T1 MPRAGE 3D", "MRAcquisitionType": "3D", "RepetitionTime": 2300,
              "EchoTime": 2.98, "InversionTime": 900, "MagneticFieldStrength": 3.0, "FlipAngle": 9,
              "ScanningSequence": ["GR", "IR"], "InPlanePhaseEncodingDirection": "COL", "ProtocolName": "BRAIN T1",
              "PatientID": "SUBJ-0001", "PatientName": "SUBJ-0001"}
    return vol, header, {"base": "MNI152_2009a_1mm", "noise": noise, "deformation": deformation}


def write_sample(kind: str, folder: Path | str, seed: int = 0, **variation: Any) -> Path:
    """Write a sample series into ``folder`` (created) and return the folder.

    ``variation`` goes to :func:`abdomen_ct_sample` (phase, enhancement, slice_mm, pixel_mm, matrix,
    variant, noise_hu, margins_mm) or :func:`brain_mr_sample` (noise, matrix).
    """
    from scanqc.io.dicom_write import write_dicom_series

    if kind == "abdomen_ct":
        vol, header, _ = abdomen_ct_sample(seed, **variation)
    elif kind == "brain_mr":
        vol, header, _ = brain_mr_sample(seed, **variation)
    else:
        raise ScanQCError(ErrorCode.USAGE, f"sample kind must be one of {list(KINDS)}, got {kind!r}")
    folder = Path(folder)
    write_dicom_series(vol, folder, header["Modality"], header=header)
    return folder

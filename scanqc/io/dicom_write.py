"""Write a :class:`Volume` as a DICOM series (one single-frame instance per slice).

Used to build test fixtures and training data on disk in the same format scanners send, so
every reader path is exercised. Geometry (ImagePositionPatient/ImageOrientationPatient,
PixelSpacing, SliceThickness) follows the volume; values are stored as 16-bit integers with a
rescale chosen so CT keeps HU exactly to 1 HU.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scanqc.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def volume_to_datasets(volume: Volume, modality: str = "MR", header: Mapping[str, Any] | None = None,
                       series_uid: str | None = None, study_uid: str | None = None) -> list[Dataset]:
    """One pydicom Dataset per slice; ``header`` overrides/extends attributes on every slice."""
    header = dict(header or {})
    modality = str(header.get("Modality", volume.modality or modality))
    series_uid = series_uid or str(header.get("SeriesInstanceUID") or generate_uid())
    study_uid = study_uid or str(header.get("StudyInstanceUID") or generate_uid())
    frame_uid = str(header.get("FrameOfReferenceUID") or generate_uid())
    arr = volume.array
    if modality == "CT":
        # 1 HU steps; intercept low enough for air below -1024 (noise, padding at -2048)
        slope, intercept = 1.0, float(min(-1024.0, np.floor(arr.min())))
    else:
        lo, hi = float(arr.min()), float(arr.max())
        intercept = min(lo, 0.0)
        slope = max((hi - intercept) / 30000.0, 1e-6)
    stored = np.clip(np.round((arr - intercept) / slope), 0, 65535).astype(np.uint16)
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    d = volume.direction
    row_cos = d[:, 2]
    col_cos = d[:, 1]
    today = _dt.date.today().strftime("%Y%m%d")
    out = []
    for k in range(arr.shape[0]):
        pos = np.asarray(volume.origin) + d[:, 0] * volume.spacing[0] * k
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.Modality = modality
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = today
        ds.PatientName = "ANON"
        ds.PatientID = "SUBJ-0001"
        ds.PatientIdentityRemoved = "YES"
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [round(float(v), 4) for v in pos]
        ds.PixelSpacing = [round(volume.spacing[1], 6), round(volume.spacing[2], 6)]
        ds.SliceThickness = round(volume.spacing[0], 6)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:.10g}"[:16]
        ds.RescaleIntercept = f"{intercept:.10g}"[:16]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        for key, value in header.items():
            setattr(ds, key, value)
        ds.PixelData = stored[k].tobytes()
        out.append(ds)
    return out


def write_dicom_series(volume: Volume, folder: Path | str, modality: str = "MR",
                       header: Mapping[str, Any] | None = None, series_uid: str | None = None,
                       study_uid: str | None = None, prefix: str = "IM") -> list[Path]:
    """Write the series into ``folder`` (created); returns the file paths in slice order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(volume_to_datasets(volume, modality, header, series_uid, study_uid)):
        p = folder / f"{prefix}{i:04d}.dcm"
        pydicom.dcmwrite(p, ds, enforce_file_format=True)
        paths.append(p)
    return paths

"""Minimal DICOM writer of its own (pydicom only), so the reader path is exercised independently of
scanqc's writers. One classic single-frame instance per slice, explicit VR little endian."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.10.1419."  # a private-looking root; uids are derived from the case seed


@dataclass
class Geometry:
    """Acquisition grid in LPS millimetres. Voxel (k, j, i) lies at
    ``origin + k*dz*normal + j*dy*col_dir + i*dx*row_dir`` (k = slice, j = row, i = column)."""

    row_dir: np.ndarray  # unit vector along a row (column index i grows); first 3 of ImageOrientationPatient
    col_dir: np.ndarray  # unit vector down a column (row index j grows); last 3 of ImageOrientationPatient
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    shape: tuple[int, int, int]  # (nz, ny, nx)
    origin: np.ndarray  # LPS of voxel (0, 0, 0)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def index_to_lps(self) -> np.ndarray:
        """3x4 affine mapping (k, j, i, 1) to LPS."""
        m = np.zeros((3, 4))
        m[:, 0] = self.normal * self.spacing[0]
        m[:, 1] = self.col_dir * self.spacing[1]
        m[:, 2] = self.row_dir * self.spacing[2]
        m[:, 3] = self.origin
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"row_dir": [round(float(v), 5) for v in self.row_dir],
                "col_dir": [round(float(v), 5) for v in self.col_dir],
                "spacing_mm": [round(float(s), 4) for s in self.spacing], "shape": list(self.shape),
                "origin_lps": [round(float(v), 3) for v in self.origin]}


def _uid(rng_seed: int, *parts: int) -> str:
    tail = ".".join(str(int(p)) for p in (rng_seed, *parts))
    return (UID_ROOT + tail)[:64]


def write_series(volume: np.ndarray, geom: Geometry, folder: Path, modality: str, header: dict[str, Any],
                 uid_seed: int, ct_signed: bool = True) -> list[Path]:
    """Write ``volume`` [z, y, x] (CT in HU, MR in arbitrary units >= 0) as one DICOM series into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = volume.shape
    study_uid, series_uid, frame_uid = _uid(uid_seed, 1), _uid(uid_seed, 2), _uid(uid_seed, 3)
    if modality == "CT":
        if ct_signed:  # stored = HU, signed 16 bit (intercept 0)
            stored = np.clip(np.rint(volume), -1024, 32767).astype(np.int16)
            slope, intercept, signed = 1.0, 0.0, 1
        else:  # stored = HU + 1024, unsigned 12 bit in 16 (the other common convention)
            stored = np.clip(np.rint(volume + 1024.0), 0, 4095).astype(np.uint16)
            slope, intercept, signed = 1.0, -1024.0, 0
        sop_class = CT_IMAGE_STORAGE
    else:
        vmax = float(np.percentile(volume, 99.9)) or 1.0
        scale = 3000.0 / vmax  # MR: stored as unsigned 12-bit-ish integers, no rescale
        stored = np.clip(np.rint(volume * scale), 0, 4095).astype(np.uint16)
        slope, intercept, signed = 1.0, 0.0, 0
        sop_class = MR_IMAGE_STORAGE
    now = dt.datetime(2026, 3, 2, 10, 0, 0)
    normal = geom.normal
    paths = []
    for k in range(nz):
        meta = FileMetaDataset()
        sop_uid = _uid(uid_seed, 4, k + 1)
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID_ROOT + "0"
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientName = f"CROSSSIM^{uid_seed}"
        ds.PatientID = f"CS{uid_seed}"
        ds.PatientIdentityRemoved = "YES"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
        ds.Manufacturer = "crosssim"
        ds.SeriesNumber = int(header.get("SeriesNumber", 1))
        ds.InstanceNumber = k + 1
        pos = geom.origin + k * geom.spacing[0] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*geom.row_dir, *geom.col_dir)]
        ds.PixelSpacing = [f"{geom.spacing[1]:.5f}", f"{geom.spacing[2]:.5f}"]
        ds.SliceLocation = f"{float(np.dot(pos, normal)):.4f}"
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if (modality == "CT" and signed) else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = signed
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        if modality == "CT":
            ds.RescaleType = "HU"
        for key, value in header.items():
            if key == "SeriesNumber" or value is None:
                continue
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"IM{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths

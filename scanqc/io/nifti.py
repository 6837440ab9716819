"""NIfTI-1/2 reading and writing (nibabel), converted to and from the LPS :class:`Volume`.

NIfTI stores voxels as ``[i, j, k]`` with an index->RAS affine; scanqc keeps ``[z, y, x]`` with an
index->LPS affine. Reading transposes the array and flips the first two world axes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scanqc.errors import ErrorCode, ScanQCError, exc_summary
from scanqc.limits import DEFAULT_LIMITS, Limits
from scanqc.volume import Volume

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_nifti(path: Path, name: str | None = None, limits: Limits = DEFAULT_LIMITS) -> tuple[Volume, dict]:
    """Return the volume and a small header summary (no patient data exists in NIfTI headers)."""
    name = name or str(path)
    try:
        return _read_nifti(path, name, limits)
    except ScanQCError:
        raise
    except MemoryError:
        raise ScanQCError(ErrorCode.TOO_LARGE, f"{name}: voxel data does not fit in memory") from None
    except Exception as exc:  # nibabel raises many types on corrupt headers (fuzzing found several)
        raise ScanQCError(ErrorCode.UNREADABLE, f"{name}: NIfTI unreadable ({exc_summary(exc)})") from None


def _read_nifti(path: Path, name: str, limits: Limits) -> tuple[Volume, dict]:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(str(path))
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise ScanQCError(ErrorCode.UNREADABLE, f"{name}: NIfTI header unreadable ({exc_summary(exc)})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3:
        shape = shape + (1,) * (3 - len(shape))
    # Every axis counts, not only the first three: a 64^3 x 4096 file is 2 MiB gzipped and 2 GiB in memory.
    # Python ints, so a product of huge header dimensions cannot overflow.
    total = 1
    for s in shape:
        total *= s
    if any(s > limits.max_dimension for s in shape) or total > limits.max_voxels:
        raise ScanQCError(ErrorCode.TOO_LARGE, f"{name}: dimensions {shape} ({total} voxels) exceed the limits "
                                               f"({limits.max_dimension} per axis, {limits.max_voxels} voxels)")
    notes = []
    try:
        if len(shape) > 3:
            # Only the first volume is checked: read just it (the proxy slices the file, no full load).
            data = np.asanyarray(img.dataobj[(slice(None),) * 3 + (0,) * (len(shape) - 3)])
            notes.append(f"{len(shape)}D NIfTI with {total // (shape[0] * shape[1] * shape[2])} volumes; "
                         "checked the first")
        else:
            data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, ValueError, MemoryError) as exc:
        raise ScanQCError(ErrorCode.TRUNCATED, f"{name}: voxel data unreadable ({exc_summary(exc)})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise ScanQCError(ErrorCode.UNSUPPORTED_IMAGE, f"{name}: voxel type {data.dtype} is not real scalar")
    arr = np.ascontiguousarray(np.transpose(data.astype(np.float32, copy=False), (2, 1, 0)))
    ras = np.asarray(img.affine, dtype=np.float64)
    lps = _RAS_TO_LPS @ ras
    # Columns of the (z, y, x) affine are NIfTI's k, j, i columns.
    aff = np.eye(4)
    aff[:3, :3] = lps[:3, [2, 1, 0]]
    aff[:3, 3] = lps[:3, 3]
    try:
        vol = Volume.from_affine(arr, aff)
    except ValueError as exc:
        raise ScanQCError(ErrorCode.UNREADABLE, f"{name}: bad NIfTI affine ({exc})") from None
    hdr = img.header
    summary = {
        "descrip": bytes(hdr.get("descrip", b"")).rstrip(b"\x00").decode("latin-1", "replace")
        if "descrip" in hdr else "",
        "notes": notes,
    }
    return vol, summary


def write_nifti(volume: Volume, path: Path | str) -> Path:
    """Write a volume as NIfTI (``.nii`` or ``.nii.gz``) with its geometry."""
    import nibabel as nib

    aff = volume.affine
    ijk = np.eye(4)
    ijk[:3, :3] = aff[:3, [2, 1, 0]]
    ijk[:3, 3] = aff[:3, 3]
    ras = _RAS_TO_LPS @ ijk
    img = nib.Nifti1Image(np.transpose(volume.array, (2, 1, 0)), ras)
    img.header.set_xyzt_units("mm")
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path

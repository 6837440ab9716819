"""Real base images available offline.

- nilearn ships the MNI ICBM152 2009a symmetric template (T1, GM, WM; 1 mm, 197x233x189, skull
  stripped) inside its wheel (Fonov et al., NeuroImage 2011). We read those files with nibabel
  straight from the installed package directory: no network, and no ``import nilearn`` (about 3 s
  and scikit-learn on the import path) just to locate three files.
- nibabel ships small test volumes (``anatomical.nii``, ``example4d.nii.gz``).

Volumes come back canonical (:data:`scanqc.datasets.geometry.CANONICAL_DIRECTION`: slice index
goes inferior -> superior) and are cached per process; callers get copies.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from scanqc.datasets.geometry import block_mean, canonicalize

from scanqc.errors import ErrorCode, ScanQCError
from scanqc.volume import Volume

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# nilearn's load_mni152_brain_mask thresholds the [0, 1]-scaled template at 0.2; so do we.
BRAIN_MASK_THRESHOLD = 0.2


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ScanQCError(ErrorCode.USAGE, f"package {name!r} is not installed; install scanqc[data]")
    return Path(next(iter(spec.submodule_search_locations)))


def mni_file(kind: str) -> Path:
    """Path of a bundled MNI152 file: ``kind`` is 't1', 'gm' or 'wm'."""
    if kind not in MNI_FILES:
        raise ScanQCError(ErrorCode.USAGE, f"unknown MNI152 image {kind!r}; expected one of {sorted(MNI_FILES)}")
    path = _package_dir("nilearn") / "datasets" / "data" / MNI_FILES[kind]
    if not path.is_file():
        raise ScanQCError(ErrorCode.NOT_FOUND, f"MNI152 file missing from the nilearn package: {path}")
    return path


def _factor(resolution_mm: float) -> int:
    f = round(float(resolution_mm))
    if f < 1 or abs(f - resolution_mm) > 1e-6:
        raise ScanQCError(ErrorCode.USAGE,
                          f"resolution_mm must be a whole number of mm (1, 2, 3...), got {resolution_mm!r}")
    return f


@lru_cache(maxsize=8)
def _mni(kind: str, resolution_mm: float) -> Volume:
    from scanqc.io.nifti import read_nifti

    vol, _ = read_nifti(mni_file(kind))
    vol = canonicalize(vol)
    arr = vol.array / max(float(vol.array.max()), 1e-6)  # nilearn rescales to [0, 1] too
    f = _factor(resolution_mm)
    if f > 1:
        arr = block_mean(arr, f)
        # The new voxel centre sits half a (new) voxel minus half an old voxel from the old origin.
        shift = vol.direction @ (np.asarray(vol.spacing) * (f - 1) / 2.0)
        vol = Volume(arr, tuple(np.asarray(vol.spacing) * f), tuple(np.asarray(vol.origin) + shift),
                     vol.direction, "MR")
    else:
        vol = vol.with_array(arr)
    vol.modality = "MR"
    vol.array.setflags(write=False)
    return vol


def _copy(vol: Volume) -> Volume:
    return Volume(vol.array.copy(), vol.spacing, vol.origin, vol.direction.copy(), vol.modality)


def mni_t1(resolution_mm: float = 2.0) -> Volume:
    """MNI152 T1 template in [0, 1], block-averaged to ``resolution_mm`` (default 2 mm: 98x116x94)."""
    return _copy(_mni("t1", resolution_mm))


def mni_tissue(kind: str, resolution_mm: float = 2.0) -> Volume:
    """GM ('gm') or WM ('wm') probability map on the same grid as :func:`mni_t1`."""
    return _copy(_mni(kind, resolution_mm))


def mni_brain_mask(resolution_mm: float = 2.0) -> np.ndarray:
    """Whole-brain mask on the :func:`mni_t1` grid (template > 0.2 at 1 mm, majority vote)."""
    one = _mni("t1", 1.0).array > BRAIN_MASK_THRESHOLD
    return block_mean(one.astype(np.float32), _factor(resolution_mm)) >= 0.5


@lru_cache(maxsize=4)
def _required_brain(resolution_mm: float) -> np.ndarray:
    mask = mni_brain_mask(resolution_mm)
    vol = _mni("t1", resolution_mm)
    # The template ends mid-medulla, so "whole brain" stops at the bottom of the cerebellum (the
    # guideline's vertex-to-cerebellum region): the lowest slice where the mask is wider than 50 mm
    # left to right; below it only the brainstem remains.
    width = np.array([np.ptp(np.where(m.any(0))[0]) if m.any() else 0 for m in mask]) * vol.spacing[2]
    bottom = int(np.argmax(width > 50.0))
    mask[:bottom] = False
    mask.setflags(write=False)
    return mask


def required_brain_mask(resolution_mm: float = 2.0) -> np.ndarray:
    """Anatomy that whole-brain coverage must include: brain mask from the vertex to the bottom of
    the cerebellum (brainstem below the cerebellum excluded; every brain scan cuts it somewhere)."""
    return _required_brain(resolution_mm).copy()


def nibabel_example(name: str = "anatomical.nii") -> Volume:
    """A small real MR volume from nibabel's test data (e.g. 'anatomical.nii', 'example4d.nii.gz')."""
    from scanqc.io.nifti import read_nifti

    path = _package_dir("nibabel") / "tests" / "data" / name
    if not path.is_file():
        raise ScanQCError(ErrorCode.NOT_FOUND, f"nibabel test file {name!r} not found at {path}")
    vol, _ = read_nifti(path)
    vol.modality = "MR"
    return canonicalize(vol)

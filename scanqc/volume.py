"""The canonical volume every check sees.

A :class:`Volume` is a 3D float32 array indexed ``[slice, row, column]`` (``z, y, x``) with its
physical geometry in the DICOM patient coordinate system (LPS, millimetres). DICOM series,
multi-frame objects and NIfTI files are all read into this one type, so checks and models never
care where the pixels came from.

Geometry convention (same as ITK/SimpleITK, axes listed in array order)::

    position_LPS(k, j, i) = origin + direction @ ([k, j, i] * spacing)

``direction[:, 0]`` is the slice normal (z), ``direction[:, 1]`` the column direction down the rows
(y) and ``direction[:, 2]`` the row direction along the columns (x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    array: np.ndarray  # float32, shape (z, y, x); CT in HU, MR in scanner units
    spacing: tuple[float, float, float]  # mm along (z, y, x)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LPS mm of voxel [0, 0, 0]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3)[:, ::-1].copy())
    modality: str | None = None  # "CT", "MR", ... when known

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (z, y, x), got shape {self.array.shape}")
        if self.array.dtype != np.float32:
            self.array = self.array.astype(np.float32, copy=False)
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive finite numbers, got {self.spacing}")
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping array indices ``(k, j, i, 1)`` to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]

    @property
    def slice_axis_label(self) -> str:
        """Anatomical name of the slice normal: 'axial', 'coronal' or 'sagittal'."""
        n = np.abs(self.direction[:, 0])
        return ("sagittal", "coronal", "axial")[int(np.argmax(n))]

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry, new voxels (must have the same shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from volume shape {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), self.modality)

    @classmethod
    def from_affine(cls, array: np.ndarray, affine: np.ndarray, modality: str | None = None) -> Volume:
        """Build from an index->LPS affine whose columns follow array axes (z, y, x)."""
        affine = np.asarray(affine, dtype=np.float64)
        cols = affine[:3, :3]
        spacing = np.linalg.norm(cols, axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"affine has a zero-length axis: {affine.tolist()}")
        return cls(array, tuple(spacing), tuple(affine[:3, 3]), cols / spacing[None, :], modality)

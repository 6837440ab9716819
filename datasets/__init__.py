"""scanqc.datasets: training data for scanqc's models.

Physically grounded simulation on real base images (MNI152 brain from nilearn's wheel), a
procedural abdominal CT phantom, coverage crops, and the manifest format that generated and real
labeled scans share (docs/manifest.md, docs/data.md).

Heavy modules load lazily; the CT phantom and the samples need only numpy and scipy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def generate(task: str, n: int, out: Path | str, seed: int = 0, workers: int = 1, **options: Any) -> Path:
    """Write ``n`` cases for ``task`` ('motion', 'contrast_phase', 'coverage') plus
    ``out/manifest.csv``; returns the manifest path. Options: ``fmt`` ('nifti' | 'dicom'),
    ``variant`` ('train' | 'test'), ``val_fraction``, ``progress``, ``min_artefact_to_noise`` (motion). See
    :func:`scanqc.datasets.generate.generate`."""
    from scanqc.datasets.generate import generate as _generate

    return _generate(task, n, out, seed=seed, workers=workers, **options)


__all__ = ["generate"]

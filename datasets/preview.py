"""Mosaic of manifest cases with their labels, for a person to look at (matplotlib, Agg).

Each case gets two panels: the middle slice across the body axis and a reformat along it (where
coverage cuts and motion ghosts show), titled with case id and labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scanqc.datasets.manifest import ManifestRow, read_manifest


def _caption(r: ManifestRow) -> str:
    bits = [r.label]
    if r.severity is not None and r.task == "motion":
        bits.append(f"s={r.severity:.2f}")
    if r.enhancement:
        bits.append(r.enhancement)
    if r.task == "coverage":
        bits.append(f"missing={';'.join(r.missing or []) or '-'}")
    return f"{r.case_id}\n{' '.join(bits)} [{r.split}]"


def _views(row: ManifestRow, base: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float]:
    from scanqc.datasets.geometry import canonicalize

    from scanqc.series import load_series

    series, _ = load_series(row.resolve(base), modality_hint=row.modality)
    vol = canonicalize(series[0].volume)  # type: ignore[arg-type]
    a = vol.array
    axial = a[a.shape[0] // 2]
    coronal = a[::-1, a.shape[1] // 2, :]  # superior at the top
    if row.modality == "CT":
        window = (-160.0, 240.0)
    else:
        window = (float(np.percentile(a, 1)), float(np.percentile(a, 99.5)))
    return axial, coronal, window, vol.spacing[0] / vol.spacing[2]


def preview(manifest: Path | str, out: Path | str, n: int = 16, cols: int = 4) -> Path:
    """Draw up to ``n`` cases (first rows of each label, interleaved) into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = Path(manifest)
    rows = read_manifest(manifest)
    base = manifest.parent if manifest.is_file() else manifest
    by_label: dict[str, list[ManifestRow]] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    picked: list[ManifestRow] = []
    while len(picked) < min(n, len(rows)):
        for lst in by_label.values():
            if lst and len(picked) < n:
                picked.append(lst.pop(0))
    cols = max(1, min(cols, len(picked)))
    nrows = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, 2 * cols, figsize=(4.2 * cols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, r in enumerate(picked):
        ax1, ax2 = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        try:
            axial, coronal, (lo, hi), aspect = _views(r, base)
        except Exception as exc:  # a broken case must not hide the others
            ax1.set_title(f"{r.case_id}\nunreadable: {exc}"[:60], fontsize=7)
            continue
        ax1.imshow(axial, cmap="gray", vmin=lo, vmax=hi)
        ax2.imshow(coronal, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
        ax1.set_title(_caption(r), fontsize=7, loc="left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
